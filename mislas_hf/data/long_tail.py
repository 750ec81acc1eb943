"""The long-tailed cut of a balanced dataset, exactly as the reference implementation makes CIFAR-10-LT / CIFAR-100-LT
(dvlab-research/MiSLAS `datasets/cifar10.py`, itself LDAM-DRW's `IMBALANCECIFAR10`): per-class counts of an
exponential or step profile, and the images kept of each class."""

from __future__ import annotations

import math

import datasets
import numpy as np

from .labels import dataset_labels, label_feature

PROFILES = ("exp", "step")
"""Long-tailed profiles of `long_tailed_class_counts` (those of LDAM-DRW / the reference)."""


# --------------------------------------------------------------------------------------------------------------------
# CIFAR-LT: the long-tailed cut of a balanced dataset
# --------------------------------------------------------------------------------------------------------------------


def long_tailed_class_counts(
    n_max: float, num_classes: int, imbalance_factor: float, profile: str = "exp"
) -> list[int]:
    """Per-class image counts of a long-tailed cut (reference `IMBALANCECIFAR10.get_img_num_per_cls`).

    "exp": class c keeps `int(n_max * (1 / imbalance_factor) ** (c / (num_classes - 1)))`, so class 0 keeps `n_max`
    and the last class `n_max / imbalance_factor` (the paper's beta = N_max / N_min, Sec. 4.1).
    "step": the first `num_classes // 2` classes keep `int(n_max)`, the others `int(n_max / imbalance_factor)` (for an
    odd number of classes the reference drops the last class; here it is a tail class).
    `imbalance_factor` is written as in the paper (100, 50, 10); the reference's `imb_factor=0.01` is 1/100.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile='{profile}' is unknown: use one of {PROFILES}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a long-tailed profile needs at least 2 classes")
    if not (math.isfinite(imbalance_factor) and imbalance_factor >= 1):
        raise ValueError(
            f"imbalance_factor={imbalance_factor} must be a finite number >= 1, written as in the paper "
            f"(N_max / N_min, e.g. 100), not as the reference's imb_factor (0.01)"
        )
    if profile == "exp":
        return [int(n_max * (1 / imbalance_factor) ** (c / (num_classes - 1))) for c in range(num_classes)]
    head = num_classes // 2
    return [int(n_max)] * head + [int(n_max / imbalance_factor)] * (num_classes - head)


def make_long_tailed(
    dataset: datasets.Dataset,
    imbalance_factor: float,
    label_column: str = "label",
    profile: str = "exp",
    seed: int = 0,
) -> datasets.Dataset:
    """Cut a balanced dataset (CIFAR) to a long-tailed one, selecting exactly the reference's images.

    Reference (`datasets/cifar10.py`, `IMBALANCECIFAR10.gen_imbalanced_data`): `n_max = len(dataset) / num_classes`,
    counts from `long_tailed_class_counts`, then after `np.random.seed(seed)`, for each class in ascending order the
    indices of that class are shuffled with `np.random.shuffle` and the first `n_c` are kept. A private
    `np.random.RandomState(seed)` draws the identical stream without touching numpy's global RNG.
    The result is ordered class by class (`dataset.select`, no copy of the data): CIFAR-10 with factor 100 keeps
    12,406 images (5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50).
    """
    feature = label_feature(dataset, label_column)
    labels = np.asarray(dataset_labels(dataset, label_column), dtype=np.int64)
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else len(np.unique(labels))
    targets = long_tailed_class_counts(len(dataset) / num_classes, num_classes, imbalance_factor, profile)
    rng = np.random.RandomState(seed)
    keep = []
    for c, target in enumerate(targets):
        idx = np.where(labels == c)[0]
        if len(idx) < target:
            raise ValueError(
                f"class {c} of label column '{label_column}' has {len(idx)} rows but the {profile} profile with "
                f"imbalance_factor={imbalance_factor} needs {target}: make_long_tailed expects a balanced dataset "
                f"(every class with len(dataset) / num_classes rows)"
            )
        rng.shuffle(idx)
        keep.append(idx[:target])
    return dataset.select(np.concatenate(keep))
