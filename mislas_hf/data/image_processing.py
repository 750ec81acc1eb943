"""Normalisation statistics per family and the transformers image processor saved with a model for inference."""

from __future__ import annotations

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel mean the reference normalises CIFAR images with (`datasets/cifar10.py`, `cifar100.py`)."""
CIFAR_STD = (0.2023, 0.1994, 0.2010)
"""Per-channel standard deviation the reference normalises CIFAR images with."""
FAMILIES = ("cifar", "imagenet")
"""Transform families of `make_transform` and `make_image_processor`."""


def make_image_processor(family: str) -> ConvNextImageProcessorPil:
    """The transformers image processor that reproduces `make_transform(family, train=False)` for inference.

    imagenet: `ConvNextImageProcessor` with `shortest_edge=224, crop_pct=224/256`, i.e. resize the shorter side to
    256 (bilinear) and centre crop 224, ImageNet mean/std (the layout of microsoft/resnet-50's processor, which
    uses bicubic; bilinear matches the reference's `transforms.Resize`).
    cifar: the same class with `shortest_edge=32, crop_pct=1`: an identity on 32x32 CIFAR images (only rescale by
    1/255 and normalise with `CIFAR_MEAN`/`CIFAR_STD`), while any other image is brought to 32x32 instead of being
    fed at full size.
    The PIL backend needs no torchvision; a saved processor reloads with `AutoImageProcessor.from_pretrained`
    (which picks the torchvision backend where torchvision is installed).
    """
    if family == "cifar":
        size, crop_pct, mean, std = 32, 1.0, CIFAR_MEAN, CIFAR_STD
    elif family == "imagenet":
        size, crop_pct, mean, std = 224, 224 / 256, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    else:
        raise ValueError(f"family='{family}' is unknown: use one of {FAMILIES}")
    return ConvNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_pct=crop_pct,
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )
