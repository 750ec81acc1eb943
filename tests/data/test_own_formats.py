"""Own data in the formats people have (`mislas_hf.data.own`): a parquet file written by pandas (images as the struct
`{bytes, path}`), CSV / JSON / JSON Lines files of image paths, imagefolders with `metadata.csv` / `metadata.jsonl`.
Every dataset is written here from tiny PNG images of known colours, and read back image by image."""

import io
import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mislas_hf.data import load_own_dataset

CLASSES = ["ant", "bee", "cow"]
COUNTS = {"train": {"ant": 5, "bee": 3, "cow": 1}, "test": {"ant": 2, "bee": 1, "cow": 2}}
ORDER = {"train": ["bee", "ant", "cow"], "test": ["cow", "ant", "bee"]}  # rows of a class interleaved, not sorted


def image_rows(split: str) -> list[dict]:
    """The rows of a split, classes interleaved: file name (unique, no split name in it: `datasets` would take a file
    named after a split for a data file of that split), class name and a colour unique to the row."""
    remaining = dict(COUNTS[split])
    rows = []
    while any(remaining.values()):
        for name in ORDER[split]:
            if remaining[name]:
                index = COUNTS[split][name] - remaining[name]
                colour = (40 * CLASSES.index(name) + 10, 20 * index + 5, 90 if split == "train" else 180)
                number = len(rows) + (0 if split == "train" else sum(COUNTS["train"].values()))
                rows.append({"file": f"{name}-{number:02d}.png", "label": name, "colour": colour})
                remaining[name] -= 1
    return rows


def png_bytes(row: dict) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), row["colour"]).save(buffer, format="PNG")  # lossless: the colour reads back exactly
    return buffer.getvalue()


def write_images(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / row["file"]).write_bytes(png_bytes(row))


def assert_reads_back(benchmark, label_of=lambda row: row["label"]) -> None:
    """Every split holds the rows written, in order: labels, class counts and each image's colour."""
    names = sorted({label_of(row) for row in image_rows("train")})
    assert benchmark.class_names == names
    assert benchmark.class_counts == [sum(label_of(row) == name for row in image_rows("train")) for name in names]
    for split in ("train", "test"):
        data = benchmark.splits[split]
        rows = image_rows(split)
        assert data.column_names == ["image", "label"]
        assert [names[label] for label in data["label"]] == [label_of(row) for row in rows]
        colours = [tuple(np.asarray(image.convert("RGB"))[2, 3].tolist()) for image in data["image"]]
        assert colours == [row["colour"] for row in rows]


def test_pandas_parquet_with_image_structs_is_read(tmp_path):
    for split in ("train", "test"):
        rows = image_rows(split)
        frame = pd.DataFrame({
            "photo": [{"bytes": png_bytes(row), "path": None} for row in rows],  # as datasets writes an Image column
            "label": [row["label"] for row in rows],
        })
        frame.to_parquet(tmp_path / f"{split}.parquet")
    written = pq.read_schema(tmp_path / "train.parquet").field("photo").type
    assert written == pa.struct([("bytes", pa.binary()), ("path", pa.null())])  # no datasets.Image in the file
    # `photo` is no candidate name: it is found as the only column that casts to datasets.Image
    assert_reads_back(load_own_dataset(dataset_name=str(tmp_path)))


@pytest.mark.parametrize("data_subfolder", ["", "data"])
def test_csv_of_relative_paths_is_read_from_the_csv_folder(tmp_path, data_subfolder):
    folder = tmp_path / data_subfolder  # the CSV files' folder, inside the dataset folder or the dataset folder itself
    for split in ("train", "test"):
        rows = image_rows(split)
        write_images(folder / "images", rows)
        pd.DataFrame({
            "path": [f"images/{row['file']}" for row in rows],  # relative to the CSV file
            "category": [row["label"] for row in rows],
        }).to_csv(folder / f"{split}.csv", index=False)
    # `path` is no candidate name: it is found as the only column of image file names (`category` holds none)
    benchmark = load_own_dataset(dataset_name=str(tmp_path), label_column="category")
    assert_reads_back(benchmark)
    stored = benchmark.splits["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]["path"]
    assert stored == str(folder.resolve() / "images" / image_rows("train")[0]["file"])


@pytest.mark.parametrize("lines", [True, False], ids=["jsonl", "json"])
def test_json_of_absolute_paths_and_integer_labels_is_read(tmp_path, lines):
    images, folder = tmp_path / "elsewhere", tmp_path / "data"
    folder.mkdir()
    for split in ("train", "test"):
        rows = image_rows(split)
        write_images(images, rows)
        pd.DataFrame({
            "file": [str(images / row["file"]) for row in rows],  # absolute paths, kept as they are
            "label": [CLASSES.index(row["label"]) for row in rows],
        }).to_json(folder / f"{split}.json{'l' if lines else ''}", orient="records", lines=lines)
    benchmark = load_own_dataset(dataset_name=str(folder), image_column="file")
    assert_reads_back(benchmark, label_of=lambda row: str(CLASSES.index(row["label"])))  # integer ids name classes


def write_metadata(folder: Path, split: str, suffix: str) -> list[dict]:
    """An imagefolder of the split's images with a metadata file: `file_name`, `label` (the class) and `legs`."""
    rows = image_rows(split)
    write_images(folder, rows)
    frame = pd.DataFrame({
        "file_name": [row["file"] for row in rows],
        "label": [row["label"] for row in rows],
        "legs": [LEGS[row["label"]] for row in rows],
    })
    if suffix == "csv":
        frame.to_csv(folder / "metadata.csv", index=False)
    else:
        frame.to_json(folder / "metadata.jsonl", orient="records", lines=True)
    return rows


LEGS = {"ant": "six", "bee": "six", "cow": "four"}  # a second label column of the metadata


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_imagefolder_with_metadata_per_split_folder(tmp_path, suffix):
    for split in ("train", "test"):
        write_metadata(tmp_path / split, split, suffix)
    folders = dict(train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"))
    assert_reads_back(load_own_dataset(**folders))  # `label` of the metadata
    benchmark = load_own_dataset(**folders, label_column="legs")
    assert benchmark.class_counts == [1, 8]  # four legs: the cow; six: 5 ants and 3 bees
    assert_reads_back(benchmark, label_of=lambda row: LEGS[row["label"]])


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_imagefolder_with_metadata_as_dataset_name(tmp_path, suffix):
    for split in ("train", "test"):
        write_metadata(tmp_path / split, split, suffix)
    assert_reads_back(load_own_dataset(dataset_name=str(tmp_path)))
    assert_reads_back(load_own_dataset(dataset_name=str(tmp_path), label_column="legs"),
                      label_of=lambda row: LEGS[row["label"]])


# ------------------------------------------------------------------------------------------------------------------
# Refusals, before any compute
# ------------------------------------------------------------------------------------------------------------------


def test_missing_image_path_is_named_with_its_row_and_column(tmp_path):
    for split in ("train", "test"):
        rows = image_rows(split)
        write_images(tmp_path / "images", rows)
        paths, labels = [f"images/{row['file']}" for row in rows], [row["label"] for row in rows]
        pd.DataFrame({"path": paths, "label": labels}).to_csv(tmp_path / f"{split}.csv", index=False)
    missing = tmp_path / "images" / image_rows("test")[3]["file"]
    missing.unlink()
    message = re.escape(f"image file {missing} (row 3 of the test split, column 'path') not found: correct its path")
    with pytest.raises(FileNotFoundError, match=message):
        load_own_dataset(dataset_name=str(tmp_path))


def test_missing_metadata_file_name_is_named(tmp_path):
    for split in ("train", "test"):
        write_metadata(tmp_path / split, split, "csv")
    missing = tmp_path / "train" / image_rows("train")[4]["file"]
    missing.unlink()
    message = re.escape(f"image file {missing} (row 4 of the train split, column 'image') not found")
    with pytest.raises(FileNotFoundError, match=message):
        load_own_dataset(train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"))


def test_relative_paths_in_data_files_of_several_folders_are_refused(tmp_path):
    write_images(tmp_path / "images", image_rows("train"))
    for part, rows in enumerate((image_rows("train")[:4], image_rows("train")[4:])):
        folder = tmp_path / "train" / ("" if part == 0 else "more")
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"image": [f"../images/{row['file']}" for row in rows], "label": [row["label"] for row in rows]}
                     ).to_csv(folder / f"part{part}.csv", index=False)
    with pytest.raises(ValueError, match=r"train split's data files lie in several folders .*write absolute paths"):
        load_own_dataset(dataset_name=str(tmp_path), train_val_split=0.2)


def test_column_that_holds_no_images_is_named(tmp_path):
    rows = image_rows("train")
    pd.DataFrame({"image": list(range(len(rows))), "label": [row["label"] for row in rows]}).to_parquet(
        tmp_path / "train.parquet"
    )
    with pytest.raises(ValueError, match=r"image column 'image' of the train split has feature Value\('int64'\)"):
        load_own_dataset(dataset_name=str(tmp_path), train_val_split=0.2)
