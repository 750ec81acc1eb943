"""Tests of mislas_hf.data.test_priors: the shifted test priors of the test-agnostic protocol (LADE / SADE)."""

import numpy as np
import pytest

from mislas_hf.data import dataset_labels, shifted_test_subset, shifted_test_subsets

# training counts in class-id order, deliberately unsorted: by count the classes rank 1, 3, 4, 0, 2, 5
TRAIN_COUNTS = [30, 500, 8, 120, 60, 2]
RANKED_CLASSES = [1, 3, 4, 0, 2, 5]
TEST_PER_CLASS = 40


def balanced_test_labels(seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(6), TEST_PER_CLASS))


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("imbalance_factor", [50, 10, 2])
def test_subsets_have_the_protocol_counts_in_the_training_order(direction, imbalance_factor):
    labels = balanced_test_labels()
    indices, record = shifted_test_subset(labels, TRAIN_COUNTS, direction, imbalance_factor, seed=3)
    # rank i of the training order keeps int(n_max * (1 / IF) ** (i / (K - 1))) forward, the reverse backward
    by_rank = [int(TEST_PER_CLASS * (1 / imbalance_factor) ** (rank / 5)) for rank in range(6)]
    if direction == "backward":
        by_rank = by_rank[::-1]
    expected = [0] * 6
    for rank, class_id in enumerate(RANKED_CLASSES):
        expected[class_id] = by_rank[rank]
    assert np.bincount(labels[indices], minlength=6).tolist() == expected
    assert len(set(indices.tolist())) == len(indices) == sum(expected)
    assert record == {"name": f"{direction}{imbalance_factor}", "imbalance_factor": imbalance_factor,
                      "direction": direction, "class_counts": expected, "seed": 3}
    # the largest training class keeps all its test images forward, the smallest one backward
    assert expected[1 if direction == "forward" else 5] == TEST_PER_CLASS


def test_subsets_are_seeded_draws_and_uniform_is_the_full_test_set():
    labels = balanced_test_labels()
    first, _ = shifted_test_subset(labels, TRAIN_COUNTS, "forward", 10, seed=0)
    again, _ = shifted_test_subset(labels, TRAIN_COUNTS, "forward", 10, seed=0)
    other, _ = shifted_test_subset(labels, TRAIN_COUNTS, "forward", 10, seed=1)
    assert first.tolist() == again.tolist() and set(first.tolist()) != set(other.tolist())

    splits = shifted_test_subsets(labels, TRAIN_COUNTS)
    assert list(splits) == ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
                            "backward2", "backward5", "backward10", "backward25", "backward50"]
    indices, record = splits["uniform"]
    assert indices.tolist() == list(range(len(labels)))
    assert record["class_counts"] == [TEST_PER_CLASS] * 6 and record["imbalance_factor"] == 1


def test_a_class_short_of_test_images_is_named():
    labels = balanced_test_labels()
    short = labels[~((labels == 3) & (np.cumsum(labels == 3) > 10))]  # class 3 (rank 1) keeps 10 test images
    with pytest.raises(ValueError, match="class 3 has 10 test images"):
        shifted_test_subset(short, TRAIN_COUNTS, "forward", 2)


def test_cifar10_forward_subset_is_the_reference_cut_of_the_test_set(
    cifar10, cifar10_lt_if100, reference_long_tailed_rows
):
    """SADE cuts CIFAR's test set with LDAM-DRW's long-tailed cut (imb_factor = 1 / IF, seed 0): for CIFAR-10-LT,
    whose class ids are the training order, the forward subset is the rows that cut keeps."""
    labels = np.array(dataset_labels(cifar10["test"], "label"))
    indices, record = shifted_test_subset(labels, cifar10_lt_if100, "forward", 10, seed=0)
    assert indices.tolist() == reference_long_tailed_rows(labels, 0.1, seed=0)
    assert record["class_counts"] == [int(1000 * 0.1 ** (c / 9)) for c in range(10)]
    backward, record = shifted_test_subset(labels, cifar10_lt_if100, "backward", 10, seed=0)
    expected = [int(1000 * 0.1 ** ((9 - c) / 9)) for c in range(10)]
    assert np.bincount(labels[backward], minlength=10).tolist() == record["class_counts"] == expected
