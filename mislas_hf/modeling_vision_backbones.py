"""Any transformers vision model as the backbone of a `MislasConfig.backbone_config` (ViT, DINOv2, ConvNeXt, Swin,
EfficientNet, RegNet, ResNet, the vision tower of CLIP or SigLIP; timm architectures through `TimmWrapperModel`): the
`backbone_config` a checkpoint gives, the model built from it, the width of its pooled features, the pooling its own
image-classification head does (`BACKBONE_POOLING`), and the loading of its pretrained weights. `MislasModel`
(`modeling_mislas.py`) holds the model as `backbone`; shipped with saved models, so only relative imports of this
package."""

import copy

import torch
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .configuration_mislas import TIMM_MODEL_TYPE, backbone_pooling, check_timm_available


LABEL_KEYS = ("id2label", "label2id", "num_labels", "num_classes", "label_names", "architectures", "_name_or_path")
"""What a checkpoint's config holds of its own classifier and file, left out of the `backbone_config` it gives."""


def vision_backbone_config(checkpoint_config: PreTrainedConfig) -> PreTrainedConfig | None:
    """The `backbone_config` a transformers checkpoint's config gives: the config itself when `AutoModel` builds an
    image model from it (ViT, DINOv2, ConvNeXt, Swin, EfficientNet, `TimmWrapperConfig`, ...), else its
    `vision_config` when that does (the vision tower of CLIP, SigLIP, ...); its labels and architectures left out
    (`LABEL_KEYS`: the MiSLAS head replaces the checkpoint's classifier). None when neither is a vision model."""
    for candidate in (checkpoint_config, getattr(checkpoint_config, "vision_config", None)):
        if isinstance(candidate, PreTrainedConfig) and type(candidate) in MODEL_MAPPING:
            if MODEL_MAPPING[type(candidate)].main_input_name == "pixel_values":
                kept = {key: value for key, value in candidate.to_dict().items() if key not in LABEL_KEYS}
                return type(candidate).from_dict(kept, num_labels=2)  # the library's default, no labels of its own
    return None


def backbone_model_kwargs(model_type: str) -> dict:
    """What the model class of a `backbone_config` of `model_type` is built with beyond its config: the `cls_token`
    models without their unused pooling layer, as `ViTForImageClassification` builds its `ViTModel`."""
    return {"add_pooling_layer": False} if backbone_pooling(model_type) == "cls_token" else {}


def build_vision_backbone(backbone_config: PreTrainedConfig) -> PreTrainedModel:
    """The transformers model of `backbone_config` with random weights (`AutoModel.from_config`); a timm
    architecture needs `timm` (`ImportError` saying so)."""
    if backbone_config.model_type == TIMM_MODEL_TYPE:
        check_timm_available(backbone_config.architecture)
    return AutoModel.from_config(backbone_config, **backbone_model_kwargs(backbone_config.model_type))


def pooled_width(backbone: PreTrainedModel) -> int:
    """The width M of the pooled features of a `backbone_config` model, as its own image-classification head is
    sized: timm's `head_hidden_size` (else `num_features`), the Swin family's `num_features`, EfficientNet's
    `hidden_dim`, else the last of `hidden_sizes` (convolutional nets) or `hidden_size` (transformers), twice that
    for the CLS + mean-patch pooling of DINOv2."""
    config = backbone.config
    if config.model_type == TIMM_MODEL_TYPE:
        return getattr(backbone.timm_model, "head_hidden_size", None) or backbone.timm_model.num_features
    if hasattr(backbone, "num_features"):
        return backbone.num_features
    if config.model_type == "efficientnet":
        return config.hidden_dim
    width = config.hidden_sizes[-1] if getattr(config, "hidden_sizes", None) else getattr(config, "hidden_size", None)
    if width is None:
        raise ValueError(
            f"the width of the pooled features of a {config.model_type} backbone is unknown here (its config has "
            "neither hidden_sizes nor hidden_size): use one of ViT, DeiT, DINOv2, ConvNeXt, EfficientNet, RegNet, Swin, "
            "ResNet, a CLIP or SigLIP vision tower, or a timm architecture"
        )
    return 2 * width if backbone_pooling(config.model_type) == "cls_and_mean_patch_tokens" else width


def pool_features(outputs, backbone_config: PreTrainedConfig) -> torch.Tensor:
    """The features x of Eq. (4) from a `backbone_config` model's `outputs`, as its own image-classification head
    takes them (`BACKBONE_POOLING`): the CLS token of the last (layer-normed) hidden state; the CLS token
    concatenated with the mean of the patch tokens (after the register tokens of DINOv2 with registers); or the
    pooled output, flattened (`[B, C, 1, 1]` for ResNet and RegNet)."""
    pooling = backbone_pooling(backbone_config.model_type)
    tokens = outputs.last_hidden_state
    if pooling == "cls_token":
        return tokens[:, 0]
    if pooling == "cls_and_mean_patch_tokens":
        first_patch = 1 + getattr(backbone_config, "num_register_tokens", 0)
        return torch.cat([tokens[:, 0], tokens[:, first_patch:].mean(dim=1)], dim=1)
    if outputs.pooler_output is None:
        raise ValueError(
            f"the {backbone_config.model_type} backbone returned no pooled output (pooler_output is None) for the "
            f"features of Eq. (4): give it a pooling layer in its config, or add its pooling to BACKBONE_POOLING"
        )
    return outputs.pooler_output.flatten(1)


def load_pretrained_backbone(model: PreTrainedModel, path: str) -> None:
    """Load the weights of the checkpoint `path` (folder or Hub id; an image classifier, whose classifier is left
    out, or a vision encoder, e.g. the vision tower of a CLIP checkpoint) into `model.backbone`, `model` a
    `MislasModel`: the model of `model.config.backbone_config` (`vision_backbone_config` of the checkpoint's config),
    through `AutoModel.from_pretrained`. `ValueError` naming the first backbone tensor the checkpoint lacks: no
    backbone tensor keeps its random initialisation."""
    backbone_config = copy.deepcopy(model.config.backbone_config)
    pretrained, loading_info = AutoModel.from_pretrained(
        path, config=backbone_config, output_loading_info=True, **backbone_model_kwargs(backbone_config.model_type)
    )
    if loading_info["missing_keys"]:
        missing = sorted(loading_info["missing_keys"])
        raise ValueError(
            f"{path} has no weights for {len(missing)} tensors of its {backbone_config.model_type} backbone, e.g. "
            f"{missing[0]}: pass a checkpoint of the whole vision model"
        )
    model.backbone.load_state_dict(pretrained.state_dict())


__all__ = [
    "LABEL_KEYS",
    "backbone_model_kwargs",
    "build_vision_backbone",
    "load_pretrained_backbone",
    "pool_features",
    "pooled_width",
    "vision_backbone_config",
]
