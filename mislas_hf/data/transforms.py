"""The reference's image transforms per family, applied lazily with `Dataset.set_transform`.

* imagenet family (ImageNet-LT, Places-LT, iNaturalist 2018, own images): `ImageNetTransform` decodes each image
  (torchvision `decode_jpeg` for JPEG, PIL otherwise) and, in training, crops and flips it on uint8 in the loader
  workers; `augment_imagenet_batch` then jitters colours per image and normalises the whole batch on the training
  device (`MislasTrainer(batch_augmentation=...)`). Evaluation images leave the workers resized and centre-cropped,
  as uint8 as well; the same function normalises them on the device (`augment_imagenet_batch(batch, train=False)`).
* cifar family: kornia per-sample transforms (`BatchImageTransform`), and a faster path with images decoded once
  into memory (`decode_cifar_images`) and whole batches cropped, flipped and normalised on their device
  (`augment_cifar_batch`), with the same augmentation distribution.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import datasets
import kornia.augmentation as K
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from .image_processing import CIFAR_MEAN, CIFAR_STD, RESIZE_RATIO, preprocessing_of

# --------------------------------------------------------------------------------------------------------------------
# Transforms (training / evaluation)
# --------------------------------------------------------------------------------------------------------------------


def _to_float_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) as an RGB float32 CHW tensor in [0, 1], via a uint8 numpy array."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _check_columns(batch: dict, image_column: str, label_column: str) -> None:
    """`ValueError` naming the column when a transform's image or label column is missing from the batch."""
    for column in (image_column, label_column):
        if column not in batch:
            raise ValueError(
                f"column '{column}' not in the batch (columns {list(batch)}): pass the dataset's column names as "
                f"image_column/label_column of make_transform"
            )


class BatchImageTransform:
    """Callable for `Dataset.set_transform`: a batch dict -> `{"pixel_values": [CHW float32], "labels": [int]}`.

    `per_image` maps one `(1, C, H, W)` image to a fixed size (so images of different sizes stack);
    `batch_ops` then runs on the stacked batch. Both are kornia modules drawing their randomness from torch's global
    RNG, per sample (DataLoader workers seed it). Build it with `make_transform`.
    """

    def __init__(
        self,
        per_image: torch.nn.Module | None,
        batch_ops: torch.nn.Module,
        image_column: str = "image",
        label_column: str = "label",
    ):
        self.per_image = per_image
        self.batch_ops = batch_ops
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, batch: dict) -> dict:
        """Transform one batch (columns as lists) of a `datasets.Dataset`."""
        _check_columns(batch, self.image_column, self.label_column)
        images = [_to_float_tensor(image) for image in batch[self.image_column]]
        if self.per_image is not None:
            images = [self.per_image(image[None])[0] for image in images]
        with torch.no_grad():
            pixel_values = self.batch_ops(torch.stack(images))
        return {
            "pixel_values": list(pixel_values.unbind(0)),
            "labels": [int(label) for label in batch[self.label_column]],
        }


class FitToSquare(torch.nn.Module):
    """Resize the shorter side of a `(1, C, H, W)` image to `size` (antialiased bilinear) and centre-crop
    `size x size`, as the cifar-family image processor does; an image already `size x size` passes unchanged (the
    CIFAR benchmarks' 32x32 images). Lets the CIFAR ResNet-32 train on your own images of any size."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.resize_and_crop = torch.nn.Sequential(
            K.Resize(size, side="short", antialias=True, align_corners=False), K.CenterCrop(size)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image
        return self.resize_and_crop(image)


IMAGENET_CROP_SCALE = (0.08, 1.0)
"""Range of the crop's area as a fraction of the image's, reference `RandomResizedCrop(224)` (torchvision's default)."""
IMAGENET_CROP_RATIO = (3 / 4, 4 / 3)
"""Range of the crop's aspect ratio (width / height), drawn log-uniformly as torchvision does."""
COLOUR_JITTER = 0.4
"""Strength of the reference's `ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0)`: each factor is
drawn uniformly from [1 - 0.4, 1 + 0.4]."""
JPEG_SIGNATURE = b"\xff\xd8\xff"
"""The first bytes of every JPEG file."""
CROP_ATTEMPTS = 10
"""Tries of torchvision's `RandomResizedCrop.get_params` at a box that fits in the image before its central fallback."""


def random_resized_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """`(top, left, crop height, crop width)` drawn as torchvision's `RandomResizedCrop.get_params(image,
    IMAGENET_CROP_SCALE, IMAGENET_CROP_RATIO)` draws it: up to `CROP_ATTEMPTS` tries of an area fraction uniform in
    the scale range and an aspect ratio (width / height) log-uniform in the ratio range, sides rounded, kept when the
    box fits, at a uniformly drawn integer position; else the centred box of the whole image with its ratio clamped
    to the range. The same distribution from one `torch.rand` call (torch's global RNG) and Python arithmetic."""
    area = height * width
    log_low, log_high = math.log(IMAGENET_CROP_RATIO[0]), math.log(IMAGENET_CROP_RATIO[1])
    draws = torch.rand(CROP_ATTEMPTS, 4).tolist()
    for area_draw, ratio_draw, top_draw, left_draw in draws:
        target_area = area * (IMAGENET_CROP_SCALE[0] + (IMAGENET_CROP_SCALE[1] - IMAGENET_CROP_SCALE[0]) * area_draw)
        aspect_ratio = math.exp(log_low + (log_high - log_low) * ratio_draw)
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = min(int(top_draw * (height - crop_height + 1)), height - crop_height)
            left = min(int(left_draw * (width - crop_width + 1)), width - crop_width)
            return top, left, crop_height, crop_width
    image_ratio = width / height
    if image_ratio < IMAGENET_CROP_RATIO[0]:
        crop_width, crop_height = width, round(width / IMAGENET_CROP_RATIO[0])
    elif image_ratio > IMAGENET_CROP_RATIO[1]:
        crop_width, crop_height = round(height * IMAGENET_CROP_RATIO[1]), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width



def decode_rgb(image) -> torch.Tensor:
    """One image as an RGB uint8 `(3, H, W)` tensor, like the reference's `Image.open(f).convert("RGB")`.

    `image`: a PIL image, a file path, encoded bytes, or a `datasets.Image(decode=False)` value (`{"bytes", "path"}`).
    JPEG bytes are decoded by torchvision's `decode_jpeg` (grey and CMYK JPEGs converted to RGB as PIL does); other
    formats by PIL, any mode converted to RGB (alpha dropped, palettes expanded)."""
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image.convert("RGB"))
    if isinstance(image, dict):
        image = image["bytes"] if image.get("bytes") is not None else image.get("path")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image file {image} not found: check the image root (--data_dir) and the list")
        with open(image, "rb") as file:
            image = file.read()
    if not isinstance(image, (bytes, bytearray)):
        raise ValueError(
            f"cannot decode an image from a {type(image).__name__}: the image column must hold PIL images, file "
            "paths or encoded bytes"
        )
    if image[:3] == JPEG_SIGNATURE:
        return decode_jpeg(torch.frombuffer(bytearray(image), dtype=torch.uint8), mode=ImageReadMode.RGB)
    with Image.open(io.BytesIO(image)) as picture:
        return TF.pil_to_tensor(picture.convert("RGB"))


def with_encoded_images(dataset: datasets.Dataset, image_column: str = "image") -> datasets.Dataset:
    """`dataset` with its `datasets.Image` column left encoded (`Image(decode=False)`: `{"bytes", "path"}` values), so
    that `ImageNetTransform` decodes each file once, with torchvision for JPEG, instead of `datasets` decoding it with
    PIL first. A column that is not a `datasets.Image` is returned as is."""
    feature = dataset.features.get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


class ImageNetTransform:
    """Callable for `Dataset.set_transform`, the per-image part of the imagenet family's pipeline: a batch dict ->
    `{"pixel_values": [(3, size, size) tensors], "labels": [int]}`, run in the DataLoader workers.

    train: decode (`decode_rgb`), torchvision's `RandomResizedCrop(size, scale=IMAGENET_CROP_SCALE,
    ratio=IMAGENET_CROP_RATIO)` (the box from `random_resized_crop_box`) with antialiased bilinear resizing (as PIL
    resizes), horizontal flip with p = 0.5. eval: decode, resize the shorter side to `round(size * RESIZE_RATIO)`
    (antialiased bilinear), centre crop `size`, as `make_image_processor("imagenet")` does. The pixel values stay
    uint8 (a quarter of float32's bytes between the workers and the main process); `augment_imagenet_batch(batch,
    train)` finishes each collated batch on the device (training: colour jitter; both: normalisation with the
    benchmark's mean/std). Images are resized in channels-last memory (torch's fast uint8 path).
    Randomness comes from torch's global RNG (DataLoader workers seed it per worker). Build it with `make_transform`.
    """

    def __init__(
        self,
        train: bool,
        image_size: int,
        image_column: str = "image",
        label_column: str = "label",
    ):
        self.train = train
        self.image_size = image_size
        self.resize_size = round(image_size * RESIZE_RATIO)
        self.image_column = image_column
        self.label_column = label_column

    def _train_geometry(self, image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = random_resized_crop_box(*image.shape[-2:])
        crop = image[None, :, top : top + height, left : left + width].contiguous(memory_format=torch.channels_last)
        crop = TF.resize(crop, [self.image_size, self.image_size], antialias=True)[0]
        return TF.horizontal_flip(crop) if torch.rand(1).item() < 0.5 else crop

    def _eval_geometry(self, image: torch.Tensor) -> torch.Tensor:
        image = image[None].contiguous(memory_format=torch.channels_last)
        return TF.center_crop(TF.resize(image, self.resize_size, antialias=True), self.image_size)[0]

    def __call__(self, batch: dict) -> dict:
        """Transform one batch (columns as lists) of a `datasets.Dataset`."""
        _check_columns(batch, self.image_column, self.label_column)
        geometry = self._train_geometry if self.train else self._eval_geometry
        return {
            "pixel_values": [geometry(decode_rgb(image)) for image in batch[self.image_column]],
            "labels": [int(label) for label in batch[self.label_column]],
        }


def _normalization_affine(mean: Sequence[float], std: Sequence[float], device=None):
    """`(scale, shift)`, each `(3, 1, 1)` float32, with `x * scale + shift == (x / 255 - mean) / std` for pixels x in
    [0, 255]: normalisation as one multiply and one add, in place."""
    mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    scale, shift = 1 / (255 * std), -mean / std
    return scale.float().to(device)[:, None, None], shift.float().to(device)[:, None, None]


def make_transform(
    family: str,
    train: bool,
    image_column: str = "image",
    label_column: str = "label",
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BatchImageTransform | ImageNetTransform:
    """The reference's image transform of `family` ("cifar" or "imagenet"), for `Dataset.set_transform`.

    cifar (reference `datasets/cifar10.py`): train = RandomCrop `image_size` (32) with 4-pixel zero padding,
    horizontal flip (p=0.5), normalise with `CIFAR_MEAN`/`CIFAR_STD`; eval = normalise only. Images of another size
    are first brought to `image_size` (`FitToSquare`: shorter side resized, centre crop), as the image processor does.
    Float32 output.
    imagenet (reference `datasets/imagenet.py`; also used for Places-LT and iNaturalist 2018): `ImageNetTransform`,
    uint8 output. train = RandomResizedCrop `image_size` (224; scale (0.08, 1), ratio (3/4, 4/3)), horizontal flip;
    eval = resize the shorter side to `image_size * RESIZE_RATIO` (256; antialiased bilinear, as PIL does), centre
    crop `image_size`. Pass `augment_imagenet_batch` with the mean/std (ColorJitter(0.4, 0.4, 0.4, hue 0) per image
    in training, normalisation) as the trainer's `batch_augmentation`: `mean`/`std` are its arguments, not this
    function's (`ValueError`).
    cifar: `mean`/`std` default to the family's (`DEFAULT_NORMALIZATION`). (iNaturalist 2018 has its own,
    `INATURALIST_MEAN`/`INATURALIST_STD`, as the reference.) Images of any PIL mode are converted to RGB.
    """
    if family == "imagenet" and (mean is not None or std is not None):
        raise ValueError(
            "make_transform('imagenet') yields uint8 images and does not normalise: pass mean/std to "
            "augment_imagenet_batch (the trainer's batch_augmentation), which normalises each batch on its device"
        )
    size, mean, std = preprocessing_of(family, image_size, mean, std)
    if family == "imagenet":
        return ImageNetTransform(train, size, image_column, label_column)
    normalize = K.Normalize(torch.tensor(mean), torch.tensor(std))
    if train:
        batch_ops = torch.nn.Sequential(
            K.RandomCrop((size, size), padding=4, fill=0.0), K.RandomHorizontalFlip(p=0.5), normalize
        )
    else:
        batch_ops = torch.nn.Sequential(normalize)
    return BatchImageTransform(FitToSquare(size), batch_ops, image_column, label_column)


# --------------------------------------------------------------------------------------------------------------------
# ImageNet family on the training device: colour jitter per image, normalisation
# --------------------------------------------------------------------------------------------------------------------


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
    """The batch part of `make_transform("imagenet", train)` on a uint8 batch `[B, 3, H, W]`, on its device.

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
    _, mean, std = preprocessing_of("imagenet", None, mean, std)
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


# --------------------------------------------------------------------------------------------------------------------
# In-memory CIFAR: images decoded once, whole batches cropped, flipped and normalised on their device
# --------------------------------------------------------------------------------------------------------------------

CIFAR_IMAGE_SHAPE = (3, 32, 32)
"""Shape (C, H, W) of the images that `decode_cifar_images` stores."""
CIFAR_CROP_PADDING = 4
"""Zero padding of the reference's `RandomCrop(32, padding=4)`."""


def _decode_cifar_batch(images: list) -> dict:
    """`Dataset.map` function of `decode_cifar_images`: PIL images -> raw CHW uint8 bytes."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
    sizes = {array.shape[:2] for array in arrays} - {CIFAR_IMAGE_SHAPE[1:]}
    if sizes:
        raise ValueError(
            f"decode_cifar_images expects 32x32 images (the cifar family) but found sizes {sorted(sizes)}: use the "
            f"per-sample make_transform for other images"
        )
    return {"pixels": [array.transpose(2, 0, 1).tobytes() for array in arrays]}


def decode_cifar_images(dataset: datasets.Dataset, image_column: str = "image") -> datasets.Dataset:
    """Decode every image of a CIFAR split once, into a `pixels` column of raw uint8 bytes (3 x 32 x 32, CHW order).

    `image_column` is replaced; the other columns are kept, so `dataset_labels`, `class_counts` and the class-aware
    sampler read the labels as before. About 3 KB per image (37 MB for CIFAR-10-LT plus its test set); `datasets`
    caches the result next to the source files, so later runs skip the decoding. Pair it with
    `InMemoryCifarTransform`. Raises `ValueError` for images that are not 32x32.
    """
    if image_column not in dataset.column_names:
        raise ValueError(
            f"image column '{image_column}' not found; the dataset has columns {dataset.column_names}: pass "
            f"image_column=<the column holding the images>"
        )
    features = {name: feature for name, feature in dataset.features.items() if name != image_column}
    return dataset.map(
        _decode_cifar_batch,
        batched=True,
        input_columns=image_column,
        remove_columns=image_column,
        features=datasets.Features({**features, "pixels": datasets.Value("binary")}),
        desc="Decoding images once",
    )


def augment_cifar_batch(images: torch.Tensor, train: bool = True) -> torch.Tensor:
    """`make_transform("cifar", train)` on a whole uint8 batch `[B, 3, H, W]`, on the batch's device (CPU or GPU).

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


class InMemoryCifarTransform:
    """Callable for `Dataset.set_transform` on a `decode_cifar_images` split: a batch ->
    `{"pixel_values": [...], "labels": [int]}` without decoding any image.

    train=True: the raw uint8 `(3, 32, 32)` images; the trainer crops, flips and normalises the whole collated batch
    on its device (`MislasTrainer(batch_augmentation=augment_cifar_batch)`). train=False: normalised float32 images,
    equal to `make_transform("cifar", train=False)`, so any `Trainer` or model can consume them.
    """

    def __init__(self, train: bool, label_column: str = "label"):
        self.train = train
        self.label_column = label_column

    def __call__(self, batch: dict) -> dict:
        """Transform one batch (columns as lists) of a decoded `datasets.Dataset`."""
        for column in ("pixels", self.label_column):
            if column not in batch:
                raise ValueError(
                    f"column '{column}' not in the batch (columns {list(batch)}): InMemoryCifarTransform reads "
                    f"splits made by decode_cifar_images"
                )
        raw = bytearray(b"".join(batch["pixels"]))
        images = torch.frombuffer(raw, dtype=torch.uint8).view(-1, *CIFAR_IMAGE_SHAPE)
        pixel_values = images if self.train else augment_cifar_batch(images, train=False)
        return {
            "pixel_values": list(pixel_values.unbind(0)),
            "labels": [int(label) for label in batch[self.label_column]],
        }
