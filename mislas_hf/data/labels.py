"""Reading labels and class counts of a `datasets.Dataset` without decoding any image, and class-proportional
subsets (`--max_train_samples`) and per-class held-out splits."""

from __future__ import annotations

import math

import datasets
import numpy as np


def label_feature(dataset: datasets.Dataset, label_column: str):
    """The feature of `label_column`, checked to be a `ClassLabel` or an integer `Value`."""
    if label_column not in dataset.column_names:
        raise ValueError(
            f"label column '{label_column}' not found; the dataset has columns {dataset.column_names}: "
            f"pass label_column=<the column holding the integer class ids>"
        )
    feature = dataset.features[label_column]
    is_integer = isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    if not (isinstance(feature, datasets.ClassLabel) or is_integer):
        raise ValueError(
            f"label column '{label_column}' has feature {feature}; it must be a datasets.ClassLabel or an integer "
            f"Value (cast it with dataset.cast_column('{label_column}', datasets.ClassLabel(names=...)))"
        )
    return feature


def dataset_labels(dataset: datasets.Dataset, label_column: str = "label") -> list[int]:
    """The labels of `dataset` in row order, read from the Arrow column (no image is decoded).

    Works on a dataset with `set_transform` applied: `with_format("arrow", columns=[label_column])` returns a new
    view whose formatting replaces the transform, so the transform is neither called nor removed from `dataset`;
    the view honours the indices mapping left by `select`/`shuffle`.
    """
    label_feature(dataset, label_column)
    return dataset.with_format("arrow", columns=[label_column])[label_column].to_pylist()


def class_counts(dataset: datasets.Dataset, label_column: str = "label", num_classes: int | None = None) -> list[int]:
    """Number of rows of each class of `dataset` (index = class id), read without decoding any image.

    `num_classes` defaults to the `ClassLabel`'s number of names, or to the largest label + 1 for an integer column.
    Like `dataset_labels`, this works on a dataset with `set_transform` applied.
    """
    feature = label_feature(dataset, label_column)
    labels = np.asarray(dataset_labels(dataset, label_column), dtype=np.int64)
    if num_classes is None:
        is_class_label = isinstance(feature, datasets.ClassLabel)
        num_classes = feature.num_classes if is_class_label else int(labels.max(initial=-1)) + 1
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"label column '{label_column}' holds ids in [{labels.min()}, {labels.max()}], outside "
            f"[0, {num_classes}) for num_classes={num_classes}: pass the right num_classes"
        )
    return np.bincount(labels, minlength=num_classes).tolist()


def subset(dataset: datasets.Dataset, max_samples: int, seed: int = 0, label_column: str = "label") -> datasets.Dataset:
    """A deterministic, class-proportional subset of about `max_samples` rows (for `--max_train_samples`).

    Applied after the long-tailed cut, it keeps the profile: class c keeps `max(1, int(n_c * max_samples / N))` of
    its `n_c` rows (N = len(dataset)), drawn with `np.random.RandomState(seed)`, so the total is at most
    `max_samples` plus the number of classes lifted to 1, and never more than `n_c` per class. Rows keep their order.
    Returns `dataset` itself when `max_samples >= len(dataset)`.
    """
    labels = np.asarray(dataset_labels(dataset, label_column), dtype=np.int64)
    num_present = len(np.unique(labels))
    if max_samples < num_present:
        raise ValueError(
            f"max_samples={max_samples} is below the {num_present} classes present: a subset keeps at least one "
            f"image per class, so pass max_samples >= {num_present}"
        )
    if max_samples >= len(dataset):
        return dataset
    rng = np.random.RandomState(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        quota = max(1, int(len(idx) * max_samples / len(dataset)))
        keep.append(rng.permutation(idx)[:quota])
    return dataset.select(np.sort(np.concatenate(keep)))


def stratified_holdout(
    dataset: datasets.Dataset, fraction: float, seed: int = 0, label_column: str = "label"
) -> tuple[datasets.Dataset, datasets.Dataset, list[int]]:
    """Hold out `fraction` of every class of `dataset`, keeping at least one training image per class.

    Class c with n_c rows gives `min(floor(fraction * n_c + 1/2), n_c - 1)` rows to the held-out split, drawn with a
    private `np.random.RandomState(seed)` (one permutation per class, classes in ascending id order), so the same
    dataset, fraction and seed always hold out the same rows. A class with a single row stays whole in training,
    and so does any class whose share rounds to 0; the third value lists those class ids so that the caller can say
    so. Both splits keep the rows' original order (`dataset.select` on sorted indices, no copy of the data).
    Used for `--validation_split_percentage` (temperature fitting, best-epoch selection) and `--train_val_split`.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}: e.g. 0.1 holds out 10% per class")
    labels = np.asarray(dataset_labels(dataset, label_column), dtype=np.int64)
    rng = np.random.RandomState(seed)
    held_out, kept_whole = [], []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        quota = min(math.floor(fraction * len(idx) + 0.5), len(idx) - 1)
        if quota == 0:
            kept_whole.append(int(c))
            continue
        held_out.append(rng.permutation(idx)[:quota])
    held_out = np.sort(np.concatenate(held_out)) if held_out else np.zeros(0, dtype=np.int64)
    training = np.setdiff1d(np.arange(len(dataset)), held_out)
    return dataset.select(training), dataset.select(held_out), kept_whole
