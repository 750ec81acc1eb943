"""How images become model inputs, apart from the architecture: `Preprocessing` (input size, evaluation resize and
crop, mean/std, resampling, and which of the reference's training augmentations applies), built from a benchmark's
defaults or from a checkpoint's `AutoImageProcessor`, and the transformers image processor saved with a model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel mean the reference normalises CIFAR images with (`datasets/cifar10.py`, `cifar100.py`)."""
CIFAR_STD = (0.2023, 0.1994, 0.2010)
"""Per-channel standard deviation the reference normalises CIFAR images with."""
INATURALIST_MEAN = (0.466, 0.471, 0.380)
"""Per-channel mean the reference normalises iNaturalist 2018 images with (`datasets/ina2018.py`)."""
INATURALIST_STD = (0.195, 0.194, 0.192)
"""Per-channel standard deviation the reference normalises iNaturalist 2018 images with."""
AUGMENTATIONS = ("cifar", "imagenet")
"""The reference's two training augmentations: `cifar` (`datasets/cifar10.py`: 4-pixel padded random crop, flip) and
`imagenet` (`datasets/imagenet.py`: RandomResizedCrop, flip, colour jitter)."""
RESIZE_RATIO = 256 / 224
"""The `imagenet` evaluation resizes the shorter side to `image_size * RESIZE_RATIO` (256 for 224), then centre-crops
`image_size` (reference `transforms.Resize(256)` + `CenterCrop(224)`)."""
CONVNEXT_NO_CROP_SIZE = 384
"""`ConvNextImageProcessor` (also the ResNet checkpoints' processor) resizes to `shortest_edge / crop_pct` and
centre-crops only below this size; from it on it resizes without a crop."""
RESAMPLING = {
    "nearest": PILImageResampling.NEAREST,
    "bilinear": PILImageResampling.BILINEAR,
    "bicubic": PILImageResampling.BICUBIC,
    "box": PILImageResampling.BOX,
    "hamming": PILImageResampling.HAMMING,
    "lanczos": PILImageResampling.LANCZOS,
}
"""The resampling filters of PIL, which transformers image processors name by their PIL codes (`resample`: 0 nearest,
e.g. google/efficientnet-*; 2 bilinear; 3 bicubic; 1 lanczos) and timm data configs by name (`interpolation`), with
those codes. The transforms resize as PIL does with each (`data.transforms.resize_image`)."""


@dataclass(frozen=True)
class Preprocessing:
    """How images are preprocessed for one model, independent of its architecture.

    `augmentation`: which of the reference's training augmentations the transforms apply (`AUGMENTATIONS`).
    `image_size`: the model's input side. Evaluation resizes the shorter side to `resize_size` = `image_size /
    crop_pct` (`resample`, antialiased) and centre-crops `image_size`; with `crop_pct` 1, images already `image_size`
    square pass unchanged.
    `mean`/`std`: per-channel normalisation of pixels scaled to [0, 1].
    """

    augmentation: str
    image_size: int
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: str = "bilinear"

    def __post_init__(self):
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation={self.augmentation!r} is unknown: use one of {AUGMENTATIONS}")
        if self.image_size < 1:
            raise ValueError(f"image_size={self.image_size} must be a positive number of pixels")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct={self.crop_pct} must be in (0, 1]: the centre crop's share of the resized side")
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample={self.resample!r} is not one of {', '.join(RESAMPLING)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean={self.mean} and std={self.std} need one value per RGB channel")

    @classmethod
    def reference(
        cls,
        augmentation: str,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Preprocessing:
        """The reference's preprocessing of `augmentation`: `cifar` at 32 px with `CIFAR_MEAN`/`CIFAR_STD` and no
        evaluation resize; `imagenet` at 224 px, resized to 256 for evaluation, with ImageNet's mean/std. `image_size`,
        `mean` and `std` replace the defaults (None keeps them)."""
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation={augmentation!r} is unknown: use one of {AUGMENTATIONS}")
        cifar = augmentation == "cifar"
        size = (32 if cifar else 224) if image_size is None else int(image_size)
        default_mean, default_std = (CIFAR_MEAN, CIFAR_STD) if cifar else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        return cls(
            augmentation,
            size,
            1.0 if cifar else 1 / RESIZE_RATIO,
            tuple(mean or default_mean),
            tuple(std or default_std),
        )

    @classmethod
    def from_image_processor(cls, processor, augmentation: str) -> Preprocessing:
        """The preprocessing a checkpoint's image processor describes (`shortest_edge` with `crop_pct` as the ConvNeXt
        and ResNet processors give them, or `size` + `crop_size` when it centre-crops, or a timm `pretrained_cfg`'s
        data config), trained with the reference's `augmentation`. A `height` x `width` resize is read as the resize
        of the shorter side (the same for square images). Any of PIL's filters (`RESAMPLING`); `ValueError` naming
        the processor when its `resample` is none of them."""
        if hasattr(processor, "data_config"):  # TimmWrapperImageProcessor: timm's resolved data config
            return cls._from_timm_data_config(processor.data_config, augmentation)
        size = dict(processor.size)
        # a crop_size the processor does not apply (do_center_crop false, e.g. google/efficientnet-*) crops nothing
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", True) else None
        if "shortest_edge" in size and crop is None:  # ConvNeXt / ResNet: crop_pct applies below 384 px only
            image_size = size["shortest_edge"]
            crop_pct = (getattr(processor, "crop_pct", None) or 1.0) if image_size < CONVNEXT_NO_CROP_SIZE else 1.0
        else:
            resize_size = size.get("shortest_edge", min(size.get("height", 0), size.get("width", 0)))
            image_size = min(crop["height"], crop["width"]) if crop else resize_size
            crop_pct = image_size / resize_size
        resample = {code: name for name, code in RESAMPLING.items()}.get(processor.resample)
        if resample is None:
            raise ValueError(
                f"{type(processor).__name__} resamples with {processor.resample!r}, not one of PIL's filters "
                f"({', '.join(f'{code} {name}' for name, code in RESAMPLING.items())}): set its resample to one of them"
            )
        mean, std = cls._processor_normalisation(processor)
        return cls(augmentation, image_size, crop_pct, mean, std, resample)

    @staticmethod
    def _processor_normalisation(processor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The per-channel mean and std, on pixels scaled to [0, 1], of what an image processor does to pixel values
        p: rescale by `rescale_factor` (k = 255 x rescale_factor; k = 255 without `do_rescale`), minus 1 with
        EfficientNet's `rescale_offset`, normalise with `image_mean` m and `image_std` s (`do_normalize`), and divide
        by s once more with EfficientNet's `include_top` (google/efficientnet-* store the square root of the std they
        normalise with): ((k p - o - m) / s) / t = (p - (m + o) / k) / (s t / k)."""
        channels = len(processor.image_mean)
        scale = 255 * processor.rescale_factor if processor.do_rescale else 255.0
        offset = 1.0 if processor.do_rescale and getattr(processor, "rescale_offset", False) else 0.0
        if processor.do_normalize:
            mean, std = processor.image_mean, processor.image_std
        else:
            mean, std = [0.0] * channels, [1.0] * channels
        second_std = processor.image_std if getattr(processor, "include_top", False) else [1.0] * channels
        return (
            tuple((m + offset) / scale for m in mean),
            tuple(s * t / scale for s, t in zip(std, second_std)),
        )

    @classmethod
    def _from_timm_data_config(cls, data_config: dict, augmentation: str) -> Preprocessing:
        """`from_image_processor` for a timm model: `input_size` (3, H, W) centre-cropped at `crop_pct` of the
        resized shorter side (`crop_mode` center), `interpolation`, `mean`, `std`."""
        _, height, width = data_config["input_size"]
        if data_config.get("crop_mode", "center") != "center" or height != width:
            raise ValueError(
                f"the timm data config {data_config} crops a {height}x{width} input with crop_mode "
                f"{data_config.get('crop_mode')!r}: the transforms implement square centre crops only"
            )
        resample = data_config.get("interpolation", "bilinear")
        if resample not in RESAMPLING:
            raise ValueError(
                f"the timm data config resamples with {resample!r}: the transforms implement {', '.join(RESAMPLING)} only"
            )
        return cls(
            augmentation,
            height,
            data_config.get("crop_pct", 1.0),
            tuple(data_config["mean"]),
            tuple(data_config["std"]),
            resample,
        )

    def with_inputs_of(self, pretrained: Preprocessing) -> Preprocessing:
        """This preprocessing (a benchmark's: its augmentation and evaluation geometry, `crop_pct`) with the input
        size, normalisation and resampling filter of a pretrained network's (`pretrained`, from its image
        processor): a pretrained backbone sees a benchmark's images as it saw its own training images, e.g. CIFAR's
        32x32 images upsampled to EfficientNet-Lite0's 224 px and normalised with its mean = std = 0.5."""
        return dataclasses.replace(
            self,
            image_size=pretrained.image_size,
            mean=pretrained.mean,
            std=pretrained.std,
            resample=pretrained.resample,
        )

    @property
    def resize_size(self) -> int:
        """The shorter side's length before the evaluation centre crop."""
        return round(self.image_size / self.crop_pct)

    def replace(self, **changes) -> Preprocessing:
        """A copy with the `changes` that are not None (e.g. `image_size` from the command line)."""
        return dataclasses.replace(self, **{name: value for name, value in changes.items() if value is not None})

    def image_processor(self) -> ConvNextImageProcessorPil:
        """The transformers image processor that reproduces the evaluation transform for inference (for `imagenet`
        followed by the on-device normalisation, `augment_imagenet_batch(batch, train=False)`).

        `ConvNextImageProcessor` with `shortest_edge=image_size, crop_pct`: resize the
        shorter side to `resize_size` and centre crop `image_size` (the layout of microsoft/resnet-50's processor);
        for `cifar` (`crop_pct=1`) an identity on 32x32 CIFAR images (only rescale by 1/255 and normalise), while any
        other image is brought to 32x32 instead of being fed at full size. The PIL backend needs no torchvision; a
        saved processor reloads with `AutoImageProcessor.from_pretrained`."""
        return ConvNextImageProcessorPil(
            size={"shortest_edge": self.image_size},
            crop_pct=self.crop_pct,
            resample=RESAMPLING[self.resample],
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(self.mean),
            image_std=list(self.std),
        )

    def description(self) -> str:
        """One sentence for the model card: what the image processor does to an image."""
        if self.crop_pct == 1:
            geometry = f"{self.image_size}x{self.image_size} RGB input"
        else:
            geometry = f"shorter side resized to {self.resize_size} ({self.resample}), centre crop {self.image_size}"
        return (
            f"{geometry}, pixel values rescaled to [0, 1] and normalised with mean {list(self.mean)} and std "
            f"{list(self.std)}"
        )
