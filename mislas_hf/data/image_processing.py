"""Normalisation statistics per family and the transformers image processor saved with a model for inference."""

from __future__ import annotations

from collections.abc import Sequence

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
FAMILIES = ("cifar", "imagenet")
"""Transform families of `make_transform` and `make_image_processor`."""
DEFAULT_IMAGE_SIZE = {"cifar": 32, "imagenet": 224}
"""Input side length of each family unless `image_size` says otherwise."""
DEFAULT_NORMALIZATION = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)}
"""(mean, std) of each family unless a benchmark or a pretrained backbone gives its own."""
RESIZE_RATIO = 256 / 224
"""Evaluation of the imagenet family resizes the shorter side to `image_size * RESIZE_RATIO` (256 for 224), then
centre-crops `image_size` (reference `transforms.Resize(256)` + `CenterCrop(224)`)."""


def preprocessing_of(
    family: str,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """`(image_size, mean, std)` with the family's defaults filled in; `ValueError` for an unknown family."""
    if family not in FAMILIES:
        raise ValueError(f"family='{family}' is unknown: use one of {FAMILIES}")
    default_mean, default_std = DEFAULT_NORMALIZATION[family]
    size = DEFAULT_IMAGE_SIZE[family] if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size={image_size} must be a positive number of pixels")
    return size, tuple(mean or default_mean), tuple(std or default_std)


def make_image_processor(
    family: str,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ConvNextImageProcessorPil:
    """The transformers image processor that reproduces `make_transform(family, train=False, ...)` for inference
    (for the imagenet family followed by `augment_imagenet_batch(batch, train=False)`, which normalises).

    imagenet: `ConvNextImageProcessor` with `shortest_edge=image_size, crop_pct=1 / RESIZE_RATIO`, i.e. resize the
    shorter side to 256 (bilinear) and centre crop 224 for the default size, ImageNet mean/std unless `mean`/`std`
    are given (the layout of microsoft/resnet-50's processor, which uses bicubic; bilinear matches the reference's
    `transforms.Resize`).
    cifar: the same class with `shortest_edge=image_size (32), crop_pct=1`: an identity on 32x32 CIFAR images (only
    rescale by 1/255 and normalise with `CIFAR_MEAN`/`CIFAR_STD`), while any other image is brought to 32x32
    instead of being fed at full size.
    The PIL backend needs no torchvision; a saved processor reloads with `AutoImageProcessor.from_pretrained`
    (which picks the torchvision backend where torchvision is installed).
    """
    size, mean, std = preprocessing_of(family, image_size, mean, std)
    return ConvNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_pct=1.0 if family == "cifar" else 1 / RESIZE_RATIO,
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )
