"""The batch part of the augmentation, run on the training device by `MislasTrainer(batch_augmentation=...)`:
colour jitter and normalisation of the `imagenet` augmentation's uint8 crops (`augment_imagenet_batch`), and the
whole `cifar` augmentation of in-memory CIFAR batches (`augment_cifar_batch`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .preprocessing import CIFAR_MEAN, CIFAR_STD

COLOUR_JITTER = 0.4
"""Strength of the reference's `ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0)`: each factor is
drawn uniformly from [1 - 0.4, 1 + 0.4]."""
CIFAR_CROP_PADDING = 4
"""Zero padding of the reference's `RandomCrop(32, padding=4)`."""


def _normalization_affine(mean: Sequence[float], std: Sequence[float], device=None):
    """`(scale, shift)`, each `(3, 1, 1)` float32, with `x * scale + shift == (x / 255 - mean) / std` for pixels x in
    [0, 255]: normalisation as one multiply and one add, in place."""
    mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    scale, shift = 1 / (255 * std), -mean / std
    return scale.float().to(device)[:, None, None], shift.float().to(device)[:, None, None]


GREY_WEIGHTS = (0.2989, 0.587, 0.114)
"""Weights of R, G, B in torchvision's `rgb_to_grayscale` (ITU-R 601-2 luma), which `ColorJitter` blends with."""


def _blend_(images: torch.Tensor, factor, other) -> None:
    """torchvision's `_blend` in place on float images in [0, 255]: `factor * x + (1 - factor) * other`, clamped to
    [0, 255]. With a Python `factor` <= 1 the blend of two values in [0, 255] stays in it, so the clamp is skipped
    (a difference of at most float rounding); a tensor factor (one per image) always clamps."""
    images.lerp_(other, 1 - factor)
    if not isinstance(factor, float) or factor > 1:
        images.clamp_(0.0, 255.0)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """torchvision's `rgb_to_grayscale` of `[N, 3, H, W]` float images: `[N, 1, H, W]`."""
    red, green, blue = images.unbind(dim=1)
    return red.mul(GREY_WEIGHTS[0]).add_(green, alpha=GREY_WEIGHTS[1]).add_(blue, alpha=GREY_WEIGHTS[2])[:, None]


def _adjust_brightness_(images: torch.Tensor, factor) -> None:
    """torchvision's `adjust_brightness` per image, in place on float images in [0, 255]: `b * x`, clamped."""
    images.mul_(factor)
    if not isinstance(factor, float) or factor > 1:  # b <= 1 keeps [0, 255]
        images.clamp_(max=255.0)


def _adjust_contrast_(images: torch.Tensor, factor) -> None:
    """torchvision's `adjust_contrast` per image, in place: `c * x + (1 - c) * (mean grey of the image)`, clamped.
    The mean grey is the grey-weighted sum of the channel means (the mean of `rgb_to_grayscale`, one pass fewer)."""
    weights = torch.tensor(GREY_WEIGHTS, dtype=images.dtype, device=images.device)
    mean_grey = (images.mean(dim=(2, 3)) * weights).sum(dim=1)[:, None, None, None]
    _blend_(images, factor, mean_grey)


def _adjust_saturation_(images: torch.Tensor, factor) -> None:
    """torchvision's `adjust_saturation` per image, in place: `s * x + (1 - s) * grey(x)`, clamped."""
    _blend_(images, factor, _grey(images))


COLOUR_ADJUSTMENTS = (_adjust_brightness_, _adjust_contrast_, _adjust_saturation_)
"""The adjustments of `ColorJitter(brightness, contrast, saturation)`, indexed as the columns of the factors."""


def jitter_and_normalize(
    images: torch.Tensor,
    factors: torch.Tensor,
    orders: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    per_image: bool,
) -> torch.Tensor:
    """Colour jitter with given parameters, then normalisation: a uint8 batch `[B, 3, H, W]` -> float32.

    Image `i` gets `COLOUR_ADJUSTMENTS[orders[i, k]]` with factor `factors[i, orders[i, k]]` for k = 0, 1, 2 (as
    torchvision's `ColorJitter` applies `adjust_brightness`, `adjust_contrast`, `adjust_saturation` to a float image,
    in [0, 255] here), then `x * scale + shift` (`_normalization_affine`). `per_image` (on a CPU): each image is
    finished in turn while it is in the cache, with Python factors; else (a GPU) the images sharing an order are
    adjusted together."""
    output = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    if per_image:
        for index, (image_factors, order) in enumerate(zip(factors.tolist(), orders.tolist())):
            pixels = output[index : index + 1].copy_(images[index : index + 1])
            for adjustment in order:
                COLOUR_ADJUSTMENTS[adjustment](pixels, image_factors[adjustment])
            pixels.mul_(scale).add_(shift)
        return output
    codes = orders[:, 0] * 3 + orders[:, 1]  # the first two adjustments name the permutation
    for code in torch.unique(codes).tolist():
        indices = (codes == code).nonzero()[:, 0]
        pixels = images.index_select(0, indices).float()
        group_factors = factors.index_select(0, indices)[:, :, None, None, None]
        for adjustment in (code // 3, code % 3, 3 - code // 3 - code % 3):
            COLOUR_ADJUSTMENTS[adjustment](pixels, group_factors[:, adjustment])
        output.index_copy_(0, indices, pixels.mul_(scale).add_(shift))
    return output


def augment_imagenet_batch(
    images: torch.Tensor,
    train: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """The batch part of the `imagenet` augmentation (`make_transform`) on a uint8 batch `[B, 3, H, W]`, on its device.

    train: the reference's `ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0)` with per-image
    parameters: each image draws its factors (b, c, s) uniformly from [0.6, 1.4] and its own random order of the three
    adjustments (`COLOUR_ADJUSTMENTS`, each clamped to the pixel range), as torchvision's `ColorJitter` draws per call,
    from the device's torch RNG (`jitter_and_normalize`). Then (train and eval) the pixels are scaled to [0, 1] and
    normalised with `mean`/`std` (default: ImageNet's). Returns float32 `[B, 3, H, W]`.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"augment_imagenet_batch takes a uint8 [B, 3, H, W] batch, got {images.dtype} of shape "
            f"{tuple(images.shape)}"
        )
    mean, std = mean or IMAGENET_DEFAULT_MEAN, std or IMAGENET_DEFAULT_STD
    device = images.device
    scale, shift = _normalization_affine(mean, std, device)
    per_image = device.type == "cpu"  # on a CPU, finish each image while it is in the cache
    if not train and not per_image:
        return images.float().mul_(scale).add_(shift)
    if not train:
        output = torch.empty(images.shape, dtype=torch.float32)
        for image, pixels in zip(images, output):
            pixels.copy_(image).mul_(scale).add_(shift)
        return output
    batch = images.shape[0]
    factors = torch.empty(batch, 3, device=device).uniform_(1 - COLOUR_JITTER, 1 + COLOUR_JITTER)
    orders = torch.rand(batch, 3, device=device).argsort(dim=1)  # a uniform random permutation per image
    return jitter_and_normalize(images, factors, orders, scale, shift, per_image)


def augment_cifar_batch(images: torch.Tensor, train: bool = True) -> torch.Tensor:
    """The `cifar` augmentation (`make_transform`) with CIFAR's mean/std on a whole uint8 batch `[B, 3, H, W]`, on the batch's device (CPU or GPU).

    train: each image gets its own crop offset, drawn uniformly from the 9 x 9 positions of an H x W window in the
    image zero-padded by 4 pixels (`RandomCrop(32, padding=4)`), and its own horizontal flip with probability 0.5
    (`RandomHorizontalFlip`), from the device's torch RNG. Then, as in evaluation, the pixels are scaled to [0, 1] and
    normalised with `CIFAR_MEAN`/`CIFAR_STD` by the same float32 operations as the per-sample transform.
    Returns a float32 `[B, 3, H, W]` tensor.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"augment_cifar_batch takes a uint8 [B, C, H, W] batch, got {images.dtype} of shape {tuple(images.shape)}"
        )
    device = images.device
    if train:
        batch, channels, height, width = images.shape
        pad = CIFAR_CROP_PADDING
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(height, device=device)
        cols = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(width, device=device)
        flip = torch.rand(batch, 1, device=device) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
        images = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * pad))
        images = images.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))
    mean = torch.tensor(CIFAR_MEAN, device=device)[:, None, None]
    std = torch.tensor(CIFAR_STD, device=device)[:, None, None]
    return (images.float().div_(255.0) - mean) / std
