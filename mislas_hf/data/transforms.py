"""The reference's image transforms per family ("cifar", "imagenet"), built on kornia and applied lazily with
`Dataset.set_transform`; and for CIFAR a faster path: images decoded once into memory (`decode_cifar_images`) and
whole batches cropped, flipped and normalised on their device (`augment_cifar_batch`), with the same augmentation
distribution."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import kornia.augmentation as K
import numpy as np
import torch

from .image_processing import CIFAR_MEAN, CIFAR_STD, RESIZE_RATIO, preprocessing_of

# --------------------------------------------------------------------------------------------------------------------
# Transforms (training / evaluation)
# --------------------------------------------------------------------------------------------------------------------


def _to_float_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) as an RGB float32 CHW tensor in [0, 1], via a uint8 numpy array."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


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
        for column in (self.image_column, self.label_column):
            if column not in batch:
                raise ValueError(
                    f"column '{column}' not in the batch (columns {list(batch)}): pass the dataset's column names "
                    f"as image_column/label_column of make_transform"
                )
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


def make_transform(
    family: str,
    train: bool,
    image_column: str = "image",
    label_column: str = "label",
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BatchImageTransform:
    """The reference's image transform of `family` ("cifar" or "imagenet"), for `Dataset.set_transform`.

    cifar (reference `datasets/cifar10.py`): train = RandomCrop `image_size` (32) with 4-pixel zero padding,
    horizontal flip (p=0.5), normalise with `CIFAR_MEAN`/`CIFAR_STD`; eval = normalise only. Images of another size
    are first brought to `image_size` (`FitToSquare`: shorter side resized, centre crop), as the image processor does.
    imagenet (reference `datasets/imagenet.py`; also used for Places-LT and iNaturalist 2018): train =
    RandomResizedCrop `image_size` (224; scale (0.08, 1), ratio (3/4, 4/3)), horizontal flip,
    ColorJitter(0.4, 0.4, 0.4, hue 0), normalise; eval = resize the shorter side to `image_size * RESIZE_RATIO`
    (256; antialiased bilinear, as PIL does), centre crop `image_size`, normalise. kornia's RandomResizedCrop does
    not antialias. `mean`/`std` default to the family's (`DEFAULT_NORMALIZATION`); iNaturalist 2018 passes its own
    (`INATURALIST_MEAN`/`INATURALIST_STD`, as the reference). Images of any PIL mode are converted to RGB.
    """
    size, mean, std = preprocessing_of(family, image_size, mean, std)
    normalize = K.Normalize(torch.tensor(mean), torch.tensor(std))
    if family == "cifar":
        per_image = FitToSquare(size)
        if train:
            batch_ops = torch.nn.Sequential(
                K.RandomCrop((size, size), padding=4, fill=0.0), K.RandomHorizontalFlip(p=0.5), normalize
            )
        else:
            batch_ops = torch.nn.Sequential(normalize)
    elif train:
        per_image = K.RandomResizedCrop((size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), align_corners=False)
        batch_ops = torch.nn.Sequential(
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, p=1.0),
            normalize,
        )
    else:
        per_image = torch.nn.Sequential(
            K.Resize(round(size * RESIZE_RATIO), side="short", antialias=True, align_corners=False),
            K.CenterCrop(size),
        )
        batch_ops = torch.nn.Sequential(normalize)
    return BatchImageTransform(per_image, batch_ops, image_column, label_column)


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
