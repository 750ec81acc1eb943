"""PyTorch MiSLAS model: a backbone (the paper's ResNets, `modeling_resnet_backbones.py`, or any transformers vision
model, `modeling_vision_backbones.py`), shifted batch norm and the scaled-shift classifier of Eq. (4), temperature and
logit bias. Shipped with saved models for `trust_remote_code` (with the modules it imports relatively, which
transformers copies beside it), so only relative imports of this package."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention
from transformers.models.resnet.modeling_resnet import ResNetEmbeddings

from .configuration_mislas import TRAINABLE_HEAD_PARAMETERS, MislasConfig
from .modeling_resnet_backbones import (
    MislasCifarEmbeddings,
    MislasCifarEncoder,
    MislasExtraBlock,
    MislasImageNetEncoder,
    resnet_config_for,
)
from .modeling_vision_backbones import build_vision_backbone, pool_features, pooled_width


class MislasScaledShiftClassifier(nn.Module):
    r"""
    The classifier of Eq. (4), `z = diag(s) ((r W + ΔW)^T x + b)`, with the bias inside the scaling as in the
    reference implementation (`logits = s * fc(x)`).

    `weight` (W, `[K, M]`) and `bias` (b) are the stage-1 linear classifier; `scale` (s, init 1) and `delta_weight`
    (ΔW, init 0) are learned in stage 2; r is the retention factor. The same head expresses a plain linear layer
    (stage 1), cRT (r = 0, s = 1 fixed, ΔW learned), LWS (r = 1, ΔW = 0 fixed, s learned) and MiSLAS (r = 1, s and
    ΔW learned); which parameters train is set by [`MislasForImageClassification.prepare_stage2`].
    """

    def __init__(self, in_features: int, num_labels: int, retention_factor: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, in_features))
        self.bias = nn.Parameter(torch.empty(num_labels))
        self.scale = nn.Parameter(torch.ones(num_labels))
        self.delta_weight = nn.Parameter(torch.zeros(num_labels, in_features))
        self.retention_factor = retention_factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits in float32 under bf16/fp16 autocast: the losses and the calibration metrics (ECE, NLL) read them,
        and the head is one `[K, M]` product, so full precision costs nothing measurable. Without autocast the head
        computes in its weights' own dtype, so a model cast as a whole (`double()`, `half()`, `to(torch.bfloat16)`,
        `from_pretrained(dtype=...)`) runs in that dtype end to end."""
        device_type = features.device.type
        dtype = torch.float32 if torch.is_autocast_enabled(device_type) else self.weight.dtype
        with torch.autocast(device_type=device_type, enabled=False):
            weight = self.retention_factor * self.weight.to(dtype) + self.delta_weight.to(dtype)
            return self.scale.to(dtype) * F.linear(features.to(dtype), weight, self.bias.to(dtype))


# Parameters of the head that train in each mode (Sec. 3.2, Eq. 4).
class MislasPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for MiSLAS models."""

    config: MislasConfig
    base_model_prefix = "mislas"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["MislasCifarBasicBlock", "ResNetBottleNeckLayer", "ResNetBasicLayer", "MislasExtraBlock"]

    def _init_weights(self, module):
        """Kaiming-normal convolutions (fan-in for the CIFAR net as in LDAM-DRW, fan-out for the ImageNet family as
        in torchvision), BN at identity, and the scaled-shift head at s = 1, ΔW = 0. The Places-LT extra block's
        convolutions (`pytorch_default_init`) get PyTorch's default `Conv2d` initialisation, kaiming-uniform with
        a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in the reference."""
        cifar = self.config.backbone_spec is not None and self.config.backbone_spec.stem == "cifar"
        if isinstance(module, nn.Conv2d):
            if getattr(module, "pytorch_default_init", False):
                init.kaiming_uniform_(module.weight, a=5**0.5)
            elif cifar:
                init.kaiming_normal_(module.weight)
            else:
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, MislasScaledShiftClassifier):
            fan_in = module.weight.shape[1]
            if cifar:
                init.kaiming_normal_(module.weight)
            else:
                init.kaiming_uniform_(module.weight, a=5**0.5)
            init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
            init.ones_(module.scale)
            init.zeros_(module.delta_weight)


class MislasModel(MislasPreTrainedModel):
    """
    The MiSLAS feature extractor, whose `pooler_output` is the x of Eq. (4) (`pooled_width` wide). A built-in
    `config.backbone`: a ResNet (plus, for Places-LT, one extra bottleneck block) and global average pooling, in the
    layout of transformers' `ResNetModel`. A `config.backbone_config`: that transformers model as `backbone`, pooled
    as its own image-classification head pools (`pool_features`). Returns `BaseModelOutputWithPoolingAndNoAttention`.

    It also owns the batch-norm behaviour of stage 2 (Sec. 3.3): after [`freeze_features`], the weights stay fixed,
    every other train-mode behaviour (dropout, stochastic depth) is off, and BN either keeps its stage-1 statistics
    (eval mode) or, with `shift_bn`, the `_BatchNorm` layers that stage 1 trained (`shiftable_batch_norms`) keep
    updating their running mean and variance on the class-balanced stream while their affine parameters stay fixed.
    The mode survives the `model.train()` that `Trainer` calls at every step.
    """

    def __init__(self, config: MislasConfig):
        super().__init__(config)
        self.extra_block = None
        if config.backbone_config is not None:
            self.backbone = build_vision_backbone(config.backbone_config)
            self.pooled_width = pooled_width(self.backbone)
        else:
            if config.backbone_spec.stem == "cifar":
                self.embedder = MislasCifarEmbeddings(config)
                self.encoder = MislasCifarEncoder(config)
            else:
                resnet_config = resnet_config_for(config)
                self.embedder = ResNetEmbeddings(resnet_config)
                self.encoder = MislasImageNetEncoder(resnet_config)
            self.pooled_width = config.hidden_sizes[-1]
            self.extra_block = MislasExtraBlock(self.pooled_width) if config.extra_block else None
            self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.features_frozen = False
        self.post_init()
        if config.freeze_backbone:
            self.pretrained_backbone().requires_grad_(False)

    def pretrained_backbone(self) -> nn.Module:
        """The pretrained part, kept frozen in both stages when `config.freeze_backbone` (Places-LT, a linear probe),
        and trained at `--backbone_learning_rate` otherwise: a `backbone_config`'s model, or a built-in ResNet's stem
        and stages (not the extra block)."""
        if self.config.backbone_config is not None:
            return self.backbone
        return nn.ModuleList([self.embedder, self.encoder])

    def shiftable_batch_norms(self) -> list[_BatchNorm]:
        """The batch-norm layers whose running statistics shifted BN updates in stage 2 (Sec. 3.3): every
        `_BatchNorm` of the feature extractor that stage 1 trained, i.e. outside a frozen `pretrained_backbone`."""
        frozen = set(self.pretrained_backbone().modules()) if self.config.freeze_backbone else set()
        return [module for module in self.modules() if isinstance(module, _BatchNorm) and module not in frozen]

    def resolve_shift_bn(self, shift_bn: bool | None) -> bool:
        """Whether stage 2 shifts BN: `shift_bn` as given, by default (None) wherever there is batch norm to shift
        (`shiftable_batch_norms`). `ValueError` naming the backbone and why when `shift_bn` is asked for and there is
        none: a backbone without batch norm (ViT, DINOv2, CLIP, Swin, ConvNeXt normalise with LayerNorm), or a frozen
        one without an extra block, which keeps its pretrained statistics."""
        shiftable = bool(self.shiftable_batch_norms())
        if shift_bn is None:
            return shiftable
        if shift_bn and not shiftable:
            if any(isinstance(module, _BatchNorm) for module in self.modules()):
                why = "its batch norm belongs to the frozen pretrained backbone (freeze_backbone), which keeps its statistics"
            else:
                why = "it has no batch-norm layer, so there are no running statistics to shift"
            raise ValueError(
                f"shift_bn=True updates the batch-norm statistics of the feature extractor in stage 2 (Sec. 3.3), "
                f"and the {self.config.backbone_name} backbone has none to update: {why}. Leave --shift_bn unset "
                "(off for this backbone) or set it false."
            )
        return shift_bn

    def freeze_features(self, shift_bn: bool | None = None) -> None:
        """Stage 2: freeze every weight of the feature extractor; with `shift_bn` (`resolve_shift_bn`), the BN layers
        that stage 1 trained keep updating their running statistics (Eqs. 5-6), otherwise all of it is in eval
        mode."""
        self.config.shift_bn = self.resolve_shift_bn(shift_bn)
        self.requires_grad_(False)
        self.features_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        """`nn.Module.train`, keeping frozen parts in the mode stage 2 and `freeze_backbone` require: frozen features
        in eval mode but for the shifting BN layers, a frozen pretrained backbone in eval mode."""
        super().train(mode)
        if mode and self.features_frozen:
            super().train(False)
            if self.config.shift_bn:
                for module in self.shiftable_batch_norms():
                    module.train()
        elif mode and self.config.freeze_backbone:
            self.pretrained_backbone().eval()
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.config.backbone_config is not None:
            outputs = self.backbone(pixel_values, **({"output_hidden_states": True} if output_hidden_states else {}))
            hidden_state, hidden_states = outputs.last_hidden_state, outputs.hidden_states
            pooled_output = pool_features(outputs, self.config.backbone_config)
        else:
            hidden_state, hidden_states = self.encoder(self.embedder(pixel_values), output_hidden_states)
            if self.extra_block is not None:
                hidden_state = self.extra_block(hidden_state)
                if output_hidden_states:
                    hidden_states = hidden_states + (hidden_state,)
            pooled_output = self.pooler(hidden_state).flatten(1)
        if not return_dict:
            return tuple(value for value in (hidden_state, pooled_output, hidden_states) if value is not None)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_state, pooler_output=pooled_output, hidden_states=hidden_states
        )


class MislasForImageClassification(MislasPreTrainedModel):
    """
    MiSLAS image classifier: [`MislasModel`] features and the scaled-shift head of Eq. (4), whose output is divided
    by `config.temperature` (post-hoc temperature scaling; 1.0 by default, a no-op) and shifted by
    `config.logit_bias` (None by default): `logits = z / T + b`, the temperature first, then the bias, the order of
    Bayes' rule for a prior correction `b = log pi_target - log pi_source` (see `mislas_hf.calibration.label_shift`).
    With `labels`, the loss is plain cross-entropy of the returned logits; the two-stage losses (mixup, label-aware
    smoothing, logit-adjusted cross-entropy) live in the trainer.

    Stage 1 trains backbone, W and b. [`prepare_stage2`] switches to classifier learning.
    """

    def __init__(self, config: MislasConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mislas = MislasModel(config)
        self.classifier = MislasScaledShiftClassifier(
            self.mislas.pooled_width, config.num_labels, retention_factor=config.retention_factor
        )
        self.post_init()
        self.set_head_mode(config.head_mode)

    def set_head_mode(self, head_mode: str) -> None:
        """Make the head parameters of `head_mode` trainable (see `TRAINABLE_HEAD_PARAMETERS`) and the others
        fixed; cRT uses r = 0, every other mode r = 1."""
        if head_mode not in TRAINABLE_HEAD_PARAMETERS:
            raise ValueError(f"head_mode={head_mode!r} is not one of {', '.join(TRAINABLE_HEAD_PARAMETERS)}.")
        trainable = TRAINABLE_HEAD_PARAMETERS[head_mode]
        for name, parameter in self.classifier.named_parameters():
            parameter.requires_grad_(name in trainable)
        self.config.head_mode = head_mode
        self.config.retention_factor = 0.0 if head_mode == "crt" else 1.0
        self.classifier.retention_factor = self.config.retention_factor

    def prepare_stage2(self, head_mode: str = "mislas", shift_bn: bool | None = None) -> None:
        """
        Switch to stage 2 (classifier learning on the class-balanced stream): freeze the feature extractor, set the
        BN behaviour of Sec. 3.3 (`shift_bn`: update running statistics, affine parameters fixed; None: wherever
        there is batch norm to shift, see [`MislasModel.resolve_shift_bn`]), and make the head parameters of
        `head_mode` trainable (`"mislas"`, `"crt"`, `"lws"`, or `"linear"` to retrain W and b).
        """
        self.mislas.freeze_features(shift_bn)
        self.set_head_mode(head_mode)
        self.config.stage = 2
        self.config.temperature, self.config.calibration = 1.0, None  # a temperature fit to the old head is void
        self.config.logit_bias = self.config.source_prior = None  # so are a bias and the stage-1 prior

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pooled_features: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`; when given, the output carries the cross-entropy loss.
        pooled_features (`torch.FloatTensor` of shape `(batch_size, pooled_width)`, *optional*):
            The feature extractor's pooled output, given instead of `pixel_values`: only the head runs (a
            feature-cached stage 2, `mislas_hf.feature_cache`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (pixel_values is None) == (pooled_features is None):
            raise ValueError("pass either pixel_values (images) or pooled_features (the backbone's pooled output)")
        if pooled_features is None:
            outputs = self.mislas(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        else:
            outputs = BaseModelOutputWithPoolingAndNoAttention(pooler_output=pooled_features)
        logits = self.classifier(outputs.pooler_output)
        if self.config.temperature != 1.0:  # post-hoc temperature scaling: z / T, or z_k / T_k class-wise
            logits = logits / torch.tensor(self.config.temperature, dtype=logits.dtype, device=logits.device)
        if self.config.logit_bias is not None:  # prior correction / logit adjustment / BCTS: z / T + b
            logits = logits + torch.tensor(self.config.logit_bias, dtype=logits.dtype, device=logits.device)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "MislasPreTrainedModel",
    "MislasModel",
    "MislasForImageClassification",
    "MislasScaledShiftClassifier",
]
