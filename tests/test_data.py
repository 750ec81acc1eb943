"""mislas_hf.data: long-tailed CIFAR cut, split lists, label reading, transforms, image processors, benchmarks."""

import collections
import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from mislas_hf.data import (
    reference_class_order,
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_CROP_RATIO,
    IMAGENET_CROP_SCALE,
    InMemoryCifarTransform,
    augment_cifar_batch,
    augment_imagenet_batch,
    class_counts,
    dataset_labels,
    decode_cifar_images,
    decode_rgb,
    load_benchmark,
    load_list_file_dataset,
    long_tailed_class_counts,
    make_image_processor,
    make_long_tailed,
    make_transform,
    stratified_holdout,
    subset,
)

CIFAR10_LT_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="module")
def cifar10(cifar10_dir) -> datasets.DatasetDict:
    """The real CIFAR-10 (columns img, label), read from the parquet folder."""
    return datasets.load_dataset(str(cifar10_dir))


def labels_dataset(labels, num_classes=None) -> datasets.Dataset:
    """An in-memory dataset with only a ClassLabel column."""
    names = [str(c) for c in range(num_classes or max(labels) + 1)]
    return datasets.Dataset.from_dict(
        {"label": list(labels)}, features=datasets.Features({"label": datasets.ClassLabel(names=names)})
    )


def reference_counts(n_max, num_classes, imb_factor):
    """Per-class counts written as the reference does, with its imb_factor = 1 / beta (0.01 for beta = 100)."""
    return [int(n_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def reference_long_tailed_rows(labels, imb_factor, seed=0):
    """Rows the reference keeps: np.random.seed, then per class np.random.shuffle and the first n_c (global RNG)."""
    targets = np.asarray(labels)
    classes = np.unique(targets)
    saved = np.random.get_state()
    np.random.seed(seed)
    rows = []
    for c, n in zip(classes, reference_counts(len(targets) / len(classes), len(classes), imb_factor)):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        rows.extend(idx[:n].tolist())
    np.random.set_state(saved)
    return rows


# ----------------------------------------------------------------------------------------------- long-tailed counts


@pytest.mark.parametrize(
    "num_classes, n_max, factor, total",
    [(10, 5000, 100, 12406), (10, 5000, 50, 13996), (10, 5000, 10, 20431),
     (100, 500, 100, 10847), (100, 500, 50, 12608), (100, 500, 10, 19573)],
)
def test_long_tailed_class_counts_match_reference_and_known_totals(num_classes, n_max, factor, total):
    counts = long_tailed_class_counts(n_max, num_classes, factor)
    assert counts == reference_counts(n_max, num_classes, 1 / factor)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // factor


def test_long_tailed_class_counts_step_and_errors():
    assert long_tailed_class_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert long_tailed_class_counts(500, 5, 10, "step") == [500, 500, 50, 50, 50]
    assert long_tailed_class_counts(500, 4, 1) == [500] * 4
    with pytest.raises(ValueError, match="imbalance_factor"):
        long_tailed_class_counts(5000, 10, 0.01)
    with pytest.raises(ValueError, match="profile"):
        long_tailed_class_counts(5000, 10, 100, "linear")
    with pytest.raises(ValueError, match="num_classes"):
        long_tailed_class_counts(5000, 1, 100)


# ----------------------------------------------------------------------------------------------- make_long_tailed


@pytest.mark.slow
def test_make_long_tailed_cifar10_selects_the_reference_rows(cifar10):
    train = cifar10["train"].add_column("row", list(range(len(cifar10["train"]))))
    np.random.seed(1234)
    rng_before = np.random.get_state()
    lt = make_long_tailed(train, 100)
    rng_after = np.random.get_state()
    assert rng_before[1].tolist() == rng_after[1].tolist() and rng_before[2] == rng_after[2]

    assert len(lt) == 12406
    assert class_counts(lt) == CIFAR10_LT_IF100
    expected_rows = reference_long_tailed_rows(dataset_labels(train), 0.01, seed=0)
    assert dataset_labels(lt, "row") == expected_rows
    assert dataset_labels(lt) == sorted(dataset_labels(lt))  # class by class

    other_seed = dataset_labels(make_long_tailed(train, 100, seed=1), "row")
    assert other_seed == reference_long_tailed_rows(dataset_labels(train), 0.01, seed=1) != expected_rows


def test_make_long_tailed_exp_and_step_on_a_small_balanced_set():
    labels = [c for c in range(4) for _ in range(30)]
    rng = np.random.RandomState(7)
    labels = [labels[i] for i in rng.permutation(len(labels))]
    ds = labels_dataset(labels).add_column("row", list(range(len(labels))))
    lt = make_long_tailed(ds, 10, seed=3)
    assert class_counts(lt) == [30, 13, 6, 3]  # int(30 * 0.1 ** (c / 3))
    assert dataset_labels(lt, "row") == reference_long_tailed_rows(labels, 0.1, seed=3)
    assert class_counts(make_long_tailed(ds, 10, profile="step")) == [30, 30, 3, 3]


def test_make_long_tailed_refuses_bad_input():
    ds = labels_dataset([c for c in range(4) for _ in range(10)])
    with pytest.raises(ValueError, match="imbalance_factor"):
        make_long_tailed(ds, 0.01)
    with pytest.raises(ValueError, match="profile"):
        make_long_tailed(ds, 10, profile="pareto")
    with pytest.raises(ValueError, match="'fine_label' not found"):
        make_long_tailed(ds, 10, label_column="fine_label")
    text_labels = datasets.Dataset.from_dict({"label": ["cat", "dog"] * 5})
    with pytest.raises(ValueError, match="ClassLabel"):
        make_long_tailed(text_labels, 10)
    # n_max = 40 / 4 = 10; class 1 needs int(10 * 0.1 ** (1 / 3)) = 4
    unbalanced = labels_dataset([0] * 30 + [1] * 2 + [2] * 4 + [3] * 4)
    with pytest.raises(ValueError, match="class 1 .* has 2 rows .* needs 4"):
        make_long_tailed(unbalanced, 10)


# ----------------------------------------------------------------------------------------------- labels, transform set


def test_labels_and_counts_are_read_without_running_the_transform():
    raw = [3, 1, 1, 0, 2, 1, 3, 3, 3, 0]
    ds = labels_dataset(raw, num_classes=5).add_column("value", [float(v) for v in range(10)])
    view = ds.select([9, 0, 6, 2, 2])

    def transform(batch):
        raise AssertionError("the transform must not run to read labels")

    view.set_transform(transform)
    assert dataset_labels(view) == [0, 3, 3, 1, 1]
    assert class_counts(view) == [1, 2, 0, 2, 0]  # ClassLabel has 5 names
    assert class_counts(view, num_classes=4) == [1, 2, 0, 2]
    assert view.format["type"] == "custom"  # the transform is still set
    with pytest.raises(ValueError, match="outside"):
        class_counts(view, num_classes=3)


def test_class_counts_of_an_integer_column():
    ds = datasets.Dataset.from_dict({"y": [4, 4, 0, 2]})
    assert class_counts(ds, "y") == [1, 0, 1, 0, 2]
    assert dataset_labels(ds, "y") == [4, 4, 0, 2]


# ----------------------------------------------------------------------------------------------- subset


def test_subset_is_deterministic_proportional_and_keeps_every_class():
    labels = [c for c, n in enumerate(CIFAR10_LT_IF100) for _ in range(n)]
    ds = labels_dataset(labels).add_column("row", list(range(len(labels))))
    small = subset(ds, 1000, seed=0)
    expected = [max(1, int(n * 1000 / 12406)) for n in CIFAR10_LT_IF100]
    assert expected == [403, 241, 144, 86, 51, 31, 18, 11, 6, 4]
    assert class_counts(small) == expected
    rows = dataset_labels(small, "row")
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    assert all(labels[r] == label for r, label in zip(rows, dataset_labels(small)))
    assert dataset_labels(subset(ds, 1000, seed=0), "row") == rows
    assert dataset_labels(subset(ds, 1000, seed=1), "row") != rows
    assert class_counts(subset(ds, 10)) == [4, 2] + [1] * 8  # 5000 * 10 / 12406 = 4.03, ..., tail lifted to 1
    assert subset(ds, 20000) is ds
    with pytest.raises(ValueError, match="max_samples=5"):
        subset(ds, 5)



def test_stratified_holdout_takes_the_rounded_share_of_each_class_and_keeps_one_image():
    counts = [50, 9, 5, 2, 1]  # 10%: 5, 1 (0.9 rounds up), 1 (0.5 rounds up), 0 (0.2), 0 (single image)
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    ds = labels_dataset(labels).add_column("row", list(range(len(labels))))
    train, held_out, kept_whole = stratified_holdout(ds, 0.1, seed=3)
    assert class_counts(held_out, num_classes=5) == [5, 1, 1, 0, 0]
    assert class_counts(train, num_classes=5) == [45, 8, 4, 2, 1]
    assert kept_whole == [3, 4]
    train_rows, held_rows = dataset_labels(train, "row"), dataset_labels(held_out, "row")
    assert sorted(train_rows + held_rows) == list(range(len(labels))) and train_rows == sorted(train_rows)
    # Independently: one RandomState(3) permutation per class, in class order, skipping classes that give nothing.
    rng = np.random.RandomState(3)
    expected = []
    for c, quota in enumerate([5, 1, 1]):
        rows = [r for r, label in enumerate(labels) if label == c]
        expected += list(np.asarray(rows)[rng.permutation(len(rows))][:quota])
    assert held_rows == sorted(int(r) for r in expected)
    assert dataset_labels(stratified_holdout(ds, 0.1, seed=3)[1], "row") == held_rows
    assert dataset_labels(stratified_holdout(ds, 0.1, seed=4)[1], "row") != held_rows
    # At 90% every class but the single-image one keeps exactly one training image.
    train, _, kept_whole = stratified_holdout(ds, 0.9, seed=0)
    assert class_counts(train, num_classes=5) == [5, 1, 1, 1, 1] and kept_whole == [4]
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        stratified_holdout(ds, 1.0)


# ----------------------------------------------------------------------------------------------- split lists


def test_places_lt_lists_are_remapped_by_descending_count(splits_dir):
    dd = load_list_file_dataset(
        splits_dir / "Places_LT_train.txt", splits_dir / "Places_LT_test.txt", "/images", check_files=False
    )
    train, test = dd["train"], dd["test"]
    assert len(train) == 62500 and len(test) == 36500
    counts = class_counts(train)
    assert len(counts) == 365 and train.features["label"].num_classes == 365
    assert counts[0] == 4980 and counts[-1] == 5 and sum(counts) == 62500
    assert counts == sorted(counts, reverse=True)

    # independent mapping: ids by descending training count; ties in the reference's np.argsort order (numpy 1.19's
    # unstable introsort, emulated by reference_class_order and checked against numpy 1.24 in test_convert)
    def read(name):
        return [line.split() for line in (splits_dir / name).read_text().splitlines() if line.strip()]

    train_lines, test_lines = read("Places_LT_train.txt"), read("Places_LT_test.txt")
    original = collections.Counter(int(label) for _, label in train_lines)
    order = reference_class_order([-original[c] for c in range(365)])
    assert [original[c] for c in order] == sorted(original.values(), reverse=True)
    new_id = {orig: new for new, orig in enumerate(order)}
    assert dataset_labels(train) == [new_id[int(label)] for _, label in train_lines]
    assert dataset_labels(test) == [new_id[int(label)] for _, label in test_lines]
    # by hand: original class 0 (airfield) has 219 training images and 71 classes have more
    assert original[0] == 219 and sum(count > 219 for count in original.values()) == 71
    assert test_lines[0] == ["val_256/Places365_val_00003597.jpg", "0"]
    assert counts[dataset_labels(test)[0]] == 219
    assert train.features["label"].names[new_id[0]] == "orig_0"
    assert train.with_format("arrow")["image"][0]["path"].as_py() == "/images/data_256/a/airfield/00004851.jpg"


def write_list(path, entries):
    path.write_text("".join(f"{name} {label}\n" for name, label in entries))
    return path


def make_images(root, names, size=(40, 30), mode="RGB"):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, 128).save(root / name)


def test_list_file_dataset_with_images(tmp_path):
    train_entries = [("a/0.jpg", 7), ("b/0.jpg", 2), ("a/1.jpg", 7), ("c/0.png", 5), ("a/2.jpg", 7), ("b/1.jpg", 2)]
    test_entries = [("t/0.jpg", 2), ("t/1.jpg", 5), ("t/2.jpg", 7)]
    make_images(tmp_path, [name for name, _ in train_entries + test_entries])
    dd = load_list_file_dataset(
        write_list(tmp_path / "train.txt", train_entries), write_list(tmp_path / "test.txt", test_entries), tmp_path
    )
    # counts: 7 -> 3, 2 -> 2, 5 -> 1, then the absent ids 0, 1, 3, 4, 6 (count 0) in original order
    assert dd["train"].features["label"].names == [f"orig_{c}" for c in (7, 2, 5, 0, 1, 3, 4, 6)]
    assert dataset_labels(dd["train"]) == [0, 1, 0, 2, 0, 1]
    assert dataset_labels(dd["test"]) == [1, 2, 0]
    assert class_counts(dd["train"]) == [3, 2, 1, 0, 0, 0, 0, 0]
    image = dd["test"][1]["image"]
    assert isinstance(image, Image.Image) and image.size == (40, 30)

    dd["test"].set_transform(make_transform("imagenet", train=False))
    item = dd["test"][2]
    assert item["pixel_values"].shape == (3, 224, 224) and item["labels"] == 0


def test_list_file_dataset_missing_files_and_bad_lines(tmp_path):
    make_images(tmp_path, ["a/0.jpg", "t/0.jpg"])
    train = write_list(tmp_path / "train.txt", [("a/0.jpg", 0), ("a/missing.jpg", 1)])
    test = write_list(tmp_path / "test.txt", [("t/0.jpg", 0)])
    with pytest.raises(FileNotFoundError, match=r"missing.jpg") as error:
        load_list_file_dataset(train, test, tmp_path)
    assert str(tmp_path) in str(error.value) and "train.txt" in str(error.value)
    assert len(load_list_file_dataset(train, test, tmp_path, check_files=False)["train"]) == 2
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_list_file_dataset(tmp_path / "nope.txt", test, tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("a/0.jpg 0\na/0.jpg zero\n")
    with pytest.raises(ValueError, match="bad.txt, line 2"):
        load_list_file_dataset(bad, test, tmp_path)


# ----------------------------------------------------------------------------------------------- transforms


def normalize_numpy(image, mean, std):
    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return ((array - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


@pytest.mark.slow
def test_cifar_eval_transform_is_a_plain_normalisation(cifar10):
    batch = cifar10["test"][:16]
    out = make_transform("cifar", train=False, image_column="img")(batch)
    assert out["labels"] == batch["label"]
    for image, pixels in zip(batch["img"], out["pixel_values"]):
        assert pixels.dtype == torch.float32 and pixels.shape == (3, 32, 32)
        np.testing.assert_allclose(pixels.numpy(), normalize_numpy(image, CIFAR_MEAN, CIFAR_STD), atol=1e-5)


@pytest.mark.slow
def test_cifar_train_transform_is_a_random_window_of_the_padded_image(cifar10):
    batch = cifar10["train"][:64]
    torch.manual_seed(0)
    out = make_transform("cifar", train=True, image_column="img")(batch)
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
    out = make_transform("cifar", train=False)({"image": [gray, rgba], "label": [1, 2]})
    expected_gray = (100 / 255 - np.asarray(CIFAR_MEAN)) / np.asarray(CIFAR_STD)
    expected_rgba = (np.asarray([10, 20, 30]) / 255 - np.asarray(CIFAR_MEAN)) / np.asarray(CIFAR_STD)
    for pixels, expected in zip(out["pixel_values"], (expected_gray, expected_rgba)):
        np.testing.assert_allclose(pixels.numpy(), np.broadcast_to(expected[:, None, None], (3, 32, 32)), atol=1e-5)
    # other sizes are brought to 32x32 (shorter side resized, centre crop), as the cifar image processor does
    halves = np.zeros((80, 48), dtype=np.uint8)
    halves[:, 24:] = 255  # left half black, right half white; 48 wide -> 32 wide, 80 high -> 53 high, crop 32
    out = make_transform("cifar", train=False)({"image": [Image.new("L", (40, 24), 100), Image.fromarray(halves)],
                                                 "label": [0, 0]})
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), np.broadcast_to(expected_gray[:, None, None], (3, 32, 32)),
                               atol=1e-5)
    restored = out["pixel_values"][1].numpy() * np.asarray(CIFAR_STD)[:, None, None] + np.asarray(CIFAR_MEAN)[:, None, None]
    assert restored.shape == (3, 32, 32)
    np.testing.assert_allclose(restored[:, :, :14], 0.0, atol=1e-4)
    np.testing.assert_allclose(restored[:, :, 18:], 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="family='svhn'"):
        make_transform("svhn", train=True)
    with pytest.raises(ValueError, match="column 'image'"):
        make_transform("cifar", train=False)({"img": [gray], "label": [0]})


def gradient_image(height=320, width=480):
    """A smooth test image whose channels are linear in (x, y); returns the image and the linear function."""

    def linear(x, y):
        return np.stack([0.5 * x, 0.75 * y, 0.25 * x + 0.25 * y])

    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return Image.fromarray(np.round(linear(x, y)).transpose(1, 2, 0).astype(np.uint8)), linear


def test_imagenet_eval_transform_resizes_256_and_centre_crops_224():
    mean, std = np.asarray(IMAGENET_DEFAULT_MEAN)[:, None, None], np.asarray(IMAGENET_DEFAULT_STD)[:, None, None]
    constant = Image.new("RGB", (300, 200), (10, 128, 250))
    image, linear = gradient_image()
    raw = make_transform("imagenet", train=False)({"image": [constant, image], "label": [0, 1]})["pixel_values"]
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
    out = make_transform("imagenet", train=True)({"image": inputs, "label": [0, 1, 2, 3, 4, 5]})
    assert out["labels"] == [0, 1, 2, 3, 4, 5]
    for pixels in out["pixel_values"]:
        # a constant grey image stays exactly that grey under crop, antialiased resize and flip, as uint8
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
        assert torch.equal(pixels, torch.full((3, 224, 224), 120, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        make_transform("imagenet", train=True)({"image": [str(tmp_path / "missing.jpg")], "label": [0]})
    with pytest.raises(ValueError, match="column 'image'"):
        make_transform("imagenet", train=False)({"img": images, "label": [0, 1, 2]})


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
    out = make_transform("imagenet", train=True)({"image": [data] * draws, "label": [0] * draws})["pixel_values"]
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

    from mislas_hf.data.transforms import _normalization_affine, jitter_and_normalize

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

@pytest.mark.parametrize(
    ("dataset", "mean", "std"),
    [
        ("imagenet-lt", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("places-lt", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("inat2018", (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
        ("cifar10-lt", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        ("cifar100-lt", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    ],
)
def test_each_benchmark_is_normalised_with_the_reference_statistics(dataset, mean, std):
    """The reference's constants (datasets/imagenet.py, places.py, ina2018.py, cifar10.py, cifar100.py) in the
    device-side batch part, the evaluation transform and the saved image processor."""
    from types import SimpleNamespace

    from mislas_hf.data import BENCHMARKS
    from mislas_hf.run import DataArguments, ModelPlan, train_batch_augmentation

    spec = BENCHMARKS[dataset]
    benchmark = SimpleNamespace(family=spec.family, mean=spec.mean, std=spec.std)
    backbone = "resnet32" if spec.family == "cifar" else "resnet50"
    plan = ModelPlan(source="new", backbone=backbone, extra_block=False, freeze_backbone=False)
    size = 32 if spec.family == "cifar" else 224
    colour = np.asarray([30, 140, 220])
    expected = np.broadcast_to(((colour / 255 - np.asarray(mean)) / np.asarray(std))[:, None, None], (3, size, size))
    batch = torch.from_numpy(colour.astype(np.uint8)[:, None, None]).expand(2, 3, size, size).contiguous()
    augmentation = train_batch_augmentation(DataArguments(dataset=dataset), benchmark, plan)
    np.testing.assert_allclose(augmentation(batch, False).numpy(), np.stack([expected] * 2), atol=1e-5)
    picture = Image.new("RGB", (size + 40, size + 20), tuple(int(c) for c in colour))
    if spec.family == "cifar":
        picture = Image.new("RGB", (32, 32), tuple(int(c) for c in colour))
        pixel_values = make_transform("cifar", train=False, mean=spec.mean, std=spec.std)(
            {"image": [picture], "label": [0]}
        )["pixel_values"][0]
    else:  # uint8 from the workers, normalised by the batch part
        with pytest.raises(ValueError, match="augment_imagenet_batch"):
            make_transform("imagenet", train=False, mean=mean, std=std)
        raw = make_transform("imagenet", train=False)({"image": [picture], "label": [0]})["pixel_values"][0]
        assert raw.dtype == torch.uint8
        pixel_values = augmentation(raw[None], False)[0]
    np.testing.assert_allclose(pixel_values.numpy(), expected, atol=1e-5)
    processor = make_image_processor(spec.family, mean=spec.mean, std=spec.std)
    np.testing.assert_allclose(processor(picture, return_tensors="pt")["pixel_values"][0].numpy(), expected,
                               atol=1e-5)


# ----------------------------------------------------------------------------------------------- image processors


# ----------------------------------------------------------------------------------------------- in-memory CIFAR

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def unnormalize(pixel_values: torch.Tensor) -> np.ndarray:
    """Normalised float pixel values [B, 3, H, W] back to [0, 255], in float64."""
    mean, std = np.asarray(CIFAR_MEAN)[:, None, None], np.asarray(CIFAR_STD)[:, None, None]
    return (pixel_values.cpu().double().numpy() * std + mean) * 255


@pytest.fixture(scope="module")
def cifar_sample(cifar10):
    """64 real training images and their in-memory (decoded once) split."""
    source = cifar10["train"].select(range(64))
    return source, decode_cifar_images(source, image_column="img")


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
    expected = make_transform("cifar", train=False, image_column="img")(source[:64])["pixel_values"]
    out = decode_cifar_images(source, image_column="img").with_transform(InMemoryCifarTransform(train=False))[:64]
    assert out["labels"] == source["label"]
    np.testing.assert_allclose(
        torch.stack(out["pixel_values"]).numpy(), torch.stack(expected).numpy(), rtol=0, atol=1e-6
    )


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
    path) and `make_transform("cifar", train=True)` (per-sample path): every output must be exactly the window of
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
        augmented = make_transform("cifar", train=True)({"image": [picture] * n, "label": [0] * n})["pixel_values"]
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


@pytest.mark.slow
def test_cifar_image_processor_reloads_and_matches_the_eval_transform(cifar10, tmp_path):
    make_image_processor("cifar").save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    batch = cifar10["test"][:8]
    expected = torch.stack(make_transform("cifar", train=False, image_column="img")(batch)["pixel_values"])
    got = processor(batch["img"], return_tensors="pt")["pixel_values"]
    assert got.shape == (8, 3, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert processor(Image.new("RGB", (64, 96)), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


def test_imagenet_image_processor_matches_the_eval_transform(tmp_path):
    make_image_processor("imagenet").save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image, _ = gradient_image()
    natural = Image.open(_natural_image(tmp_path)).resize((400, 300), Image.BICUBIC)
    transform = make_transform("imagenet", train=False)
    for picture, max_tol, mean_tol in ((image, 0.02, 0.005), (natural, 0.1, 0.01)):
        got = processor(picture, return_tensors="pt")["pixel_values"][0]
        raw = transform({"image": [picture], "label": [0]})["pixel_values"][0]
        expected = augment_imagenet_batch(raw[None], train=False)[0]
        assert got.shape == (3, 224, 224)
        difference = (got - expected).abs()
        assert difference.max() < max_tol and difference.mean() < mean_tol  # torchvision's vs PIL's antialiasing
    with pytest.raises(ValueError, match="family"):
        make_image_processor("places")


def _natural_image(tmp_path):
    """A smooth, non-linear picture: a few blurred discs of colour, saved as PNG."""
    y, x = np.mgrid[0:60, 0:80].astype(np.float64)
    picture = np.zeros((60, 80, 3))
    for cx, cy, radius, colour in ((20, 20, 12, (255, 40, 0)), (55, 35, 18, (0, 200, 90)), (40, 50, 8, (30, 60, 255))):
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
        picture += weight * np.asarray(colour)
    path = tmp_path / "natural.png"
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------- benchmarks by name


@pytest.mark.slow
def test_load_benchmark_cifar10_lt_from_a_local_parquet_folder(cifar10_dir, cifar10):
    benchmark = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=str(cifar10_dir))
    assert benchmark.name == "cifar10-lt" and benchmark.family == "cifar" and benchmark.imbalance_factor == 100
    train, test = benchmark.splits["train"], benchmark.splits["test"]
    assert train.column_names == ["image", "label"] == test.column_names
    assert benchmark.class_counts == CIFAR10_LT_IF100 == class_counts(train)
    assert len(test) == 10000 and class_counts(test) == [1000] * 10
    assert benchmark.class_names[:3] == ["airplane", "automobile", "bird"]
    assert benchmark.class_group_boundaries == (3, 7)
    # the same rows as the reference cut: compare a few images with the rows the reference keeps
    rows = reference_long_tailed_rows(dataset_labels(cifar10["train"]), 0.01)
    for position in (0, 5000, 12405):
        assert np.array_equal(np.asarray(train[position]["image"]), np.asarray(cifar10["train"][rows[position]]["img"]))
    factor_10 = load_benchmark("cifar10-lt", 10, dataset_name=str(cifar10_dir))
    assert factor_10.class_counts == long_tailed_class_counts(5000, 10, 10) == class_counts(factor_10.splits["train"])


def test_load_benchmark_offline_says_how_to_use_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # no cached copy to fall back on
    assert datasets.config.HF_DATASETS_OFFLINE  # set by conftest
    with pytest.raises(ConnectionError, match="--dataset_name /path/to/cifar10-lt") as error:
        load_benchmark("cifar10-lt")
    assert "uoft-cs/cifar10" in str(error.value)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_benchmark("cifar100-lt", dataset_name=str(tmp_path / "absent"))


def test_load_benchmark_places_lt_from_data_dir(tmp_path, splits_dir):
    entries = [("p/0.jpg", 3), ("p/1.jpg", 3), ("p/2.jpg", 1)]
    make_images(tmp_path, [name for name, _ in entries])
    write_list(tmp_path / "Places_LT_train.txt", entries)
    write_list(tmp_path / "Places_LT_test.txt", entries[2:])
    benchmark = load_benchmark("Places-LT", data_dir=tmp_path)
    assert benchmark.family == "imagenet" and benchmark.class_group_boundaries == (131, 288)
    assert benchmark.imbalance_factor is None
    assert benchmark.class_counts == [2, 1, 0, 0] and benchmark.class_names == ["orig_3", "orig_1", "orig_0", "orig_2"]
    assert dataset_labels(benchmark.splits["test"]) == [1]

    real = load_benchmark(
        "places-lt", data_dir="/images", train_list=splits_dir / "Places_LT_train.txt",
        test_list=splits_dir / "Places_LT_test.txt", check_files=False,
    )
    assert len(real.class_counts) == 365 and real.class_counts[0] == 4980 and real.class_counts[-1] == 5

    with pytest.raises(FileNotFoundError, match="ImageNet_LT_train.txt"):
        load_benchmark("imagenet-lt", data_dir=tmp_path)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_benchmark("inat2018")
    with pytest.raises(ValueError, match="data_dir, not dataset_name"):
        load_benchmark("places-lt", dataset_name="some/hub-id", data_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset_name"):
        load_benchmark("cifar10-lt", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        load_benchmark("svhn-lt")
