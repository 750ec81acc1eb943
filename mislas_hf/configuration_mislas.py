"""MiSLAS model configuration."""

import math
from dataclasses import dataclass

from transformers import PreTrainedConfig

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


def backbone_of_resnet_config(resnet_config: dict) -> str:
    """The name in `BACKBONES` of a transformers ResNet checkpoint's architecture (`config.json` of `model_type:
    resnet`, e.g. microsoft/resnet-50), from its `layer_type`, `depths`, `hidden_sizes` and stem; `ValueError`
    naming the architecture when no backbone here has the same layers."""
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
    raise ValueError(
        f"the ResNet checkpoint's architecture (layer_type={architecture[0]!r}, depths={list(architecture[1])}, "
        f"hidden_sizes={list(architecture[2])}"
        + "".join(f", {key}={value!r}" for key, value in differences.items())
        + ") matches none of the backbones here: use a checkpoint of one of "
        + ", ".join(name for name, spec in BACKBONES.items() if spec.stem == "imagenet")
        + " (e.g. microsoft/resnet-50), with a 64-channel stem and stride on the 3x3 convolution (v1.5)."
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
    Configuration of a MiSLAS image classifier (Zhong et al., CVPR 2021): a ResNet backbone and the scaled-shift
    classifier of Eq. (4), `z = diag(s) ((r W + ΔW)^T x + b)`.

    Args:
        backbone (`str`, defaults to `"resnet32"`):
            One of `resnet32` (CIFAR ResNet of He et al., 3x3 stem, option-A shortcuts) or `resnet10`, `resnet18`,
            `resnet34`, `resnet50`, `resnet101`, `resnet152` (torchvision-layout ResNets for ImageNet-LT, iNaturalist 2018
            and transformers ResNet checkpoints such as microsoft/resnet-50), and `resnet152_places`, ResNet-152
            without its last block `layer4.2` (layers [3, 8, 36, 2]): the reference's Places-LT backbone, used with
            `extra_block`.
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
            Whether stage 2 updates the BN running statistics of the frozen backbone (Sec. 3.3). Recorded by
            `prepare_stage2`.
        stage (`int`, defaults to 1):
            Training stage the weights come from (1: representation learning, 2: classifier learning).
        extra_block (`bool`, defaults to `False`):
            Adds one bottleneck block (2048 -> 512 -> 2048, stride 1) on the backbone's last feature map before
            pooling, initialised as PyTorch initialises a new `Conv2d` and `BatchNorm2d`: the block the reference
            trains for Places-LT in the place of ResNet-152's `layer4.2` (backbone `resnet152_places`).
        freeze_backbone (`bool`, defaults to `False`):
            Keeps the (ImageNet-pretrained) backbone frozen in both stages, so that only the extra block and the
            classifier train: the reference's Places-LT recipe.
        num_channels (`int`, defaults to 3):
            Number of input channels.
        temperature (`float` or `list[float]`, defaults to 1.0):
            Post-hoc temperature scaling (Guo et al., ICML 2017): the forward divides the head's output (Eq. 4) by
            it, so `from_pretrained`, AutoModel and `pipeline` give calibrated probabilities. A number is one T for
            all classes; a list of `num_labels` numbers is class-wise, `T_k` dividing the logit of class k. 1.0 is
            no scaling. Set by `recipes/calibrate.py`; every T must be positive.
        calibration (`dict`, *optional*):
            How `temperature` was fit (method, held-out split and its size, NLL before and after), for the model
            card. None for an uncalibrated model.
        held_out_split (`dict`, *optional*):
            The per-class hold-out of the training set that `--validation_split_percentage` made: `percentage`,
            `seed`, the data options `dataset`, `imbalance_factor`, `split_seed`, and `class_counts` (held-out
            images per class). `recipes/calibrate.py` rebuilds exactly these images to fit the temperature on and
            refuses when they differ.
    """

    model_type = "mislas"

    backbone: str = "resnet32"
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
    calibration: dict | None = None
    held_out_split: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.id2label is not None and (self.label2id is None or set(self.label2id) != set(self.id2label.values())):
            self.label2id = {name: index for index, name in self.id2label.items()}
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"MislasConfig.backbone={self.backbone!r} is not supported: choose one of {', '.join(BACKBONES)}."
            )
        if self.head_mode not in HEAD_MODES:
            raise ValueError(f"MislasConfig.head_mode={self.head_mode!r} is not one of {', '.join(HEAD_MODES)}.")
        if self.extra_block and self.backbone_spec.stem != "imagenet":
            raise ValueError("MislasConfig.extra_block is only defined for the ImageNet-family backbones.")
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
    def backbone_spec(self) -> BackboneSpec:
        """The architecture of `backbone` (stem, layers); the preprocessing is the image processor's, not its."""
        return BACKBONES[self.backbone]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Output channels of the backbone's stages; the last one is the feature size M of Eq. (4)."""
        return self.backbone_spec.hidden_sizes


__all__ = ["MislasConfig", "BACKBONES", "BackboneSpec", "HEAD_MODES", "TRAINABLE_HEAD_PARAMETERS", "backbone_of_resnet_config"]
