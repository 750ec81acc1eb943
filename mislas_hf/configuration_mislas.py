"""MiSLAS model configuration."""

import importlib.util
import math
from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

@dataclass(frozen=True)
class BackboneSpec:
    """The architecture of a backbone of `BACKBONES`, apart from how its images are preprocessed.

    `stem`: `"cifar"`, the CIFAR ResNet of He et al. (2016, Sec. 4.2) used by LDAM-DRW and MiSLAS (3x3 stem, option-A
    shortcuts, kaiming fan-in initialisation, the reference's checkpoint layout), or `"imagenet"`, a torchvision-layout
    ResNet (7x7 stem and max-pool, v1.5 bottleneck, fan-out initialisation, transformers' ResNet layers).
    `layer_type`, `depths`, `hidden_sizes`: as transformers' `ResNetConfig`. `pretrained_source`: the deeper network
    whose ImageNet weights it starts from (its blocks beyond `depths` are dropped, as the reference drops `layer4.2`
    of torchvision's ResNet-152 for Places-LT), None when it is its own source.
    """

    stem: str
    layer_type: str
    depths: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    pretrained_source: str | None = None


BACKBONES = {
    "resnet32": BackboneSpec("cifar", "basic", (5, 5, 5), (16, 32, 64)),
    "resnet10": BackboneSpec("imagenet", "basic", (1, 1, 1, 1), (64, 128, 256, 512)),
    "resnet18": BackboneSpec("imagenet", "basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": BackboneSpec("imagenet", "basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": BackboneSpec("imagenet", "bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    "resnet101": BackboneSpec("imagenet", "bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
    "resnet152": BackboneSpec("imagenet", "bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048)),
    # Places-LT: the reference's `resnet152_fe` (after OLTR, Liu et al. 2019), ResNet-152 without its last block
    # layer4.2, in whose place the reference trains a new bottleneck (`MislasConfig.extra_block`).
    "resnet152_places": BackboneSpec(
        "imagenet", "bottleneck", (3, 8, 36, 2), (256, 512, 1024, 2048), pretrained_source="resnet152"
    ),
}
"""The backbones a `MislasConfig` names, by name."""

IMAGENET_STEM_CHANNELS = 64
"""Output channels of the 7x7 stem convolution of every ImageNet-family backbone (`ResNetConfig.embedding_size`)."""


def backbone_of_resnet_config(resnet_config: dict) -> str | None:
    """The name in `BACKBONES` of a transformers ResNet checkpoint's architecture (`config.json` of `model_type:
    resnet`, e.g. microsoft/resnet-50), from its `layer_type`, `depths`, `hidden_sizes` and stem; None when no
    backbone here has the same layers (such a ResNet is a `backbone_config` like any other vision model)."""
    architecture = (
        resnet_config.get("layer_type", "bottleneck"),
        tuple(resnet_config.get("depths", ())),
        tuple(resnet_config.get("hidden_sizes", ())),
    )
    variant = {
        "embedding_size": IMAGENET_STEM_CHANNELS,
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
        "hidden_act": "relu",
        "num_channels": 3,
    }
    differences = {key: resnet_config[key] for key, value in variant.items() if resnet_config.get(key, value) != value}
    for name, spec in BACKBONES.items():
        if spec.stem == "imagenet" and (spec.layer_type, spec.depths, spec.hidden_sizes) == architecture and not differences:
            return name
    return None


POOLED_FEATURES = {
    "pooler_output": "the model's pooled output",
    "cls_token": "the CLS token after the last layer norm",
    "cls_and_mean_patch_tokens": "the CLS token concatenated with the mean patch token, after the last layer norm",
}
"""How the features x of Eq. (4) are taken from a `backbone_config` model's output, with the sentence a model card
gives for each."""
BACKBONE_POOLING = {
    "vit": "cls_token",
    "deit": "cls_token",
    "dinov2": "cls_and_mean_patch_tokens",
    "dinov2_with_registers": "cls_and_mean_patch_tokens",
}
"""The pooling of the model types whose own image-classification head does not read the pooled output
(`ViTForImageClassification`, `DeiTForImageClassification`: the CLS token; `Dinov2ForImageClassification`: CLS and
mean patch token); every other model type (ResNet, ConvNeXt, EfficientNet, RegNet, Swin, CLIP and SigLIP vision
towers, `TimmWrapperModel`) is pooled as its classifier is: by its `pooler_output`. The `cls_token` models are built
without their unused pooling layer (`add_pooling_layer=False`), as their classifiers build them."""
TIMM_MODEL_TYPE = "timm_wrapper"
"""`model_type` of transformers' `TimmWrapperConfig`: a timm architecture, built by the `timm` package."""


def backbone_pooling(model_type: str) -> str:
    """The key of `POOLED_FEATURES` for a `backbone_config` of `model_type` (see `BACKBONE_POOLING`)."""
    return BACKBONE_POOLING.get(model_type, "pooler_output")


def check_timm_available(architecture: str | None) -> None:
    """`ImportError` saying to install timm when a timm backbone (`TimmWrapperModel`) is asked for without it."""
    if importlib.util.find_spec("timm") is None:
        raise ImportError(
            f"this model's backbone is the timm architecture {architecture!r} (transformers' TimmWrapperModel), "
            "which needs the timm package: pip install timm (or pip install mislas_hf[timm])"
        )


TRAINABLE_HEAD_PARAMETERS = {
    "linear": ("weight", "bias"),
    "crt": ("delta_weight", "bias"),
    "lws": ("scale",),
    "mislas": ("scale", "delta_weight", "bias"),
}
"""The head modes of Eq. (4) and the classifier parameters each trains: `linear` (stage 1: W and b), `crt` (ΔW and
b, r = 0), `lws` (s), `mislas` (s, ΔW and b)."""
HEAD_MODES = tuple(TRAINABLE_HEAD_PARAMETERS)


class MislasConfig(PreTrainedConfig):
    r"""
    Configuration of a MiSLAS image classifier (Zhong et al., CVPR 2021): a backbone and the scaled-shift
    classifier of Eq. (4), `z = diag(s) ((r W + ΔW)^T x + b)`, sized from the backbone's pooled features x. The
    backbone is one of the paper's ResNets (`backbone`) or any transformers vision model (`backbone_config`), the way
    transformers' composite models (UperNet, DPT, Mask2Former) nest theirs.

    Args:
        backbone (`str`, *optional*):
            One of the paper's ResNets, built in: `resnet32` (CIFAR ResNet of He et al., 3x3 stem, option-A
            shortcuts) or `resnet10`, `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152` (torchvision-layout
            ResNets for ImageNet-LT, iNaturalist 2018 and transformers ResNet checkpoints such as
            microsoft/resnet-50), and `resnet152_places`, ResNet-152 without its last block `layer4.2` (layers [3, 8,
            36, 2]): the reference's Places-LT backbone, used with `extra_block`. Defaults to `resnet32` when
            `backbone_config` is unset; None when it is set.
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            The config of any transformers vision model (ViT, DeiT, DINOv2, ConvNeXt, EfficientNet, RegNet, Swin,
            ResNet, a CLIP or SigLIP vision tower, a timm architecture through `TimmWrapperConfig`), built with
            `AutoModel.from_config` and pooled as its own image-classification head pools (`BACKBONE_POOLING`).
            Exclusive with `backbone`.
        backbone_checkpoint (`str`, *optional*):
            The Hub id or folder the pretrained backbone's weights were loaded from (`--model_name_or_path` of stage
            1), for the model card. None for a backbone trained from scratch or converted from the reference.
        class_counts (`list[int]`, *optional*):
            Training images per class, in label order. Needed by label-aware smoothing (Eq. 3) and by the
            Many/Medium/Few metrics; saved with the model so evaluation of a published checkpoint uses them.
        class_group_boundaries (`list[int]`, *optional*):
            `[a, b]`: the reference's index split for Many = [0, a), Medium = [a, b), Few = [b, K) (used for
            CIFAR-LT). When unset, the count thresholds below apply.
        many_shot_threshold (`int`, defaults to 100):
            Without `class_group_boundaries`, Many-shot classes have more than this many training images
            (Appendix A of the paper).
        few_shot_threshold (`int`, defaults to 20):
            Without `class_group_boundaries`, Few-shot classes have fewer than this many training images; Medium
            is the rest.
        retention_factor (`float`, defaults to 1.0):
            r in Eq. (4). cRT is r = 0.
        head_mode (`str`, defaults to `"linear"`):
            Which parameters of the head train: `linear` (stage 1: W and b), `crt` (ΔW and b, r = 0), `lws` (s),
            `mislas` (s, ΔW and b). Recorded by [`MislasForImageClassification.prepare_stage2`].
        shift_bn (`bool`, defaults to `False`):
            Whether stage 2 updates the running statistics of the batch-norm layers of the frozen feature extractor
            (Sec. 3.3). Recorded by `prepare_stage2`.
        stage (`int`, defaults to 1):
            Training stage the weights come from (1: representation learning, 2: classifier learning).
        extra_block (`bool`, defaults to `False`):
            Adds one bottleneck block (2048 -> 512 -> 2048, stride 1) on the backbone's last feature map before
            pooling, initialised as PyTorch initialises a new `Conv2d` and `BatchNorm2d`: the block the reference
            trains for Places-LT in the place of ResNet-152's `layer4.2` (backbone `resnet152_places`).
        freeze_backbone (`bool`, defaults to `False`):
            Keeps the pretrained backbone frozen in both stages, so that only the extra block (if any) and the
            classifier train: the reference's Places-LT recipe, and a linear probe of any pretrained backbone.
        num_channels (`int`, defaults to 3):
            Number of input channels of a built-in `backbone` (a `backbone_config` has its own).
        temperature (`float` or `list[float]`, defaults to 1.0):
            Post-hoc temperature scaling (Guo et al., ICML 2017): the forward divides the head's output (Eq. 4) by
            it, so `from_pretrained`, AutoModel and `pipeline` give calibrated probabilities. A number is one T for
            all classes; a list of `num_labels` numbers is class-wise, `T_k` dividing the logit of class k. 1.0 is
            no scaling. Set by `recipes/calibrate.py`; every T must be positive.
        logit_bias (`list[float]`, *optional*):
            One number per class added after the temperature: the forward returns `z / T + logit_bias`. A prior
            correction `log pi_target - log pi_source` (Bayes' rule for a test set whose class prior differs from
            the one the logits were trained for), post-hoc logit adjustment `-tau log pi_train` (Menon et al., ICLR
            2021) or the biases of bias-corrected temperature scaling (Alexandari et al., ICML 2020); see
            `mislas_hf.calibration.label_shift`. None (the default, and every folder saved before it existed): no
            bias.
        source_prior (`list[float]`, *optional*):
            The class prior the logits were trained for (`softmax(z)` estimates `p(x|y) pi_source(y)`), in label
            order, normalised to sum 1: the training counts' prior for a stage-1 model trained with cross-entropy,
            uniform for one trained with the logit-adjusted loss at tau = 1 or on the class-aware stream of stage 2.
            Recorded by `MislasTrainer`; None for folders saved before it was recorded
            (`mislas_hf.calibration.model_source_prior` then infers it from `stage` and `class_counts`).
        calibration (`dict`, *optional*):
            How `temperature` was fit (method, held-out split and its size, NLL and ECE before and after), for the
            model card. None for an uncalibrated model.
        held_out_split (`dict`, *optional*):
            The per-class hold-out of the training set that `--validation_split_percentage` made: `percentage`,
            `seed`, the data options `dataset`, `imbalance_factor`, `split_seed`, and `class_counts` (held-out
            images per class). `recipes/calibrate.py` rebuilds exactly these images to fit the temperature on and
            refuses when they differ.
        training_data (`dict`, *optional*):
            The data options of the training run (`DataArguments` of `mislas_hf.scripts.arguments`, paths made
            absolute), less `max_train_samples` and `validation_split_percentage` (the training counts are
            `class_counts`, the hold-out is `held_out_split`), plus the `seed` that drew the `max_eval_samples` test
            subset: what rebuilds the classes, the test split and the hold-out. `recipes/evaluate_model.py` and
            `recipes/calibrate.py` take their data options from it unless given. None for folders saved before it
            was recorded and for converted checkpoints.
    """

    model_type = "mislas"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(AutoConfig, model_type="resnet", optional=True)}

    backbone: str | None = None
    backbone_config: dict | PreTrainedConfig | None = None
    backbone_checkpoint: str | None = None
    class_counts: list[int] | None = None
    class_group_boundaries: list[int] | None = None
    many_shot_threshold: int = 100
    few_shot_threshold: int = 20
    retention_factor: float = 1.0
    head_mode: str = "linear"
    shift_bn: bool = False
    stage: int = 1
    extra_block: bool = False
    freeze_backbone: bool = False
    num_channels: int = 3
    temperature: float | list[float] = 1.0
    logit_bias: list[float] | None = None
    source_prior: list[float] | None = None
    calibration: dict | None = None
    held_out_split: dict | None = None
    training_data: dict | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and self.backbone_config.get("model_type") == TIMM_MODEL_TYPE:
            check_timm_available(self.backbone_config.get("architecture"))  # before TimmWrapperConfig needs it
        super().__post_init__(**kwargs)
        if self.id2label is not None and (self.label2id is None or set(self.label2id) != set(self.id2label.values())):
            self.label2id = {name: index for index, name in self.id2label.items()}
        if self.backbone_config is not None and self.backbone is not None:
            raise ValueError(
                f"MislasConfig has both backbone={self.backbone!r} and a backbone_config of type "
                f"{self.backbone_config.model_type!r}: give one of them."
            )
        if self.backbone_config is None:
            self.backbone = self.backbone or "resnet32"
            if self.backbone not in BACKBONES:
                raise ValueError(
                    f"MislasConfig.backbone={self.backbone!r} is not supported: choose one of {', '.join(BACKBONES)}, "
                    "or give the config of a transformers vision model as backbone_config."
                )
        if self.head_mode not in HEAD_MODES:
            raise ValueError(f"MislasConfig.head_mode={self.head_mode!r} is not one of {', '.join(HEAD_MODES)}.")
        if self.extra_block and (self.backbone_spec is None or self.backbone_spec.stem != "imagenet"):
            raise ValueError(
                f"MislasConfig.extra_block is only defined for the ImageNet-family ResNets, not {self.backbone_name}."
            )
        if self.class_counts is not None:
            self.class_counts = [int(count) for count in self.class_counts]
            if len(self.class_counts) != self.num_labels:
                raise ValueError(
                    f"MislasConfig.class_counts has {len(self.class_counts)} entries but num_labels is "
                    f"{self.num_labels}: give one training-image count per class, in label order."
                )
            if any(count < 0 for count in self.class_counts):
                raise ValueError("MislasConfig.class_counts has a negative count: counts are numbers of images.")
        if not 0 <= self.few_shot_threshold <= self.many_shot_threshold:
            raise ValueError(
                f"MislasConfig.few_shot_threshold={self.few_shot_threshold} must be between 0 and "
                f"many_shot_threshold={self.many_shot_threshold}."
            )
        if self.class_group_boundaries is not None:
            first, second = (int(bound) for bound in self.class_group_boundaries)
            if not 0 <= first <= second <= self.num_labels:
                raise ValueError(
                    f"MislasConfig.class_group_boundaries={self.class_group_boundaries} must satisfy "
                    f"0 <= a <= b <= num_labels ({self.num_labels})."
                )
            self.class_group_boundaries = [first, second]
        self.temperature = self._checked_temperature(self.temperature)
        self.logit_bias = self._checked_class_values(self.logit_bias, "logit_bias")
        self.source_prior = self._checked_class_values(self.source_prior, "source_prior")

    def _checked_class_values(self, values, name) -> list[float] | None:
        """`logit_bias` (finite) or `source_prior` (positive, normalised to sum 1): None or one float per class."""
        if values is None:
            return None
        values = [float(value) for value in values]
        if len(values) != self.num_labels:
            raise ValueError(
                f"MislasConfig.{name} has {len(values)} entries but num_labels is {self.num_labels}: give one number "
                "per class, in label order, or None."
            )
        if not all(math.isfinite(value) for value in values) or (name == "source_prior" and min(values) <= 0):
            raise ValueError(
                f"MislasConfig.{name}={values} must be finite" + (" and positive." if name == "source_prior" else ".")
            )
        return [value / sum(values) for value in values] if name == "source_prior" else values

    def _checked_temperature(self, temperature) -> float | list[float]:
        values = [float(t) for t in temperature] if isinstance(temperature, (list, tuple)) else [float(temperature)]
        if isinstance(temperature, (list, tuple)) and len(values) != self.num_labels:
            raise ValueError(
                f"MislasConfig.temperature has {len(values)} entries but num_labels is {self.num_labels}: give one "
                "temperature, or one per class in label order."
            )
        if not all(math.isfinite(t) and t > 0 for t in values):
            raise ValueError(f"MislasConfig.temperature={temperature} must be positive and finite (1.0: no scaling).")
        return values if isinstance(temperature, (list, tuple)) else values[0]

    @property
    def backbone_spec(self) -> BackboneSpec | None:
        """The architecture of a built-in `backbone` (stem, layers); None for a `backbone_config`. The preprocessing is
        the image processor's, not its."""
        return BACKBONES[self.backbone] if self.backbone is not None else None

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Output channels of a built-in backbone's stages; the last one is the feature size M of Eq. (4)."""
        if self.backbone_spec is None:
            raise AttributeError(
                f"hidden_sizes is defined for the built-in ResNets, not a {self.backbone_name} backbone_config: the "
                "feature size is MislasModel.pooled_width"
            )
        return self.backbone_spec.hidden_sizes

    @property
    def backbone_name(self) -> str:
        """The backbone in words for logs, errors and cards: the built-in name, the `model_type` of a
        `backbone_config`, or for a timm one `timm/<architecture>`."""
        if self.backbone_config is None:
            return self.backbone
        if self.backbone_config.model_type == TIMM_MODEL_TYPE:
            return f"timm/{self.backbone_config.architecture}"
        return self.backbone_config.model_type

    @property
    def backbone_pooling(self) -> str | None:
        """How the features of a `backbone_config` are pooled (a key of `POOLED_FEATURES`); None for a built-in."""
        return backbone_pooling(self.backbone_config.model_type) if self.backbone_config is not None else None


__all__ = [
    "MislasConfig",
    "BACKBONES",
    "BACKBONE_POOLING",
    "BackboneSpec",
    "HEAD_MODES",
    "POOLED_FEATURES",
    "TRAINABLE_HEAD_PARAMETERS",
    "backbone_of_resnet_config",
    "backbone_pooling",
    "check_timm_available",
]
