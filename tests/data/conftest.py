"""Data and helpers shared by the tests of mislas_hf.data, as fixtures (a helper fixture returns the function)."""

import datasets
import numpy as np
import pytest
from PIL import Image

from mislas_hf.data import decode_cifar_images

CIFAR10_LT_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="session")
def cifar10(cifar10_dir) -> datasets.DatasetDict:
    """The real CIFAR-10 (columns img, label), read from the parquet folder."""
    return datasets.load_dataset(str(cifar10_dir))


@pytest.fixture(scope="session")
def cifar_sample(cifar10):
    """64 real training images and their in-memory (decoded once) split."""
    source = cifar10["train"].select(range(64))
    return source, decode_cifar_images(source, image_column="img")


@pytest.fixture(name="cifar10_lt_if100")
def cifar10_lt_if100_fixture() -> list[int]:
    """CIFAR-10-LT's training images per class at imbalance factor 100 (the reference's cut)."""
    return list(CIFAR10_LT_IF100)


def labels_dataset(labels, num_classes=None) -> datasets.Dataset:
    """An in-memory dataset with only a ClassLabel column."""
    names = [str(c) for c in range(num_classes or max(labels) + 1)]
    return datasets.Dataset.from_dict(
        {"label": list(labels)}, features=datasets.Features({"label": datasets.ClassLabel(names=names)})
    )


@pytest.fixture(name="labels_dataset")
def labels_dataset_fixture():
    """``labels_dataset(labels, num_classes=None)``: an in-memory dataset with only a ClassLabel column."""
    return labels_dataset


def reference_counts(n_max, num_classes, imb_factor):
    """Per-class counts written as the reference does, with its imb_factor = 1 / beta (0.01 for beta = 100)."""
    return [int(n_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


@pytest.fixture(name="reference_counts")
def reference_counts_fixture():
    """``reference_counts(n_max, num_classes, imb_factor)``: the reference's per-class counts (imb_factor: 1 / beta)."""
    return reference_counts


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


@pytest.fixture(name="reference_long_tailed_rows")
def reference_long_tailed_rows_fixture():
    """``reference_long_tailed_rows(labels, imb_factor, seed=0)``: the rows the reference's long-tailed cut keeps."""
    return reference_long_tailed_rows


def write_list(path, entries):
    path.write_text("".join(f"{name} {label}\n" for name, label in entries))
    return path


@pytest.fixture(name="write_list")
def write_list_fixture():
    """``write_list(path, entries)``: a split list (`name label` per line) written to `path`, which it returns."""
    return write_list


def make_images(root, names, size=(40, 30), mode="RGB"):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, 128).save(root / name)


@pytest.fixture(name="make_images")
def make_images_fixture():
    """``make_images(root, names, size=(40, 30), mode="RGB")``: grey images saved under `root` at the given names."""
    return make_images


def gradient_image(height=320, width=480):
    """A smooth test image whose channels are linear in (x, y); returns the image and the linear function."""

    def linear(x, y):
        return np.stack([0.5 * x, 0.75 * y, 0.25 * x + 0.25 * y])

    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return Image.fromarray(np.round(linear(x, y)).transpose(1, 2, 0).astype(np.uint8)), linear


@pytest.fixture(name="gradient_image")
def gradient_image_fixture():
    """``gradient_image(height=320, width=480)``: an image linear in (x, y) per channel, and that linear function."""
    return gradient_image
