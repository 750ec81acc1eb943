"""ImageNet-LT, Places-LT and iNaturalist 2018 from their official split lists (`relative/path.jpg label` per line),
with class ids remapped so that class 0 has the most training images, in the tie order of the reference's numpy
(reference `datasets/imagenet.py`, `LT_Dataset`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np



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
