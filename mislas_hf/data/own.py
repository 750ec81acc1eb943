"""Your own long-tailed image collection, used as it is: any source `datasets.load_dataset` reads (a Hub id, a folder
of parquet / arrow files, an imagefolder) or imagefolders per split (`train_dir`, `validation_dir`, `test_dir`), with
the flag names of transformers' `run_image_classification.py`.

Unlike the paper benchmarks (`benchmarks.py`) nothing is cut: the natural class counts are the long tail. Class ids
and names come from the label column's `ClassLabel` (string labels become one, names sorted); images of any size and
PIL mode are converted to RGB by the transforms. The image column is cast to `datasets.Image` the way `datasets` casts
it: the struct `{bytes, path}` that pandas / pyarrow write for an Image column as it is, and a column of file paths
(strings; a CSV, JSON or parquet file) with each relative path read from the folder of the data file that holds it.
An imagefolder with a `metadata.csv` / `metadata.jsonl` / `metadata.parquet` file (`file_name` and further columns,
e.g. a label column) is read by `datasets` itself. Everything that would fail later is checked here, before any
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
TABLE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
"""Table files (rows of images or image paths, and labels), as `datasets` reads them; an imagefolder's metadata
files too."""


def _load_raw(
    dataset_name: str | None, split_dirs: dict[str, str | None]
) -> tuple[datasets.DatasetDict, str, dict[str, list[Path]]]:
    """The source's splits, a short name of the source for logs and cards, and the folders of each split's table
    files (`_table_folders`; empty for a Hub dataset). `split_dirs`: the imagefolder of each split (`train`,
    `validation`, `test`; None where not given)."""
    given = {split: folder for split, folder in split_dirs.items() if folder is not None}
    if dataset_name is not None and given:
        raise ValueError(
            f"pass either dataset_name ({dataset_name}) or imagefolders per split ({', '.join(f'{s}_dir' for s in given)}), "
            "not both"
        )
    if dataset_name is None:
        if split_dirs["train"] is None:
            raise ValueError("your own data needs dataset_name (Hub id or folder) or train_dir (an imagefolder)")
        for split, folder in given.items():
            if not Path(folder).is_dir():
                raise FileNotFoundError(
                    f"{split}_dir {folder}: folder not found; pass a folder of class sub-folders, or of images with a "
                    "metadata.csv / metadata.jsonl (file_name and label columns)"
                )
        data_files = {split: os.path.join(folder, "**") for split, folder in given.items()}
        train_folder = Path(split_dirs["train"]).resolve()
        name = train_folder.parent.name if train_folder.name.lower() in ("train", "training") else train_folder.name
        folders = {split: [Path(folder).expanduser().resolve()] for split, folder in given.items()}
        return datasets.load_dataset("imagefolder", data_files=data_files), name, folders
    source = dataset_name
    if source.startswith(("/", ".", "~")):
        if not Path(source).expanduser().is_dir():
            raise FileNotFoundError(f"dataset_name {source}: folder not found")
        source = str(Path(source).expanduser())
    if not os.path.isdir(source):
        return datasets.load_dataset(source), source, {}
    raw, table_folders = _load_folder(source)
    return raw, Path(source).resolve().name, table_folders


def _load_folder(folder: str) -> tuple[datasets.DatasetDict, dict[str, list[Path]]]:
    """A local dataset folder as `datasets.load_dataset(folder)` reads it (its split and format inference: e.g.
    `train.csv` and `test.csv`, or `train/` and `test/` imagefolders), and the folders of each split's table files."""
    builder = datasets.load_dataset_builder(folder)
    builder.download_and_prepare()
    return builder.as_dataset(), _table_folders(builder.config.data_files)


def _table_folders(data_files: dict[str, list[str]]) -> dict[str, list[Path]]:
    """The folders of each split's table files (CSV / JSON / parquet, an imagefolder's metadata files included): the
    folders that relative image paths of the split are read from (`_path_folder`)."""
    return {
        str(split): sorted({Path(file).resolve().parent for file in files if file.lower().endswith(TABLE_SUFFIXES)})
        for split, files in data_files.items()
    }


def _find_column(
    split: datasets.Dataset, given: str | None, candidates: tuple, kind: str, fallbacks: tuple, hint: str = ""
) -> str:
    """The image or label column: `given`, else the first candidate present, else the only column accepted by the
    first of `fallbacks` (predicates on a column name, tried in order) that accepts exactly one. `hint` ends the
    message of a column not found."""
    if given is not None:
        if given not in split.column_names:
            raise ValueError(
                f"{kind} column '{given}' not found; the dataset has columns {split.column_names}: pass "
                f"--{kind}_column_name with one of them"
            )
        return given
    present = [name for name in candidates if name in split.column_names]
    if present:
        return present[0]
    for accepts in fallbacks:
        accepted = [name for name in split.column_names if accepts(name)]
        if len(accepted) == 1:
            return accepted[0]
    raise ValueError(
        f"no {kind} column found: the dataset has columns {split.column_names}, none of them "
        f"{' / '.join(candidates)}; pass --{kind}_column_name with the column holding the {kind}s{hint}"
    )


def _is_string(feature) -> bool:
    """Whether `feature` is a string `Value` (CSV and JSON files give `large_string`)."""
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _is_image_struct(feature) -> bool:
    """Whether `feature` is the struct of `bytes` and / or `path` that `datasets.Image` stores, as pandas and pyarrow
    read an Image column back (e.g. `{'bytes': Value('binary'), 'path': Value('null')}`)."""
    return isinstance(feature, dict) and bool(feature) and set(feature) <= {"bytes", "path"}


def _holds_image_files(split: datasets.Dataset, column: str) -> bool:
    """Whether `column` of `split` holds strings that all name image files (an extension PIL opens)."""
    if not _is_string(split.features[column]):
        return False
    extensions = Image.registered_extensions()
    paths = split.with_format("arrow", columns=[column])[column].to_pylist()
    return bool(paths) and all(path is not None and Path(path).suffix.lower() in extensions for path in paths)


def _path_folder(table_folders: dict[str, list[Path]], source_name: str, split_name: str) -> Path:
    """The folder that relative image paths of the split `split_name` are read from: the folder of the split's table
    file (`_table_folders`), or the split's imagefolder for `train_dir` / `validation_dir` / `test_dir`. Raises
    `ValueError` for a Hub dataset and for table files in several folders."""
    if not table_folders:
        raise ValueError(
            f"the {split_name} split of {source_name} holds relative image paths, which are read from the folder of "
            f"the data file: download the dataset (`hf download --repo-type dataset {source_name} --local-dir "
            "FOLDER`) and pass --dataset_name FOLDER"
        )
    folders = table_folders[split_name]
    if len(folders) != 1:
        raise ValueError(
            f"the {split_name} split's data files lie in several folders ({', '.join(map(str, folders))}) and hold "
            "relative image paths, which are read from the folder of their data file: keep the split's data files "
            "in one folder, or write absolute paths"
        )
    return folders[0]


def _as_image_column(
    split: datasets.Dataset, split_name: str, column: str, table_folders: dict[str, list[Path]], source_name: str
) -> datasets.Dataset:
    """`split` with `column` cast to `datasets.Image()` as `datasets` casts it (`cast_column`): an Image column as it
    is, the struct `{bytes, path}` directly, file paths (strings) with each relative path joined to the folder of the
    data file that holds it (`_path_folder`) and absolute paths kept."""
    feature = split.features[column]
    if isinstance(feature, datasets.Image):
        return split
    if _is_string(feature):
        paths = split.with_format("arrow", columns=[column])[column].to_pylist()
        if any(path is not None and not os.path.isabs(os.path.expanduser(path)) for path in paths):
            folder = _path_folder(table_folders, source_name, split_name)

            def resolve(batch: list) -> dict:
                return {column: [None if path is None else str(folder / os.path.expanduser(path)) for path in batch]}

            split = split.map(
                resolve,
                input_columns=[column],
                batched=True,
                desc=f"reading the {split_name} split's image paths from {folder}",
            )
    elif not _is_image_struct(feature):
        raise ValueError(
            f"image column '{column}' of the {split_name} split has feature {feature}: it must hold images "
            "(datasets.Image, or the struct {bytes, path}) or image file paths; pass --image_column_name with the "
            "column that holds them"
        )
    return split.cast_column(column, datasets.Image())


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
    if _is_string(feature):
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
    if _is_string(feature):
        values = set(split.with_format("arrow", columns=[label_column])[label_column].to_pylist())
        unseen = sorted(values - set(names))
        if unseen:
            raise ValueError(
                f"class(es) {unseen} of the {split_name} split have no training image: a model cannot learn them; "
                "add training images of these classes or remove them from the evaluation split"
            )
    return split.cast_column(label_column, datasets.ClassLabel(names=names))


def check_images_decode(split: datasets.Dataset, split_name: str, image_column: str = "image") -> None:
    """Decode every image of `split` once (PIL `load`), before any training compute is spent. Raises
    `FileNotFoundError` naming the file, row and column of an image file that does not exist, and `ValueError` naming
    the first file (or row) that does not decode."""
    raw = split.cast_column(image_column, datasets.Image(decode=False))
    for row, image in enumerate(raw.with_format("python", columns=[image_column])[image_column]):
        if image is None or not (image.get("bytes") or image.get("path")):
            raise ValueError(f"row {row} of the {split_name} split has no image: remove it from the dataset")
        if not image.get("bytes") and not os.path.isfile(image["path"]):
            raise FileNotFoundError(
                f"image file {image['path']} (row {row} of the {split_name} split, column '{image_column}') not "
                "found: correct its path (a relative path is read from the folder of the data file that holds it) "
                "or remove the row"
            )
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
    split_dirs = {"train": train_dir, "validation": validation_dir, "test": test_dir}
    raw, source_name, table_folders = _load_raw(dataset_name, split_dirs)
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
    training, features = raw["train"], raw["train"].features
    image_column = _find_column(
        training, image_column, IMAGE_COLUMN_CANDIDATES, "image",
        fallbacks=(  # the only Image column, else the only column that casts to one
            lambda name: isinstance(features[name], datasets.Image),
            lambda name: _is_image_struct(features[name]) or _holds_image_files(training, name),
        ),
    )
    label_column = _find_column(
        training, label_column, LABEL_COLUMN_CANDIDATES, "label",
        fallbacks=(lambda name: isinstance(features[name], datasets.ClassLabel),),
        hint=" (an imagefolder has labels from class sub-folders or from a metadata.csv / metadata.jsonl file)",
    )
    for name, split in splits.items():
        for column in (image_column, label_column):
            if column not in split.column_names:
                raise ValueError(f"column '{column}' is missing from the {name} split (columns {split.column_names})")
    names = _class_names(splits, label_column)
    splits = {
        name: _as_class_label(
            _as_image_column(split.select_columns([image_column, label_column]), name, image_column, table_folders,
                             source_name),
            name, label_column, names,
        )
        for name, split in splits.items()
    }
    for name, split in splits.items():
        check_images_decode(split, name, image_column)
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    canonical = {name: split.rename_columns(renames) if renames else split for name, split in splits.items()}
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
