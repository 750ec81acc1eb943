"""mislas_hf.data.in_memory: CIFAR images decoded once into raw uint8 bytes and read back without decoding."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from mislas_hf.data import (
    InMemoryCifarTransform,
    Preprocessing,
    augment_cifar_batch,
    dataset_labels,
    decode_cifar_images,
    make_transform,
)

CIFAR = Preprocessing.reference("cifar")
"""The reference's CIFAR preprocessing: 32x32, CIFAR mean/std, the `cifar` augmentation."""


def test_decode_cifar_images_keeps_the_raw_pixels_and_the_labels(cifar_sample):
    source, decoded = cifar_sample
    assert set(decoded.column_names) == {"label", "pixels"}
    assert dataset_labels(decoded) == source["label"]
    batch = decoded.with_transform(InMemoryCifarTransform(train=True))[:64]
    assert batch["labels"] == source["label"]
    for image, pixels in zip(source["img"], batch["pixel_values"]):
        assert pixels.dtype == torch.uint8
        np.testing.assert_array_equal(pixels.numpy(), np.asarray(image).transpose(2, 0, 1))


def test_in_memory_eval_transform_equals_the_per_sample_eval_transform(cifar10):
    source = cifar10["test"].select(range(64))
    expected = make_transform(CIFAR, train=False, image_column="img")(source[:64])["pixel_values"]
    out = decode_cifar_images(source, image_column="img").with_transform(InMemoryCifarTransform(train=False))[:64]
    assert out["labels"] == source["label"]
    np.testing.assert_allclose(
        torch.stack(out["pixel_values"]).numpy(), torch.stack(expected).numpy(), rtol=0, atol=1e-6
    )


def test_in_memory_path_converts_modes_and_rejects_bad_input():
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    gray = datasets.Dataset.from_dict({"image": [Image.new("L", (32, 32), 100)], "label": [1]}, features=features)
    pixels = decode_cifar_images(gray).with_transform(InMemoryCifarTransform(train=True))[0]["pixel_values"]
    assert torch.equal(pixels, torch.full((3, 32, 32), 100, dtype=torch.uint8))
    large = datasets.Dataset.from_dict({"image": [Image.new("RGB", (40, 40))], "label": [0]}, features=features)
    with pytest.raises(ValueError, match="32x32"):
        decode_cifar_images(large)
    with pytest.raises(ValueError, match="image column 'img'"):
        decode_cifar_images(gray, image_column="img")
    with pytest.raises(ValueError, match="uint8"):
        augment_cifar_batch(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="decode_cifar_images"):
        gray.with_transform(InMemoryCifarTransform(train=True))[0]
