"""mislas_hf.data.device_augment: the batch part of the augmentation on the training device (the `imagenet`
augmentation's colour jitter and normalisation, the whole `cifar` augmentation of in-memory batches)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from mislas_hf.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    InMemoryCifarTransform,
    Preprocessing,
    augment_cifar_batch,
    augment_imagenet_batch,
    make_transform,
)

CIFAR = Preprocessing.reference("cifar")
"""The reference's CIFAR preprocessing: 32x32, CIFAR mean/std, the `cifar` augmentation."""


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def unnormalize(pixel_values: torch.Tensor) -> np.ndarray:
    """Normalised float pixel values [B, 3, H, W] back to [0, 255], in float64."""
    mean, std = np.asarray(CIFAR_MEAN)[:, None, None], np.asarray(CIFAR_STD)[:, None, None]
    return (pixel_values.cpu().double().numpy() * std + mean) * 255


# ---------------------------------------------------------------------- imagenet: colour jitter and normalisation


def test_augment_imagenet_batch_jitters_each_image_by_its_own_factors_in_the_reference_ranges():
    """Coloured images in a range where no adjustment clamps: then brightness b, contrast c and saturation s commute
    and give, per pixel and channel, b * (s * c * x + (1 - s) * c * grey(x) + (1 - c) * mean grey), which a least
    squares fit per image inverts to (b, c, s) after undoing the ImageNet normalisation."""
    n, size = 512, 12
    rng = np.random.default_rng(0)
    images = rng.integers(50, 116, (n, 3, size, size), dtype=np.uint8)
    torch.manual_seed(0)
    out = augment_imagenet_batch(torch.from_numpy(images), train=True).double().numpy()
    mean, std = np.asarray([0.485, 0.456, 0.406])[:, None, None], np.asarray([0.229, 0.224, 0.225])[:, None, None]
    restored = out * std + mean
    x = images / 255.0
    grey = np.einsum("nchw,c->nhw", x, [0.2989, 0.587, 0.114])[:, None].repeat(3, axis=1)
    mean_grey = grey.mean(axis=(1, 2, 3), keepdims=True) * np.ones_like(x)
    factors, residuals = [], []
    for k in range(n):
        design = np.stack([x[k].ravel(), grey[k].ravel(), mean_grey[k].ravel()], axis=1)
        (a, b_, c_), *_ = np.linalg.lstsq(design, restored[k].ravel(), rcond=None)
        residuals.append(np.abs(design @ [a, b_, c_] - restored[k].ravel()).max())
        brightness = a + b_ + c_
        factors.append((brightness, (a + b_) / brightness, a / (a + b_)))
    factors = np.asarray(factors)
    assert max(residuals) < 1e-3  # exactly this form: no hue shift, no other operation
    assert factors.min() > 0.6 - 1e-3 and factors.max() < 1.4 + 1e-3
    for column in factors.T:  # each factor uniform on [0.6, 1.4]: mean 1, std 0.8 / sqrt(12)
        assert column.min() < 0.62 and column.max() > 1.38
        assert abs(column.mean() - 1) < 4 * 0.231 / np.sqrt(n) and abs(column.std() - 0.231) < 0.02
    assert np.abs(np.corrcoef(factors.T) - np.eye(3)).max() < 0.15  # drawn independently, per image
    assert augment_imagenet_batch(torch.from_numpy(images[:4]), train=True).dtype == torch.float32
    with pytest.raises(ValueError, match="uint8"):
        augment_imagenet_batch(torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize("per_image", [True, False])
def test_jitter_and_normalize_equals_torchvision_colour_adjustments_per_image(per_image):
    """Fixed factors (many above 1, so the clamps act) and orders: each image equals torchvision's adjust_brightness /
    adjust_contrast / adjust_saturation on the float image in [0, 1], in that image's order, then Normalize; both the
    per-image (CPU) and the grouped (GPU) path."""
    from torchvision.transforms.v2 import functional as F

    from mislas_hf.data.device_augment import _normalization_affine, jitter_and_normalize

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 10, 14), dtype=torch.uint8, generator=generator)
    images[:4] = torch.randint(200, 256, (4, 3, 10, 14), dtype=torch.uint8, generator=generator)  # bright: clamps
    factors = torch.empty(12, 3).uniform_(0.6, 1.4, generator=generator)
    factors[0] = torch.tensor([1.4, 0.6, 1.0])
    orders = torch.stack([torch.randperm(3, generator=generator) for _ in range(12)])
    scale, shift = _normalization_affine(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    got = jitter_and_normalize(images, factors, orders, scale, shift, per_image=per_image)
    adjustments = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for image, image_factors, order, result in zip(images, factors, orders, got):
        expected = image.double() / 255
        for adjustment in order.tolist():
            expected = adjustments[adjustment](expected, image_factors[adjustment].item())
        expected = F.normalize(expected, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        torch.testing.assert_close(result.double(), expected, atol=1e-5, rtol=0)
    assert len({tuple(order) for order in orders.tolist()}) > 3  # several orders, grouped apart


# ------------------------------------------------------------------- cifar: padded crop and flip of whole batches


@pytest.mark.parametrize("device", DEVICES)
def test_augment_cifar_batch_is_a_window_of_the_zero_padded_image(cifar_sample, device):
    _, decoded = cifar_sample
    images = torch.stack(decoded.with_transform(InMemoryCifarTransform(train=True))[:64]["pixel_values"])
    torch.manual_seed(0)
    out = augment_cifar_batch(images.to(device), train=True)
    assert out.dtype == torch.float32 and out.device.type == device
    restored = unnormalize(out)
    padded = np.pad(images.numpy().astype(np.float64), ((0, 0), (0, 0), (4, 4), (4, 4)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (32, 32), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5)
    shifts, flips = set(), []
    for image_windows, pixels in zip(windows, restored):  # image_windows: [9, 9, 3, 32, 32]
        errors = [np.abs(image_windows[..., ::step] - pixels).max(axis=(2, 3, 4)) for step in (1, -1)]
        matches = np.argwhere(np.stack(errors) < 1e-3)  # (flip, dy, dx)
        assert len(matches), "the output is not a (flipped) 32x32 window of the 4-pixel zero-padded image"
        flip, dy, dx = matches[0]
        shifts.add((dy, dx))
        flips.append(flip)
    assert len(shifts) >= 20  # 81 possible offsets, 64 images
    assert {0, 8} <= {dy for dy, _ in shifts} and {0, 8} <= {dx for _, dx in shifts}
    assert 16 <= sum(flips) <= 48  # p = 0.5 per image


@pytest.mark.parametrize("path", ["in_memory", "per_sample"])
def test_cifar_train_augmentation_draws_each_image_a_uniform_offset_and_a_fair_flip(path):
    """Position-coded images (channel 0 = row + 1, channel 1 = column + 1), through `augment_cifar_batch` (in-memory
    path) and `make_transform(CIFAR, train=True)` (per-sample path): every output must be exactly the window of
    the 4-pixel zero-padded image its decoded offset and flip say (a 32x32 crop), offsets uniform over the 9 x 9
    positions, flips with p = 0.5."""
    n = 4000
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    coded = np.stack([rows + 1, cols + 1, np.full_like(rows, 200)]).astype(np.uint8)
    torch.manual_seed(1)
    if path == "in_memory":
        augmented = augment_cifar_batch(torch.from_numpy(coded).expand(n, 3, 32, 32).contiguous())
    else:
        picture = Image.fromarray(coded.transpose(1, 2, 0))
        augmented = make_transform(CIFAR, train=True)({"image": [picture] * n, "label": [0] * n})["pixel_values"]
        augmented = torch.stack(augmented)
    out = np.rint(unnormalize(augmented)).astype(np.int16)
    dy = out[:, 0, 16, 16] - 13  # output row 16 is padded row 16 + dy, i.e. image row 12 + dy
    flip = out[:, 1, 16, 17] < out[:, 1, 16, 16]
    dx = out[:, 1, 16, 16] - np.where(flip, 12, 13)  # a flipped output column j is padded column dx + 31 - j
    padded = np.pad(coded.astype(np.int16), ((0, 0), (4, 4), (4, 4)))
    window_rows = dy[:, None] + np.arange(32)
    window_cols = dx[:, None] + np.where(flip[:, None], np.arange(31, -1, -1), np.arange(32))
    expected = padded[:, window_rows[:, :, None], window_cols[:, None, :]].transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(out, expected)
    counts = np.bincount(dy * 9 + dx, minlength=81)
    assert counts.size == 81 and dy.min() >= 0 and dx.min() >= 0
    chi_square = ((counts - n / 81) ** 2 / (n / 81)).sum()
    assert chi_square < 125  # 80 degrees of freedom: P(chi2 > 125) < 0.001
    assert abs(flip.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    assert abs(flip[dx < 4].mean() - flip[dx > 4].mean()) < 0.06  # flips independent of the offsets
