"""mislas_hf.scripts.data_setup on real CIFAR-10-LT: a pretrained backbone other than the paper's ResNets sees a
paper benchmark's images as its image processor prepares them (input size, mean/std, filter), and the in-memory
CIFAR path, which implements 32x32 inputs with CIFAR's mean/std only, is left for the per-sample transforms
whenever the input differs."""

import numpy as np
import pytest
import torch

from mislas_hf.data import CIFAR_MEAN, CIFAR_STD, Preprocessing
from mislas_hf.scripts.arguments import parse_arguments
from mislas_hf.scripts.data_setup import load_splits, train_batch_augmentation
from mislas_hf.scripts.model_setup import plan_model


def splits_of(cifar10_dir, tmp_path, *flags):
    """The benchmark, training and test splits and training batch augmentation of a CIFAR-10-LT run."""
    model_args, data_args, args, _ = parse_arguments([
        "--dataset", "cifar10-lt", "--dataset_name", str(cifar10_dir), "--output_dir", str(tmp_path),
        "--max_train_samples", "40", "--max_eval_samples", "20", "--report_to", "none", *flags,
    ])
    benchmark, _, train, _, test = load_splits(data_args, args, plan_model(model_args))
    return benchmark, train, test, train_batch_augmentation(data_args, benchmark)


def raw_pixels(split, row: int) -> torch.Tensor:
    """The image of `row` of `split` as stored, a float32 `(3, H, W)` tensor of 0-255 values."""
    image = split.with_format(None)[row]["image"].convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)


def raw_pixels_of_decoded(split, row: int) -> torch.Tensor:
    """The image of `row` of a split `decode_cifar_images` made, a float32 `(3, 32, 32)` tensor of 0-255 values."""
    pixels = split.with_format(None)[row]["pixels"]
    return torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(3, 32, 32).float()


def test_a_pretrained_backbone_sees_the_benchmark_as_its_processor_prepares_images(
    cifar10_dir, tmp_path, tiny_vision_checkpoint
):
    """The tiny ViT's processor (32 px, mean = std = 0.5, bilinear): the benchmark keeps its `cifar` augmentation and
    whole-image geometry and takes the rest; a test image is (pixels / 255 - 0.5) / 0.5, made per sample."""
    benchmark, train, test, augmentation = splits_of(
        cifar10_dir, tmp_path, "--model_name_or_path", str(tiny_vision_checkpoint("vit"))
    )
    assert benchmark.preprocessing == Preprocessing("cifar", 32, 1.0, (0.5,) * 3, (0.5,) * 3, "bilinear")
    assert augmentation is None and "pixels" not in train.column_names  # not the in-memory path
    expected = (raw_pixels(test, 0) / 255 - 0.5) / 0.5
    torch.testing.assert_close(test[0]["pixel_values"], expected, atol=1e-6, rtol=0)


def test_another_input_size_leaves_the_in_memory_path(cifar10_dir, tmp_path):
    """A new ResNet-32 at --image_size 48: the per-sample transform upsamples to 48 x 48 (the in-memory path would
    silently keep 32 x 32); at the default 32 px the in-memory path stays. Asking for in-memory images at 48 px is
    refused, saying why."""
    benchmark, train, test, augmentation = splits_of(cifar10_dir, tmp_path, "--image_size", "48")
    assert benchmark.preprocessing == Preprocessing.reference("cifar", image_size=48)
    assert augmentation is None and test[0]["pixel_values"].shape == (3, 48, 48)
    assert train[0]["pixel_values"].dtype == torch.float32 and train[0]["pixel_values"].shape == (3, 48, 48)
    _, train, test, augmentation = splits_of(cifar10_dir, tmp_path)
    assert augmentation is not None and train[0]["pixel_values"].dtype == torch.uint8  # in memory, raw
    mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
    torch.testing.assert_close(test[0]["pixel_values"], (raw_pixels_of_decoded(test, 0) / 255 - mean) / std,
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"in_memory_images augments 32x32 CIFAR images .* this run's input is 48 px"):
        splits_of(cifar10_dir, tmp_path, "--image_size", "48", "--in_memory_images", "true")

