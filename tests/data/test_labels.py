"""mislas_hf.data.labels: labels and class counts read without decoding images, class-proportional subsets and the
stratified held-out split."""

import datasets
import numpy as np
import pytest

from mislas_hf.data import class_counts, dataset_labels, stratified_holdout, subset


def test_labels_and_counts_are_read_without_running_the_transform(labels_dataset):
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


# --------------------------------------------------------------------------------------------------------- subset


def test_subset_is_deterministic_proportional_and_keeps_every_class(labels_dataset, cifar10_lt_if100):
    labels = [c for c, n in enumerate(cifar10_lt_if100) for _ in range(n)]
    ds = labels_dataset(labels).add_column("row", list(range(len(labels))))
    small = subset(ds, 1000, seed=0)
    expected = [max(1, int(n * 1000 / 12406)) for n in cifar10_lt_if100]
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


# --------------------------------------------------------------------------------------------- stratified_holdout


def test_stratified_holdout_takes_the_rounded_share_of_each_class_and_keeps_one_image(labels_dataset):
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
