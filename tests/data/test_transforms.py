"""mislas_hf.data.transforms: the per-image transforms of a `Preprocessing` (the `cifar` augmentation's kornia
transforms, the `imagenet` augmentation's uint8 crops), decoding, and the RandomResizedCrop box."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from mislas_hf.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_CROP_RATIO,
    IMAGENET_CROP_SCALE,
    Preprocessing,
    augment_imagenet_batch,
    decode_rgb,
    make_transform,
)

CIFAR = Preprocessing.reference("cifar")
"""The reference's CIFAR preprocessing: 32x32, CIFAR mean/std, the `cifar` augmentation."""
IMAGENET = Preprocessing.reference("imagenet")
"""The reference's ImageNet preprocessing: 224 crop of a 256 resize, ImageNet mean/std, the `imagenet` augmentation."""


# ---------------------------------------------------------------------------------------------------------- cifar


def normalize_numpy(image, mean, std):
    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return ((array - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


@pytest.mark.slow
def test_cifar_eval_transform_is_a_plain_normalisation(cifar10):
    batch = cifar10["test"][:16]
    out = make_transform(CIFAR, train=False, image_column="img")(batch)
    assert out["labels"] == batch["label"]
    for image, pixels in zip(batch["img"], out["pixel_values"]):
        assert pixels.dtype == torch.float32 and pixels.shape == (3, 32, 32)
        np.testing.assert_allclose(pixels.numpy(), normalize_numpy(image, CIFAR_MEAN, CIFAR_STD), atol=1e-5)


@pytest.mark.slow
def test_cifar_train_transform_is_a_random_window_of_the_padded_image(cifar10):
    batch = cifar10["train"][:64]
    torch.manual_seed(0)
    out = make_transform(CIFAR, train=True, image_column="img")(batch)
    mean, std = np.asarray(CIFAR_MEAN)[:, None, None], np.asarray(CIFAR_STD)[:, None, None]
    shifts, flips = set(), []
    for image, pixels in zip(batch["img"], out["pixel_values"]):
        restored = pixels.numpy() * std + mean
        padded = np.pad(np.asarray(image, dtype=np.float64).transpose(2, 0, 1) / 255.0, ((0, 0), (4, 4), (4, 4)))
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.abs(padded[:, dy : dy + 32, dx : dx + 32][..., :: -1 if flip else 1] - restored).max() < 1e-5
        ]
        assert matches, "the output is not a (flipped) 32x32 window of the 4-pixel zero-padded image"
        shifts.add(matches[0][:2])
        flips.append(matches[0][2])
    assert len(shifts) >= 20  # 81 possible offsets, 64 samples
    assert {0, 8} <= {dy for dy, _ in shifts} and {0, 8} <= {dx for _, dx in shifts}  # the full 4-pixel range
    assert 16 <= sum(flips) <= 48  # p = 0.5 per image


def test_transforms_convert_any_mode_to_rgb_and_reject_bad_input():
    gray, rgba = Image.new("L", (32, 32), 100), Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    out = make_transform(CIFAR, train=False)({"image": [gray, rgba], "label": [1, 2]})
    expected_gray = (100 / 255 - np.asarray(CIFAR_MEAN)) / np.asarray(CIFAR_STD)
    expected_rgba = (np.asarray([10, 20, 30]) / 255 - np.asarray(CIFAR_MEAN)) / np.asarray(CIFAR_STD)
    for pixels, expected in zip(out["pixel_values"], (expected_gray, expected_rgba)):
        np.testing.assert_allclose(pixels.numpy(), np.broadcast_to(expected[:, None, None], (3, 32, 32)), atol=1e-5)
    # other sizes are brought to 32x32 (shorter side resized, centre crop), as the cifar image processor does
    halves = np.zeros((80, 48), dtype=np.uint8)
    halves[:, 24:] = 255  # left half black, right half white; 48 wide -> 32 wide, 80 high -> 53 high, crop 32
    out = make_transform(CIFAR, train=False)({"image": [Image.new("L", (40, 24), 100), Image.fromarray(halves)],
                                                 "label": [0, 0]})
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), np.broadcast_to(expected_gray[:, None, None], (3, 32, 32)),
                               atol=1e-5)
    restored = out["pixel_values"][1].numpy() * np.asarray(CIFAR_STD)[:, None, None] + np.asarray(CIFAR_MEAN)[:, None, None]
    assert restored.shape == (3, 32, 32)
    np.testing.assert_allclose(restored[:, :, :14], 0.0, atol=1e-4)
    np.testing.assert_allclose(restored[:, :, 18:], 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="augmentation='svhn'"):
        make_transform(Preprocessing.reference("svhn"), train=True)
    with pytest.raises(ValueError, match="column 'image'"):
        make_transform(CIFAR, train=False)({"img": [gray], "label": [0]})


# ------------------------------------------------------------------------------------------------------- imagenet


def test_imagenet_eval_transform_resizes_256_and_centre_crops_224(gradient_image):
    mean, std = np.asarray(IMAGENET_DEFAULT_MEAN)[:, None, None], np.asarray(IMAGENET_DEFAULT_STD)[:, None, None]
    constant = Image.new("RGB", (300, 200), (10, 128, 250))
    image, linear = gradient_image()
    raw = make_transform(IMAGENET, train=False)({"image": [constant, image], "label": [0, 1]})["pixel_values"]
    assert [(p.dtype, tuple(p.shape)) for p in raw] == [(torch.uint8, (3, 224, 224))] * 2
    out = augment_imagenet_batch(torch.stack(raw), train=False)  # the normalisation, on the device
    expected_constant = (np.asarray([10, 128, 250])[:, None, None] / 255 - mean) / std
    np.testing.assert_allclose(out[0].numpy(), np.broadcast_to(expected_constant, (3, 224, 224)), atol=1e-5)
    # 320x480 -> shorter side 256: 256x384, scale 1.25; centre crop: rows 16..239, columns 80..303;
    # output pixel (i, j) samples the source at ((j + 80 + 0.5) * 1.25 - 0.5, (i + 16 + 0.5) * 1.25 - 0.5)
    i, j = np.mgrid[0:224, 0:224].astype(np.float64)
    expected = (linear((j + 80.5) * 1.25 - 0.5, (i + 16.5) * 1.25 - 0.5) / 255 - mean) / std
    assert np.abs(out[1].numpy() - expected).max() < 0.02  # about 1 grey level: rounding + interpolation


def test_imagenet_train_transform_crops_to_224_on_uint8_and_decodes_any_mode(tmp_path):
    images = [
        Image.new("L", (500, 375), 120),
        Image.new("RGBA", (180, 260), (120, 120, 120, 255)),
        Image.new("RGB", (224, 224), (120,) * 3),
    ]
    encoded = []
    for index, (image, form) in enumerate(zip(images, ("JPEG", "PNG", "JPEG"))):
        image.save(tmp_path / f"{index}.{form.lower()}", form)
        encoded.append(tmp_path / f"{index}.{form.lower()}")
    inputs = [*images, {"bytes": encoded[0].read_bytes(), "path": None}, {"bytes": None, "path": str(encoded[1])},
              str(encoded[2])]
    torch.manual_seed(0)
    out = make_transform(IMAGENET, train=True)({"image": inputs, "label": [0, 1, 2, 3, 4, 5]})
    assert out["labels"] == [0, 1, 2, 3, 4, 5]
    for pixels in out["pixel_values"]:
        # a constant grey image stays exactly that grey under crop, antialiased resize and flip, as uint8
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
        assert torch.equal(pixels, torch.full((3, 224, 224), 120, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        make_transform(IMAGENET, train=True)({"image": [str(tmp_path / "missing.jpg")], "label": [0]})
    with pytest.raises(ValueError, match="column 'image'"):
        make_transform(IMAGENET, train=False)({"img": images, "label": [0, 1, 2]})


def _encoded(image: Image.Image, form: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, form, **options)
    return buffer.getvalue()


def test_decode_rgb_equals_pil_for_jpeg_modes_and_other_formats():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    cases = [
        _encoded(picture, "JPEG", quality=90),
        _encoded(picture.convert("L"), "JPEG"),
        _encoded(picture.convert("CMYK"), "JPEG"),
        _encoded(picture.convert("RGBA"), "PNG"),
        _encoded(picture.convert("P"), "PNG"),
        _encoded(picture, "WEBP", lossless=True),
    ]
    for data in cases:
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(decode_rgb(data).numpy(), expected)
    with pytest.raises(ValueError, match="cannot decode an image from a int"):
        decode_rgb(3)


def position_coded_jpeg(width=320, height=240) -> bytes:
    """A JPEG whose red channel is 255 * x / (width - 1) and green 255 * y / (height - 1) (x, y: pixel position)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    coded = np.stack([255 * x / (width - 1), 255 * y / (height - 1), np.full_like(x, 128)], axis=-1)
    return _encoded(Image.fromarray(np.round(coded).astype(np.uint8)), "JPEG", quality=95, subsampling=0)


def crop_geometry(pixels: np.ndarray, width: int, height: int):
    """(left, top, crop width, crop height, flipped) in source pixels of a 224x224 crop of `position_coded_jpeg`,
    from straight-line fits of the red code along the columns and the green code along the rows."""
    size = pixels.shape[-1]
    positions = np.arange(8, size - 8)  # away from the antialiasing filter's border
    red_slope, red_at_0 = np.polyfit(positions, pixels[0].mean(axis=0)[positions], 1)
    green_slope, green_at_0 = np.polyfit(positions, pixels[1].mean(axis=1)[positions], 1)
    # output column j samples source x = left + (j + 0.5) * crop_width / size - 0.5 (mirrored when flipped)
    crop_width = abs(red_slope) * size * (width - 1) / 255
    crop_height = green_slope * size * (height - 1) / 255
    flipped = red_slope < 0
    x_first = (red_at_0 + (red_slope * (size - 1) if flipped else 0)) * (width - 1) / 255  # centre of column 0
    left = x_first + 0.5 - 0.5 * crop_width / size
    top = green_at_0 * (height - 1) / 255 + 0.5 - 0.5 * crop_height / size
    return left, top, crop_width, crop_height, flipped


def test_imagenet_train_crops_cover_the_reference_scale_and_ratio_ranges_and_flip_half():
    """torchvision's RandomResizedCrop(224) of the reference: area fraction in [0.08, 1] drawn uniformly (before
    the fit-in-image rejection), aspect ratio w/h in [3/4, 4/3] log-uniformly; flips with p = 0.5."""
    width, height, draws = 320, 240, 400
    data = {"bytes": position_coded_jpeg(width, height), "path": None}
    torch.manual_seed(0)
    out = make_transform(IMAGENET, train=True)({"image": [data] * draws, "label": [0] * draws})["pixel_values"]
    geometry = np.array([crop_geometry(pixels.double().numpy(), width, height) for pixels in out])
    left, top, crop_width, crop_height, flipped = geometry.T
    area, ratio = crop_width * crop_height / (width * height), crop_width / crop_height
    assert area.min() > 0.08 * 0.95 and area.max() < 1.03
    assert ratio.min() > 0.75 * 0.97 and ratio.max() < 4 / 3 * 1.03
    assert left.min() > -1.5 and top.min() > -1.5  # the crop lies inside the image
    assert (left + crop_width).max() < width + 1.5 and (top + crop_height).max() < height + 1.5
    # the full ranges are used: small crops are common, both extreme ratios occur, positions vary
    assert area.min() < 0.12 and np.mean(area < 0.3) > 0.15 and np.mean(area > 0.7) > 0.1
    assert ratio.min() < 0.8 and ratio.max() > 1.25 and abs(np.mean(np.log(ratio))) < 0.05
    assert np.ptp(left) > 100 and np.ptp(top) > 60
    assert abs(flipped.mean() - 0.5) < 4 * 0.5 / np.sqrt(draws)
    assert abs(flipped[area < 0.5].mean() - flipped[area >= 0.5].mean()) < 0.2  # flips independent of the crop


@pytest.mark.parametrize(("height", "width"), [(375, 500), (100, 600)])
def test_random_resized_crop_box_draws_as_torchvision_get_params(height, width):
    """The distribution of torchvision's RandomResizedCrop.get_params (scale (0.08, 1), ratio (3/4, 4/3)) on the same
    image size: area fraction, log aspect ratio, relative position and the rate of the central fallback box agree
    within 4 standard errors; every box lies inside the image. 100 x 600 falls back in about a third of the draws."""
    from torchvision.transforms import RandomResizedCrop

    from mislas_hf.data.transforms import random_resized_crop_box

    draws = 3000
    image = torch.empty(3, height, width)
    torch.manual_seed(0)
    ours = np.array([random_resized_crop_box(height, width) for _ in range(draws)], dtype=np.float64)
    theirs = np.array(
        [RandomResizedCrop.get_params(image, IMAGENET_CROP_SCALE, IMAGENET_CROP_RATIO) for _ in range(draws)],
        dtype=np.float64,
    )
    for boxes in (ours, theirs):
        top, left, box_height, box_width = boxes.T
        assert top.min() >= 0 and left.min() >= 0 and box_height.min() >= 1 and box_width.min() >= 1
        assert (top + box_height).max() <= height and (left + box_width).max() <= width

    def statistics(boxes):
        top, left, box_height, box_width = boxes.T
        centred = (top == (height - box_height) // 2) & (left == (width - box_width) // 2)
        fallback = centred & ((box_height == height) | (box_width == width))
        return {
            "area": box_height * box_width / (height * width),
            "log_ratio": np.log(box_width / box_height),
            "top": top / np.maximum(height - box_height, 1),
            "left": left / np.maximum(width - box_width, 1),
            "fallback": fallback.astype(np.float64),
        }

    ours_statistics, theirs_statistics = statistics(ours), statistics(theirs)
    for name in ours_statistics:
        a, b = ours_statistics[name], theirs_statistics[name]
        error = np.sqrt((a.var() + b.var()) / draws) + 1e-9
        assert abs(a.mean() - b.mean()) < 4 * error, name
    if width / height > 4 / 3:
        assert 0.2 < ours_statistics["fallback"].mean() < 0.5
