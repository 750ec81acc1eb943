"""Test sets with shifted class priors: the test-agnostic protocol of LADE (Hong et al., "Disentangling label
distribution for long-tailed visual recognition", CVPR 2021) and SADE (Zhang et al., "Self-supervised aggregation of
diverse experts for test-agnostic long-tailed recognition", NeurIPS 2022).

From a (balanced) test set, each protocol split keeps a long-tailed subset whose classes follow the training classes'
order by count: *forward* (the largest training class keeps the most test images, as in training) or *backward*
(reversed: the largest training class keeps the fewest), at imbalance factors 50, 25, 10, 5 and 2, plus *uniform*,
the full test set.

The counts follow SADE's code (Vanint/SADE-AgnosticLT: `TestAgnosticImbalanceCIFAR100DataLoader`, which cuts the test
set with LDAM-DRW's `IMBALANCECIFAR100(imb_factor=1 / IF, reverse=...)`, and its ImageNet-LT / Places-LT list files,
whose counts these reproduce up to the order of classes with equal training counts): with the training classes ranked
by count, descending (rank 0 the largest; ties by class id), and ``n_max`` the test images of the largest training
class, the class of rank i keeps::

    forward:   n_i = int(n_max * (1 / IF) ** (i / (K - 1)))
    backward:  n_i = int(n_max * (1 / IF) ** ((K - 1 - i) / (K - 1)))

(`long_tailed_class_counts`, the same profile as the CIFAR-LT training cut). The images kept are drawn as the reference
cut draws them: ``np.random.RandomState(seed)``, then for each class in ascending class id its test rows are shuffled
and the first ``n_c`` kept. For CIFAR, whose class ids are the training order, these are the images of SADE's
CIFAR-100 test-agnostic splits (seed 0).
"""

from __future__ import annotations

import numpy as np

from .long_tail import long_tailed_class_counts

TEST_PRIOR_IMBALANCE_FACTORS = (50, 25, 10, 5, 2)
"""The imbalance factors of the test-agnostic protocol (LADE, SADE), each forward and backward."""
TEST_PRIOR_DIRECTIONS = ("forward", "backward", "uniform")
"""`forward`: the test prior has the training prior's order; `backward`: reversed; `uniform`: the full test set."""


def _training_order(train_class_counts) -> np.ndarray:
    """Class ids by descending training count; equal counts by ascending class id (the repository's class ids are
    already in the reference's count order, so this keeps it)."""
    counts = np.asarray(train_class_counts)
    if counts.ndim != 1 or counts.size < 2 or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ValueError(
            "train_class_counts must list the training images of each class (at least 2 classes, non-negative "
            f"integers, in class-id order), got {counts.tolist()!r}: pass the model's config.class_counts"
        )
    return np.argsort(-counts, kind="stable")


def shifted_test_subset(
    test_labels, train_class_counts, direction: str = "forward", imbalance_factor: float = 50, seed: int = 0
) -> tuple[np.ndarray, dict]:
    """The rows of a test set that one split of the test-agnostic protocol keeps (see the module docstring).

    Args:
        test_labels: the test set's integer labels, in row order.
        train_class_counts: training images per class, in class-id order (``config.class_counts``); they give the
            classes' order.
        direction: ``"forward"``, ``"backward"`` or ``"uniform"`` (the full test set; ``imbalance_factor`` 1).
        imbalance_factor: the split's largest over smallest class count, written as in the papers (50, not 0.02).
        seed: seed of the per-class draw of images.

    Returns:
        ``(indices, record)``: the kept test rows (int64, class by class in ascending class id; all rows in order for
        ``uniform``) and a JSON-ready record for ``eval_results.json``: ``name`` (``"forward50"``, ``"backward2"``,
        ``"uniform"``), ``imbalance_factor``, ``direction``, ``class_counts`` (kept images per class, in class-id
        order) and ``seed``.
    """
    order = _training_order(train_class_counts)
    num_classes = len(order)
    labels = np.asarray(test_labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"test_labels must be a non-empty 1-D sequence of integer class ids, got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"test_labels hold class ids in [{labels.min()}, {labels.max()}] but train_class_counts has {num_classes} "
            "classes: pass the counts of the model the test set is labelled for"
        )
    if direction not in TEST_PRIOR_DIRECTIONS:
        raise ValueError(f"direction={direction!r} is unknown: use one of {TEST_PRIOR_DIRECTIONS}")
    available = np.bincount(labels, minlength=num_classes)
    if direction == "uniform":
        if imbalance_factor != 1:
            raise ValueError(
                f"direction='uniform' is the full test set: pass imbalance_factor=1, not {imbalance_factor}"
            )
        record = {"name": "uniform", "imbalance_factor": 1, "direction": "uniform",
                  "class_counts": available.tolist(), "seed": seed}
        return np.arange(len(labels), dtype=np.int64), record
    by_rank = long_tailed_class_counts(available[order[0]], num_classes, imbalance_factor)
    if direction == "backward":
        by_rank = by_rank[::-1]
    targets = np.zeros(num_classes, dtype=np.int64)
    targets[order] = by_rank
    short = np.flatnonzero(available < targets)
    if short.size:
        c = short[0]
        raise ValueError(
            f"class {c} has {available[c]} test images but the {direction} split at imbalance factor "
            f"{imbalance_factor} keeps {targets[c]} of it (n_max = {available[order[0]]}, the test images of the "
            "largest training class): the protocol expects a balanced test set"
        )
    rng = np.random.RandomState(seed)
    keep = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        keep.append(rows[: targets[c]])
    record = {"name": f"{direction}{imbalance_factor:g}", "imbalance_factor": imbalance_factor,
              "direction": direction, "class_counts": targets.tolist(), "seed": seed}
    return np.concatenate(keep).astype(np.int64), record


def shifted_test_subsets(
    test_labels, train_class_counts, imbalance_factors=TEST_PRIOR_IMBALANCE_FACTORS, seed: int = 0
) -> dict[str, tuple[np.ndarray, dict]]:
    """All splits of the test-agnostic protocol, by name, in SADE's order: forward at each imbalance factor from the
    largest, ``uniform``, then backward from the smallest (``forward50`` ... ``forward2``, ``uniform``, ``backward2``
    ... ``backward50``). Each value is :func:`shifted_test_subset`'s ``(indices, record)``."""
    factors = sorted(imbalance_factors, reverse=True)
    splits = [("forward", factor) for factor in factors] + [("uniform", 1)]
    splits += [("backward", factor) for factor in reversed(factors)]
    subsets = {}
    for direction, factor in splits:
        indices, record = shifted_test_subset(test_labels, train_class_counts, direction, factor, seed)
        subsets[record["name"]] = (indices, record)
    return subsets
