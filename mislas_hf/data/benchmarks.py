"""The long-tailed benchmarks of MiSLAS (Zhong et al., CVPR 2021) as `datasets.Dataset` objects.

* CIFAR-10-LT / CIFAR-100-LT: the balanced CIFAR training set cut to an exponential (or step) profile exactly as the
  reference implementation does (dvlab-research/MiSLAS `datasets/cifar10.py`, itself LDAM-DRW's `IMBALANCECIFAR10`);
  the test set stays balanced.
* ImageNet-LT, Places-LT, iNaturalist 2018: the official split lists (`relative/path.jpg label` per line), with class
  ids remapped so that class 0 has the most training images (reference `datasets/imagenet.py`, `LT_Dataset`).

`load_benchmark` ties these together by benchmark name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from .image_processing import INATURALIST_MEAN, INATURALIST_STD
from .labels import class_counts, dataset_labels, label_feature

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


# --------------------------------------------------------------------------------------------------------------------
# ImageNet-LT / Places-LT / iNaturalist 2018: official split lists
# --------------------------------------------------------------------------------------------------------------------


def read_list_file(list_file: Path) -> tuple[list[str], list[int]]:
    """Relative paths and original class ids of a split list (`relative/path.jpg label` per line)."""
    if not list_file.is_file():
        raise FileNotFoundError(f"split list {list_file} not found: pass the path of the official list file")
    paths, ids = [], []
    with open(list_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise ValueError(
                    f"{list_file}, line {line_number}: expected 'relative/path.jpg label' with an integer label, "
                    f"got {line.strip()!r}"
                )
            paths.append(fields[0])
            ids.append(int(fields[1]))
    if not paths:
        raise ValueError(f"split list {list_file} has no entries")
    return paths, ids


def _check_images_exist(image_paths: Sequence[str], list_file: Path, image_root: Path) -> None:
    """Raise `FileNotFoundError` naming the first missing image, its list file and the image root."""
    missing = [path for path in image_paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(image_paths)} images listed in {list_file} are missing under the image "
            f"root {image_root}, e.g. {missing[0]}: pass as image root (data_dir) the folder the list's relative "
            f"paths start from"
        )


def reference_class_order(values: Sequence) -> list[int]:
    """
    `np.argsort(values)` exactly as numpy 1.17-1.24 computes it on x86 without AVX-512 sorting (introsort: median-of-3
    quicksort, insertion sort below 16 elements, heapsort past 2*log2(n) levels).

    The reference numbers ImageNet-LT / Places-LT / iNaturalist classes by `np.argsort(-counts)` (numpy 1.19); that
    sort is not stable, so classes with equal counts get an order only this algorithm reproduces (newer numpy with
    AVX-512 and `kind="stable"` both give other orders). Pass `-counts` to get the reference's class order.
    """
    keys = list(values)
    order = list(range(len(keys)))
    stack = []
    low, high = 0, len(keys) - 1
    depth_limit = (max(len(keys), 1).bit_length() - 1) * 2
    while True:
        if depth_limit < 0:
            _heapsort_indices(keys, order, low, high - low + 1)
        else:
            while high - low > 15:
                middle = low + ((high - low) >> 1)
                if keys[order[middle]] < keys[order[low]]:
                    order[middle], order[low] = order[low], order[middle]
                if keys[order[high]] < keys[order[middle]]:
                    order[high], order[middle] = order[middle], order[high]
                if keys[order[middle]] < keys[order[low]]:
                    order[middle], order[low] = order[low], order[middle]
                pivot = keys[order[middle]]
                i, j = low, high - 1
                order[middle], order[j] = order[j], order[middle]
                while True:
                    i += 1
                    while keys[order[i]] < pivot:
                        i += 1
                    j -= 1
                    while pivot < keys[order[j]]:
                        j -= 1
                    if i >= j:
                        break
                    order[i], order[j] = order[j], order[i]
                order[i], order[high - 1] = order[high - 1], order[i]
                depth_limit -= 1
                if i - low < high - i:  # keep the larger part for later, go on with the smaller
                    stack.append((i + 1, high, depth_limit))
                    high = i - 1
                else:
                    stack.append((low, i - 1, depth_limit))
                    low = i + 1
            for i in range(low + 1, high + 1):  # insertion sort
                item = order[i]
                j = i
                while j > low and keys[item] < keys[order[j - 1]]:
                    order[j] = order[j - 1]
                    j -= 1
                order[j] = item
        if not stack:
            return order
        low, high, depth_limit = stack.pop()


def _heapsort_indices(keys: list, order: list[int], start: int, count: int) -> None:
    """numpy's `aheapsort` on `order[start:start + count]` (1-based heap as in its C code)."""

    def at(k: int) -> int:
        return order[start + k - 1]

    def put(k: int, item: int) -> None:
        order[start + k - 1] = item

    def sift(item: int, i: int, n: int) -> None:
        j = 2 * i
        while j <= n:
            if j < n and keys[at(j)] < keys[at(j + 1)]:
                j += 1
            if keys[item] < keys[at(j)]:
                put(i, at(j))
                i, j = j, 2 * j
            else:
                break
        put(i, item)

    for first in range(count >> 1, 0, -1):
        sift(at(first), first, count)
    while count > 1:
        item = at(count)
        put(count, at(1))
        count -= 1
        sift(item, 1, count)


def class_order_by_count(original_ids: Sequence[int], num_classes: int) -> list[int]:
    """Original class ids ordered by descending training count, as the reference numbers its classes
    (`np.argsort(-counts)` with numpy 1.19, whose tie order `reference_class_order` reproduces). Using the same
    order as the reference keeps our class ids equal to those of its published checkpoints."""
    counts = np.bincount(np.asarray(original_ids), minlength=num_classes)
    return reference_class_order((-counts).tolist())


def load_list_file_dataset(
    train_list: str | os.PathLike,
    test_list: str | os.PathLike,
    image_root: str | os.PathLike,
    check_files: bool = True,
) -> datasets.DatasetDict:
    """ImageNet-LT / Places-LT / iNaturalist 2018 from their split lists, as a `DatasetDict` with train and test.

    Columns: `image` (`datasets.Image()` holding the path `image_root/relative/path`, decoded lazily) and `label`
    (`datasets.ClassLabel`). As in the reference (`datasets/imagenet.py`, `LT_Dataset`), class ids are remapped so
    that class 0 has the most training images and ids descend by training count, ties ordered exactly as the
    reference's unstable `np.argsort` orders them (`class_order_by_count`).
    The test list goes through the same map. Class `k`'s name is `"orig_<original id>"`. The number of classes is
    the largest original id in either list + 1 (classes with no training image come last).
    `check_files=True` checks that every listed image exists before returning (`FileNotFoundError` otherwise);
    `check_files=False` only reads the lists (e.g. to count classes without the images).
    """
    image_root = Path(image_root)
    lists = {"train": Path(train_list), "test": Path(test_list)}
    entries = {split: read_list_file(list_file) for split, list_file in lists.items()}
    num_classes = max(max(ids) for _, ids in entries.values()) + 1
    by_count = np.asarray(class_order_by_count(entries["train"][1], num_classes))
    class_map = np.empty(num_classes, dtype=np.int64)
    class_map[by_count] = np.arange(num_classes)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"orig_{orig}" for orig in by_count])}
    )
    splits = {}
    for split, (relative_paths, ids) in entries.items():
        image_paths = [str(image_root / path) for path in relative_paths]
        if check_files:
            _check_images_exist(image_paths, lists[split], image_root)
        labels = class_map[np.asarray(ids)].tolist()
        splits[split] = datasets.Dataset.from_dict({"image": image_paths, "label": labels}, features=features)
    return datasets.DatasetDict(splits)


# --------------------------------------------------------------------------------------------------------------------
# Benchmarks by name
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark comes from and how the reference evaluates it (see `BENCHMARKS`)."""

    family: str
    hub_id: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    train_list: str | None = None
    test_list: str | None = None
    num_classes: int = 0
    class_group_boundaries: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


# `class_group_boundaries` (a, b): Many = classes [0, a), Medium = [a, b), Few = [b, K), the `head/med/tail_class_idx`
# of the reference configs; the published Many/Medium/Few numbers use them. They are not the paper's thresholds
# (> 100 / 20-100 / < 20 training images, Appendix A), which `class_group_boundaries=None` applies. Classes per group,
# thresholds vs. these index ranges, on the training counts:
#   CIFAR-10-LT   IF 10: 10/0/0 vs 3/4/3;   IF 50: 9/1/0 vs 3/4/3;     IF 100: 8/2/0 vs 3/4/3
#   CIFAR-100-LT  IF 10: 69/31/0 vs 36/35/29; IF 50: 41/41/18 vs 36/35/29; IF 100: 35/35/30 vs 36/35/29
#   Places-LT (official list): 131/163/71 vs 131/157/77 (the index ranges put the six 20-image classes in Few)
# ImageNet-LT and iNaturalist 2018 are not counted here (their training lists are not in the test data).
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "cifar10-lt": BenchmarkSpec(
        "cifar", hub_id="uoft-cs/cifar10", image_column="img", label_column="label", num_classes=10,
        class_group_boundaries=(3, 7),
    ),
    "cifar100-lt": BenchmarkSpec(
        "cifar", hub_id="uoft-cs/cifar100", image_column="img", label_column="fine_label", num_classes=100,
        class_group_boundaries=(36, 71),
    ),
    "imagenet-lt": BenchmarkSpec(
        "imagenet", train_list="ImageNet_LT_train.txt", test_list="ImageNet_LT_test.txt", num_classes=1000,
        class_group_boundaries=(390, 835),
    ),
    "places-lt": BenchmarkSpec(
        "imagenet", train_list="Places_LT_train.txt", test_list="Places_LT_test.txt", num_classes=365,
        class_group_boundaries=(131, 288),
    ),
    "inat2018": BenchmarkSpec(
        "imagenet", train_list="iNaturalist18_train.txt", test_list="iNaturalist18_val.txt", num_classes=8142,
        class_group_boundaries=(842, 4543), mean=INATURALIST_MEAN, std=INATURALIST_STD,
    ),
}
"""The benchmarks of the paper (Sec. 4.1): CIFAR from the Hub (or a local parquet copy), the others from split lists."""


@dataclass(frozen=True)
class LongTailedBenchmark:
    """A loaded benchmark: the splits plus what a trainer needs to know about them.

    `splits`: `DatasetDict` with `train` (long-tailed) and `test`, columns `image` and `label`. `class_counts`:
    training images per class. `class_group_boundaries`: `(a, b)`, the reference's Many = [0, a), Medium = [a, b),
    Few = [b, K) class-index split (see `BENCHMARKS`). `imbalance_factor` is None for list-file benchmarks.
    `mean`/`std`: the normalisation the reference uses when it is not the family's default (iNaturalist 2018).
    Your own data (`own.load_own_dataset`) has no `class_group_boundaries` (Many/Medium/Few follow count thresholds);
    `dataset_id` is the Hub id of the source (None for local files), `evaluation_split` says what `test` holds (the
    source's `test` or `validation` split, or a held-out fraction of the training set) and `kept_whole_classes` the
    classes too small to give an image to that held-out part.
    """

    name: str
    family: str
    splits: datasets.DatasetDict
    class_counts: list[int]
    class_names: list[str]
    class_group_boundaries: tuple[int, int] | None
    imbalance_factor: float | None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    dataset_id: str | None = None
    evaluation_split: str = "test"
    kept_whole_classes: tuple[int, ...] = ()


def _canonical_columns(split: datasets.Dataset, spec: BenchmarkSpec, source: str) -> datasets.Dataset:
    """Keep only the image and label columns of a Hub/parquet split, renamed to `image` and `label`."""
    chosen = []
    for preferred, canonical in ((spec.image_column, "image"), (spec.label_column, "label")):
        column = next((c for c in (preferred, canonical) if c in split.column_names), None)
        if column is None:
            raise ValueError(
                f"{source} has columns {split.column_names}, none of them '{preferred}' or '{canonical}': "
                f"pass a copy of {spec.hub_id} with its original columns"
            )
        chosen.append((column, canonical))
    split = split.select_columns([column for column, _ in chosen])
    return split.rename_columns({column: canonical for column, canonical in chosen if column != canonical})


def _load_hub_or_parquet(name: str, spec: BenchmarkSpec, dataset_name: str | None) -> datasets.DatasetDict:
    """Load a CIFAR benchmark's raw splits from the Hub id, or from `dataset_name` (Hub id or local folder)."""
    source = dataset_name or spec.hub_id
    if source.startswith(("/", ".", "~")) or os.path.isdir(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset_name {source}: folder not found; pass a folder holding the parquet files")
        source = str(folder)
    try:
        raw = datasets.load_dataset(source)
    except ConnectionError as err:
        raise ConnectionError(
            f"cannot reach the Hugging Face Hub to load '{source}' for {name} ({err}). Use a local copy: download "
            f"it once where there is network (`hf download {source} --repo-type dataset --local-dir "
            f"/path/to/{name}`), then pass `--dataset_name /path/to/{name}` (dataset_name='/path/to/{name}', a "
            f"folder with the train/test parquet files)"
        ) from err
    for split in ("train", "test"):
        if split not in raw:
            raise ValueError(f"{source} has splits {list(raw)}: {name} needs a 'train' and a 'test' split")
    return datasets.DatasetDict({split: _canonical_columns(raw[split], spec, source) for split in ("train", "test")})


def load_benchmark(
    name: str,
    imbalance_factor: float = 100,
    dataset_name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    train_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    check_files: bool = True,
) -> LongTailedBenchmark:
    """Load a benchmark of `BENCHMARKS` by name ("cifar10-lt", "cifar100-lt", "imagenet-lt", "places-lt", "inat2018").

    CIFAR: from the Hub id (`uoft-cs/cifar10`, `uoft-cs/cifar100`) or from `dataset_name`, a Hub id or a local folder
    of parquet files (as `--dataset_name` of transformers' run_image_classification.py); the training split is cut
    by `make_long_tailed(imbalance_factor, seed=seed)`, the test split stays balanced. `ConnectionError` when the
    Hub cannot be reached, saying how to pass a local copy.
    List-file benchmarks: `data_dir` is the image root; the split lists default to the reference's file names
    (e.g. `Places_LT_train.txt`) inside `data_dir` unless `train_list`/`test_list` are given; `imbalance_factor` and
    `seed` do not apply (the lists fix the profile). See `load_list_file_dataset` for `check_files`.
    """
    key = name.lower()
    if key not in BENCHMARKS:
        raise ValueError(f"benchmark '{name}' is unknown: use one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[key]
    if spec.hub_id is not None:
        if data_dir is not None or train_list is not None or test_list is not None:
            raise ValueError(
                f"{key} is loaded from parquet files: pass a local copy as dataset_name (a folder of parquet files), "
                f"not data_dir/train_list/test_list"
            )
        raw = _load_hub_or_parquet(key, spec, dataset_name)
        splits = datasets.DatasetDict(
            {"train": make_long_tailed(raw["train"], imbalance_factor, seed=seed), "test": raw["test"]}
        )
        factor = imbalance_factor
    else:
        if dataset_name is not None:
            raise ValueError(f"{key} is read from split lists: pass the image root as data_dir, not dataset_name")
        if data_dir is None:
            raise ValueError(
                f"{key} needs data_dir: the image root its split lists ({spec.train_list}, {spec.test_list}) are "
                f"relative to (the lists are looked up there unless train_list/test_list are given)"
            )
        splits = load_list_file_dataset(
            train_list if train_list is not None else Path(data_dir) / spec.train_list,
            test_list if test_list is not None else Path(data_dir) / spec.test_list,
            data_dir,
            check_files=check_files,
        )
        factor = None
    counts = class_counts(splits["train"])
    label_feature = splits["train"].features["label"]
    is_class_label = isinstance(label_feature, datasets.ClassLabel)
    class_names = list(label_feature.names) if is_class_label else [str(c) for c in range(len(counts))]
    return LongTailedBenchmark(
        name=key,
        family=spec.family,
        splits=splits,
        class_counts=counts,
        class_names=class_names,
        class_group_boundaries=spec.class_group_boundaries,
        imbalance_factor=factor,
        mean=spec.mean,
        std=spec.std,
        dataset_id=spec.hub_id,
    )
