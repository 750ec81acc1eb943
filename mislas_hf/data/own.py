"""Your own long-tailed image collection, used as it is: any source `datasets.load_dataset` reads (a Hub id, a folder
of parquet / arrow files, an imagefolder) or imagefolders per split (`train_dir`, `validation_dir`, `test_dir`), with
the flag names of transformers' `run_image_classification.py`.

Unlike the paper benchmarks (`benchmarks.py`) nothing is cut: the natural class counts are the long tail. Class ids
and names come from the label column's `ClassLabel` (string labels become one, names sorted); images of any size and
PIL mode are converted to RGB by the transforms. Everything that would fail later is checked here, before any
compute: the columns, the label type, classes without training images, classes evaluated but never trained on, and
every image (each one is decoded once up front, about a millisecond per small image, and a file that does not decode
is named).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from .benchmarks import LongTailedBenchmark
from .long_tail import make_long_tailed
from .preprocessing import Preprocessing
from .labels import class_counts, dataset_labels, stratified_holdout

IMAGE_COLUMN_CANDIDATES = ("image", "img")
"""Image columns looked for, in order, when `image_column` is not given."""
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")
"""Label columns looked for, in order, when `label_column` is not given."""
EVALUATION_SPLITS = ("test", "validation")
"""The split evaluated on: the first of these that the source has."""


def _load_raw(
    dataset_name: str | None, train_dir: str | None, validation_dir: str | None, test_dir: str | None
) -> tuple[datasets.DatasetDict, str]:
    """The source's splits, and a short name of the source for logs and cards."""
    folders = {"train": train_dir, "validation": validation_dir, "test": test_dir}
    given = {split: folder for split, folder in folders.items() if folder is not None}
    if dataset_name is not None and given:
        raise ValueError(
            f"pass either dataset_name ({dataset_name}) or imagefolders per split ({', '.join(f'{s}_dir' for s in given)}), "
            "not both"
        )
    if dataset_name is None:
        if train_dir is None:
            raise ValueError("your own data needs dataset_name (Hub id or folder) or train_dir (an imagefolder)")
        for split, folder in given.items():
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{split}_dir {folder}: folder not found; pass a folder of class sub-folders")
        data_files = {split: os.path.join(folder, "**") for split, folder in given.items()}
        train_folder = Path(train_dir).resolve()
        name = train_folder.parent.name if train_folder.name.lower() in ("train", "training") else train_folder.name
        return datasets.load_dataset("imagefolder", data_files=data_files), name
    source = dataset_name
    if source.startswith(("/", ".", "~")):
        if not Path(source).expanduser().is_dir():
            raise FileNotFoundError(f"dataset_name {source}: folder not found")
        source = str(Path(source).expanduser())
    raw = datasets.load_dataset(source)
    return raw, Path(source).resolve().name if os.path.isdir(source) else source


def _find_column(split: datasets.Dataset, given: str | None, candidates: tuple, kind: str, feature_type) -> str:
    """The image or label column: `given`, else the first candidate present, else the only column of `feature_type`."""
    if given is not None:
        if given not in split.column_names:
            raise ValueError(
                f"{kind} column '{given}' not found; the dataset has columns {split.column_names}: pass "
                f"--{kind}_column_name with one of them"
            )
        return given
    present = [name for name in candidates if name in split.column_names]
    typed = [name for name, feature in split.features.items() if isinstance(feature, feature_type)]
    if present or len(typed) == 1:
        return (present or typed)[0]
    raise ValueError(
        f"no {kind} column found: the dataset has columns {split.column_names}, none of them "
        f"{' / '.join(candidates)}; pass --{kind}_column_name with the column holding the {kind}s"
    )


def _class_names(splits: dict[str, datasets.Dataset], label_column: str) -> list[str]:
    """Class names from the training split's label column: a `ClassLabel`'s names, integer ids as strings (0 to the
    largest id in any split), or the sorted distinct strings of the training split."""
    feature = splits["train"].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    dtype = getattr(feature, "dtype", None)
    if isinstance(feature, datasets.Value) and dtype.startswith(("int", "uint")):
        ids = np.concatenate([np.asarray(dataset_labels(split, label_column), dtype=np.int64) for split in splits.values()])
        if ids.size and ids.min() < 0:
            raise ValueError(f"label column '{label_column}' holds the negative class id {ids.min()}: ids start at 0")
        return [str(c) for c in range(int(ids.max(initial=-1)) + 1)]
    if isinstance(feature, datasets.Value) and dtype in ("string", "large_string"):
        return sorted(set(splits["train"].with_format("arrow", columns=[label_column])[label_column].to_pylist()))
    raise ValueError(
        f"label column '{label_column}' has feature {feature}: it must be a datasets.ClassLabel, integer class ids "
        f"or class names (strings); pass --label_column_name with such a column"
    )


def _as_class_label(split: datasets.Dataset, split_name: str, label_column: str, names: list[str]) -> datasets.Dataset:
    """`split` with `label_column` cast to `ClassLabel(names=names)` (strings looked up by name, ints kept)."""
    feature = split.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        if list(feature.names) != names:
            raise ValueError(
                f"the {split_name} split's classes {feature.names} differ from the training split's {names}: "
                "give every split the same ClassLabel"
            )
        return split
    if feature.dtype in ("string", "large_string"):
        values = set(split.with_format("arrow", columns=[label_column])[label_column].to_pylist())
        unseen = sorted(values - set(names))
        if unseen:
            raise ValueError(
                f"class(es) {unseen} of the {split_name} split have no training image: a model cannot learn them; "
                "add training images of these classes or remove them from the evaluation split"
            )
    return split.cast_column(label_column, datasets.ClassLabel(names=names))


def check_images_decode(split: datasets.Dataset, split_name: str, image_column: str = "image") -> None:
    """Decode every image of `split` once (PIL `load`), raising `ValueError` that names the first file (or row) that
    does not decode, before any training compute is spent."""
    raw = split.cast_column(image_column, datasets.Image(decode=False))
    for row, image in enumerate(raw.with_format("python", columns=[image_column])[image_column]):
        if image is None:
            raise ValueError(f"row {row} of the {split_name} split has no image: remove it from the dataset")
        where = image.get("path") or f"row {row}"
        try:
            with Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as opened:
                opened.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(
                f"image {where} of the {split_name} split cannot be decoded ({err}): remove or replace the file"
            ) from err


def load_own_dataset(
    dataset_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    test_dir: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    preprocessing: Preprocessing | None = None,
    train_val_split: float | None = None,
    imbalance_factor: float | None = None,
    seed: int = 0,
) -> LongTailedBenchmark:
    """Your own data as a `LongTailedBenchmark` with `train` and `test` splits, columns `image` and `label`
    (`ClassLabel`), and `class_group_boundaries=None` (Many/Medium/Few then follow the count thresholds).

    The evaluation split is `test` if the source has one, else `validation`; with neither, `train_val_split` holds
    out that fraction of every class of the training set (`stratified_holdout`: a class too small to give an image
    stays whole in training; `kept_whole_classes` lists them). `imbalance_factor` optionally cuts a balanced
    training set to the exponential profile (`make_long_tailed`). `preprocessing`: how the model's images are
    preprocessed (default: the reference's `cifar` preprocessing).
    Raises `ValueError` / `FileNotFoundError` naming the column, class, file or split, before any compute.
    """
    raw, source_name = _load_raw(dataset_name, train_dir, validation_dir, test_dir)
    if "train" not in raw:
        raise ValueError(f"{source_name} has splits {list(raw)} but no 'train' split: name the training split 'train'")
    evaluation_split = next((name for name in EVALUATION_SPLITS if name in raw), None)
    if evaluation_split is None and train_val_split is None:
        raise ValueError(
            f"{source_name} has splits {list(raw)}: no 'test' or 'validation' split to evaluate on. Pass "
            "--train_val_split 0.1 (or another fraction) to hold out part of every class of the training set, or "
            "--test_dir with an imagefolder of test images"
        )
    splits = {"train": raw["train"]}
    if evaluation_split is not None:
        splits[evaluation_split] = raw[evaluation_split]
    image_column = _find_column(raw["train"], image_column, IMAGE_COLUMN_CANDIDATES, "image", datasets.Image)
    label_column = _find_column(raw["train"], label_column, LABEL_COLUMN_CANDIDATES, "label", datasets.ClassLabel)
    for name, split in splits.items():
        for column in (image_column, label_column):
            if column not in split.column_names:
                raise ValueError(f"column '{column}' is missing from the {name} split (columns {split.column_names})")
        if not isinstance(split.features[image_column], datasets.Image):
            raise ValueError(
                f"image column '{image_column}' of the {name} split has feature {split.features[image_column]}, "
                "not datasets.Image: pass --image_column_name with the column holding the images"
            )
    names = _class_names(splits, label_column)
    canonical = {}
    for name, split in splits.items():
        split = _as_class_label(split.select_columns([image_column, label_column]), name, label_column, names)
        canonical[name] = split.rename_columns({image_column: "image", label_column: "label"}) if (
            image_column, label_column) != ("image", "label") else split
    for name, split in canonical.items():
        check_images_decode(split, name)
    train = canonical["train"]
    if imbalance_factor is not None:
        train = make_long_tailed(train, imbalance_factor, seed=seed)
    kept_whole = []
    if evaluation_split is None:
        train, evaluation, kept_whole = stratified_holdout(train, train_val_split, seed=seed)
        evaluation_split = f"held-out {train_val_split:g} of the training set"
    else:
        evaluation = canonical[evaluation_split]
    counts = class_counts(train, num_classes=len(names))
    evaluated = np.bincount(np.asarray(dataset_labels(evaluation), dtype=np.int64), minlength=len(names))
    unseen = [names[c] for c in np.flatnonzero((np.asarray(counts) == 0) & (evaluated > 0))]
    if unseen:
        raise ValueError(
            f"class(es) {unseen} of the {evaluation_split} split have no training image: a model cannot learn them; "
            "add training images of these classes or remove them from the evaluation split"
        )
    empty = [names[c] for c, count in enumerate(counts) if count == 0]
    if empty:
        raise ValueError(
            f"class(es) {empty} have no training image: add images of these classes or drop them from the label "
            "column's ClassLabel"
        )
    return LongTailedBenchmark(
        name=source_name,
        preprocessing=preprocessing or Preprocessing.reference("cifar"),
        splits=datasets.DatasetDict({"train": train, "test": evaluation}),
        class_counts=counts,
        class_names=names,
        class_group_boundaries=None,
        imbalance_factor=imbalance_factor,
        dataset_id=dataset_name if dataset_name is not None and not os.path.isdir(dataset_name) else None,
        evaluation_split=evaluation_split,
        kept_whole_classes=tuple(kept_whole),
    )
