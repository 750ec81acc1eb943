"""MiSLAS model configuration."""

from transformers import PreTrainedConfig

# name -> (family, layer_type, depths, hidden_sizes). "cifar" is the CIFAR ResNet of He et al. (option-A
# shortcuts) used by LDAM-DRW and MiSLAS; "imagenet" are torchvision-layout ResNets (v1.5 bottleneck).
BACKBONES = {
    "resnet32": ("cifar", "basic", (5, 5, 5), (16, 32, 64)),
    "resnet10": ("imagenet", "basic", (1, 1, 1, 1), (64, 128, 256, 512)),
    "resnet50": ("imagenet", "bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    "resnet101": ("imagenet", "bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
    "resnet152": ("imagenet", "bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048)),
}

# Stage-2 classifier modes expressible by the scaled-shift head of Eq. (4).
HEAD_MODES = ("linear", "crt", "lws", "mislas")


class MislasConfig(PreTrainedConfig):
    r"""
    Configuration of a MiSLAS image classifier (Zhong et al., CVPR 2021): a ResNet backbone and the scaled-shift
    classifier of Eq. (4), `z = diag(s) ((r W + ΔW)^T x + b)`.

    Args:
        backbone (`str`, defaults to `"resnet32"`):
            One of `resnet32` (CIFAR ResNet of He et al., 3x3 stem, option-A shortcuts) or `resnet10`, `resnet50`,
            `resnet101`, `resnet152` (torchvision-layout ResNets for ImageNet-LT, Places-LT and iNaturalist 2018).
        class_counts (`list[int]`, *optional*):
            Training images per class, in label order. Needed by label-aware smoothing (Eq. 3) and by the
            Many/Medium/Few metrics; saved with the model so evaluation of a published checkpoint uses them.
        class_group_boundaries (`list[int]`, *optional*):
            `[a, b]`: the reference's index split for Many = [0, a), Medium = [a, b), Few = [b, K) (used for
            CIFAR-LT). When unset, the paper's thresholds on `class_counts` apply (Appendix A).
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
            Adds one bottleneck block (2048 -> 512 -> 2048) on the backbone's last feature map before pooling, as
            the reference does for Places-LT.
        freeze_backbone (`bool`, defaults to `False`):
            Keeps the (ImageNet-pretrained) backbone frozen in both stages, so that only the extra block and the
            classifier train: the reference's Places-LT recipe.
        num_channels (`int`, defaults to 3):
            Number of input channels.
    """

    model_type = "mislas"

    backbone: str = "resnet32"
    class_counts: list[int] | None = None
    class_group_boundaries: list[int] | None = None
    retention_factor: float = 1.0
    head_mode: str = "linear"
    shift_bn: bool = False
    stage: int = 1
    extra_block: bool = False
    freeze_backbone: bool = False
    num_channels: int = 3

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
        if self.extra_block and self.family != "imagenet":
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
        if self.class_group_boundaries is not None:
            first, second = (int(bound) for bound in self.class_group_boundaries)
            if not 0 <= first <= second <= self.num_labels:
                raise ValueError(
                    f"MislasConfig.class_group_boundaries={self.class_group_boundaries} must satisfy "
                    f"0 <= a <= b <= num_labels ({self.num_labels})."
                )
            self.class_group_boundaries = [first, second]

    @property
    def family(self) -> str:
        """`"cifar"` or `"imagenet"`: decides the stem, the pre-processing and the conversion layout."""
        return BACKBONES[self.backbone][0]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Output channels of the backbone's stages; the last one is the feature size M of Eq. (4)."""
        return BACKBONES[self.backbone][3]


__all__ = ["MislasConfig", "BACKBONES", "HEAD_MODES"]
