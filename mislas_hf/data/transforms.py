"""The per-image part of the reference's transforms of a `Preprocessing`, run in the DataLoader workers through
`Dataset.set_transform` (`make_transform`).

* `imagenet` augmentation (ImageNet-LT, Places-LT, iNaturalist 2018, own images): `ImageNetTransform` decodes each
  image (torchvision `decode_jpeg` for JPEG, PIL otherwise) and, in training, crops and flips it on uint8; the batch
  part (colour jitter, normalisation) runs on the training device (`device_augment.augment_imagenet_batch`).
  Evaluation images leave the workers resized and centre-cropped, as uint8 as well.
* `cifar` augmentation: kornia per-sample transforms (`BatchImageTransform`); `in_memory` has a faster path for the
  32x32 CIFAR benchmarks.
"""

from __future__ import annotations

import io
import math
import os

import datasets
import kornia.augmentation as K
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from .preprocessing import Preprocessing


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


TENSOR_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST_EXACT,  # PIL's nearest: the source pixel under each output pixel's centre
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
"""The `Preprocessing.resample` filters that torchvision resizes tensors with as PIL resizes images (antialiased when
downsizing), with torchvision's modes; PIL's others (box, hamming, lanczos) resize through PIL."""
KORNIA_FILTERS = ("bilinear", "bicubic")
"""The filters `FitToSquare` resizes float images with through kornia (antialiased)."""


def resize_image(image: torch.Tensor, size: int | list[int], resample: str) -> torch.Tensor:
    """A uint8 image tensor (`(C, H, W)` or `(1, C, H, W)`) resized to `size` (an int: the shorter side's length; a
    pair: height and width) with PIL's filter `resample` (a name of `preprocessing.RESAMPLING`): nearest, bilinear
    and bicubic by torchvision on the tensor's device (`TENSOR_INTERPOLATION`, antialiased; fastest in channels-last
    memory), box, hamming and lanczos through PIL, which alone implements them (on the CPU; the result comes back to
    the tensor's device)."""
    if resample in TENSOR_INTERPOLATION:
        return TF.resize(image, size, TENSOR_INTERPOLATION[resample], antialias=True)
    batched = image.dim() == 4
    picture = TF.to_pil_image((image[0] if batched else image).cpu())
    resized = TF.pil_to_tensor(TF.resize(picture, size, InterpolationMode(resample))).to(image.device)
    return resized[None] if batched else resized


class FitToSquare(torch.nn.Module):
    """Resize the shorter side of a `(1, C, H, W)` float image in [0, 1] to `size` and centre-crop `size x size`, as
    the `cifar` image processor does; an image already `size x size` passes unchanged (the CIFAR benchmarks' 32x32
    images). Bilinear and bicubic resize with kornia (antialiased); PIL's other filters (`resize_image`) on the
    image's uint8 pixels, which `_to_float_tensor` made. Lets the CIFAR ResNet-32 train on your own images of any
    size, and a pretrained backbone see CIFAR's images at its own input size."""

    def __init__(self, size: int, resample: str = "bilinear"):
        super().__init__()
        self.size = size
        self.resample = resample
        self.resize_and_crop = None
        if resample in KORNIA_FILTERS:
            self.resize_and_crop = torch.nn.Sequential(
                K.Resize(size, side="short", resample=resample, antialias=True, align_corners=False),
                K.CenterCrop(size),
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image
        if self.resize_and_crop is not None:
            return self.resize_and_crop(image)
        pixels = image.mul(255).round_().to(torch.uint8)
        resized = TF.center_crop(resize_image(pixels, self.size, self.resample), self.size)
        return resized.float().div_(255.0)


IMAGENET_CROP_SCALE = (0.08, 1.0)
"""Range of the crop's area as a fraction of the image's, reference `RandomResizedCrop(224)` (torchvision's default)."""
IMAGENET_CROP_RATIO = (3 / 4, 4 / 3)
"""Range of the crop's aspect ratio (width / height), drawn log-uniformly as torchvision does."""
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
    """Callable for `Dataset.set_transform`, the per-image part of the `imagenet` augmentation: a batch dict ->
    `{"pixel_values": [(3, size, size) tensors], "labels": [int]}`, run in the DataLoader workers.

    train: decode (`decode_rgb`), torchvision's `RandomResizedCrop(size, scale=IMAGENET_CROP_SCALE,
    ratio=IMAGENET_CROP_RATIO)` (the box from `random_resized_crop_box`) resized as PIL resizes with the filter
    `resample` (`resize_image`), horizontal flip with p = 0.5. eval: decode, resize the shorter side to `resize_size`
    (antialiased), centre crop `size`, as `Preprocessing.image_processor()` does. The pixel values stay
    uint8 (a quarter of float32's bytes between the workers and the main process); `augment_imagenet_batch(batch,
    train)` finishes each collated batch on the device (training: colour jitter; both: normalisation with the
    benchmark's mean/std). Images are resized in channels-last memory (torch's fast uint8 path).
    Randomness comes from torch's global RNG (DataLoader workers seed it per worker). Build it with `make_transform`.
    """

    def __init__(
        self,
        train: bool,
        preprocessing: Preprocessing,
        image_column: str = "image",
        label_column: str = "label",
    ):
        self.train = train
        self.image_size = preprocessing.image_size
        self.resize_size = preprocessing.resize_size
        self.resample = preprocessing.resample
        self.image_column = image_column
        self.label_column = label_column

    def _train_geometry(self, image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = random_resized_crop_box(*image.shape[-2:])
        crop = image[None, :, top : top + height, left : left + width].contiguous(memory_format=torch.channels_last)
        crop = resize_image(crop, [self.image_size, self.image_size], self.resample)[0]
        return TF.horizontal_flip(crop) if torch.rand(1).item() < 0.5 else crop

    def _eval_geometry(self, image: torch.Tensor) -> torch.Tensor:
        image = image[None].contiguous(memory_format=torch.channels_last)
        resized = resize_image(image, self.resize_size, self.resample)
        return TF.center_crop(resized, self.image_size)[0]

    def __call__(self, batch: dict) -> dict:
        """Transform one batch (columns as lists) of a `datasets.Dataset`."""
        _check_columns(batch, self.image_column, self.label_column)
        geometry = self._train_geometry if self.train else self._eval_geometry
        return {
            "pixel_values": [geometry(decode_rgb(image)) for image in batch[self.image_column]],
            "labels": [int(label) for label in batch[self.label_column]],
        }


def make_transform(
    preprocessing: Preprocessing,
    train: bool,
    image_column: str = "image",
    label_column: str = "label",
) -> BatchImageTransform | ImageNetTransform:
    """The reference's image transform of `preprocessing`, for `Dataset.set_transform`.

    `cifar` augmentation (reference `datasets/cifar10.py`): train = RandomCrop `image_size` (32) with 4-pixel zero
    padding, horizontal flip (p=0.5), normalise with the preprocessing's mean/std; eval = normalise only. Images of
    another size are first brought to `image_size` (`FitToSquare`: shorter side resized, centre crop), as the image
    processor does. Float32 output.
    `imagenet` augmentation (reference `datasets/imagenet.py`; also Places-LT and iNaturalist 2018):
    `ImageNetTransform`, uint8 output. train = RandomResizedCrop `image_size` (224; scale (0.08, 1), ratio (3/4,
    4/3)), horizontal flip; eval = resize the shorter side to `resize_size` (256), centre crop `image_size`. Pass
    `augment_imagenet_batch` with the preprocessing's mean/std (ColorJitter(0.4, 0.4, 0.4, hue 0) per image in
    training, normalisation) as the trainer's `batch_augmentation`.
    Images of any PIL mode are converted to RGB.
    """
    if preprocessing.augmentation == "imagenet":
        return ImageNetTransform(train, preprocessing, image_column, label_column)
    size = preprocessing.image_size
    normalize = K.Normalize(torch.tensor(preprocessing.mean), torch.tensor(preprocessing.std))
    if train:
        batch_ops = torch.nn.Sequential(
            K.RandomCrop((size, size), padding=4, fill=0.0), K.RandomHorizontalFlip(p=0.5), normalize
        )
    else:
        batch_ops = torch.nn.Sequential(normalize)
    return BatchImageTransform(FitToSquare(size, preprocessing.resample), batch_ops, image_column, label_column)
