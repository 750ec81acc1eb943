"""The in-memory path of the 32x32 CIFAR benchmarks: every image decoded once into raw uint8 bytes
(`decode_cifar_images`), read back without decoding (`InMemoryCifarTransform`), and augmented as whole batches on
the training device (`device_augment.augment_cifar_batch`), with the augmentation distribution of the per-sample
`cifar` transform."""

from __future__ import annotations

import datasets
import numpy as np
import torch

from .device_augment import augment_cifar_batch

CIFAR_IMAGE_SHAPE = (3, 32, 32)
"""Shape (C, H, W) of the images that `decode_cifar_images` stores."""


def _decode_cifar_batch(images: list) -> dict:
    """`Dataset.map` function of `decode_cifar_images`: PIL images -> raw CHW uint8 bytes."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
    sizes = {array.shape[:2] for array in arrays} - {CIFAR_IMAGE_SHAPE[1:]}
    if sizes:
        raise ValueError(
            f"decode_cifar_images expects 32x32 images (CIFAR) but found sizes {sorted(sizes)}: use the "
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


class InMemoryCifarTransform:
    """Callable for `Dataset.set_transform` on a `decode_cifar_images` split: a batch ->
    `{"pixel_values": [...], "labels": [int]}` without decoding any image.

    train=True: the raw uint8 `(3, 32, 32)` images; the trainer crops, flips and normalises the whole collated batch
    on its device (`MislasTrainer(batch_augmentation=augment_cifar_batch)`). train=False: normalised float32 images,
    equal to the `cifar` evaluation transform of `make_transform`, so any `Trainer` or model can consume them.
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
