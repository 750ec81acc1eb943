"""mislas_hf.data.long_tail: the per-class counts of the long-tailed profiles and the reference's CIFAR-LT cut."""

import datasets
import numpy as np
import pytest

from mislas_hf.data import class_counts, dataset_labels, long_tailed_class_counts, make_long_tailed


# --------------------------------------------------------------------------------------------- long-tailed counts


@pytest.mark.parametrize(
    "num_classes, n_max, factor, total",
    [(10, 5000, 100, 12406), (10, 5000, 50, 13996), (10, 5000, 10, 20431),
     (100, 500, 100, 10847), (100, 500, 50, 12608), (100, 500, 10, 19573)],
)
def test_long_tailed_class_counts_match_reference_and_known_totals(num_classes, n_max, factor, total, reference_counts):
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
def test_make_long_tailed_cifar10_selects_the_reference_rows(cifar10, cifar10_lt_if100, reference_long_tailed_rows):
    train = cifar10["train"].add_column("row", list(range(len(cifar10["train"]))))
    np.random.seed(1234)
    rng_before = np.random.get_state()
    lt = make_long_tailed(train, 100)
    rng_after = np.random.get_state()
    assert rng_before[1].tolist() == rng_after[1].tolist() and rng_before[2] == rng_after[2]

    assert len(lt) == 12406
    assert class_counts(lt) == cifar10_lt_if100
    expected_rows = reference_long_tailed_rows(dataset_labels(train), 0.01, seed=0)
    assert dataset_labels(lt, "row") == expected_rows
    assert dataset_labels(lt) == sorted(dataset_labels(lt))  # class by class

    other_seed = dataset_labels(make_long_tailed(train, 100, seed=1), "row")
    assert other_seed == reference_long_tailed_rows(dataset_labels(train), 0.01, seed=1) != expected_rows


def test_make_long_tailed_exp_and_step_on_a_small_balanced_set(labels_dataset, reference_long_tailed_rows):
    labels = [c for c in range(4) for _ in range(30)]
    rng = np.random.RandomState(7)
    labels = [labels[i] for i in rng.permutation(len(labels))]
    ds = labels_dataset(labels).add_column("row", list(range(len(labels))))
    lt = make_long_tailed(ds, 10, seed=3)
    assert class_counts(lt) == [30, 13, 6, 3]  # int(30 * 0.1 ** (c / 3))
    assert dataset_labels(lt, "row") == reference_long_tailed_rows(labels, 0.1, seed=3)
    assert class_counts(make_long_tailed(ds, 10, profile="step")) == [30, 30, 3, 3]


def test_make_long_tailed_refuses_bad_input(labels_dataset):
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
