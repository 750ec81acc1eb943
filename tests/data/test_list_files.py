"""mislas_hf.data.list_files: the official split lists of ImageNet-LT / Places-LT / iNaturalist 2018, classes
re-indexed by descending training count in the reference's tie order."""

import collections

import pytest
from PIL import Image

from mislas_hf.data import (
    Preprocessing,
    class_counts,
    dataset_labels,
    load_list_file_dataset,
    make_transform,
    reference_class_order,
)

IMAGENET = Preprocessing.reference("imagenet")
"""The reference's ImageNet preprocessing: 224 crop of a 256 resize, ImageNet mean/std, the `imagenet` augmentation."""


def test_places_lt_lists_are_remapped_by_descending_count(splits_dir):
    dd = load_list_file_dataset(
        splits_dir / "Places_LT_train.txt", splits_dir / "Places_LT_test.txt", "/images", check_files=False
    )
    train, test = dd["train"], dd["test"]
    assert len(train) == 62500 and len(test) == 36500
    counts = class_counts(train)
    assert len(counts) == 365 and train.features["label"].num_classes == 365
    assert counts[0] == 4980 and counts[-1] == 5 and sum(counts) == 62500
    assert counts == sorted(counts, reverse=True)

    # independent mapping: ids by descending training count; ties in the reference's np.argsort order (numpy 1.19's
    # unstable introsort, emulated by reference_class_order and checked against numpy 1.24 in test_convert)
    def read(name):
        return [line.split() for line in (splits_dir / name).read_text().splitlines() if line.strip()]

    train_lines, test_lines = read("Places_LT_train.txt"), read("Places_LT_test.txt")
    original = collections.Counter(int(label) for _, label in train_lines)
    order = reference_class_order([-original[c] for c in range(365)])
    assert [original[c] for c in order] == sorted(original.values(), reverse=True)
    new_id = {orig: new for new, orig in enumerate(order)}
    assert dataset_labels(train) == [new_id[int(label)] for _, label in train_lines]
    assert dataset_labels(test) == [new_id[int(label)] for _, label in test_lines]
    # by hand: original class 0 (airfield) has 219 training images and 71 classes have more
    assert original[0] == 219 and sum(count > 219 for count in original.values()) == 71
    assert test_lines[0] == ["val_256/Places365_val_00003597.jpg", "0"]
    assert counts[dataset_labels(test)[0]] == 219
    assert train.features["label"].names[new_id[0]] == "orig_0"
    assert train.with_format("arrow")["image"][0]["path"].as_py() == "/images/data_256/a/airfield/00004851.jpg"


def test_list_file_dataset_with_images(tmp_path, make_images, write_list):
    train_entries = [("a/0.jpg", 7), ("b/0.jpg", 2), ("a/1.jpg", 7), ("c/0.png", 5), ("a/2.jpg", 7), ("b/1.jpg", 2)]
    test_entries = [("t/0.jpg", 2), ("t/1.jpg", 5), ("t/2.jpg", 7)]
    make_images(tmp_path, [name for name, _ in train_entries + test_entries])
    dd = load_list_file_dataset(
        write_list(tmp_path / "train.txt", train_entries), write_list(tmp_path / "test.txt", test_entries), tmp_path
    )
    # counts: 7 -> 3, 2 -> 2, 5 -> 1, then the absent ids 0, 1, 3, 4, 6 (count 0) in original order
    assert dd["train"].features["label"].names == [f"orig_{c}" for c in (7, 2, 5, 0, 1, 3, 4, 6)]
    assert dataset_labels(dd["train"]) == [0, 1, 0, 2, 0, 1]
    assert dataset_labels(dd["test"]) == [1, 2, 0]
    assert class_counts(dd["train"]) == [3, 2, 1, 0, 0, 0, 0, 0]
    image = dd["test"][1]["image"]
    assert isinstance(image, Image.Image) and image.size == (40, 30)

    dd["test"].set_transform(make_transform(IMAGENET, train=False))
    item = dd["test"][2]
    assert item["pixel_values"].shape == (3, 224, 224) and item["labels"] == 0


def test_list_file_dataset_missing_files_and_bad_lines(tmp_path, make_images, write_list):
    make_images(tmp_path, ["a/0.jpg", "t/0.jpg"])
    train = write_list(tmp_path / "train.txt", [("a/0.jpg", 0), ("a/missing.jpg", 1)])
    test = write_list(tmp_path / "test.txt", [("t/0.jpg", 0)])
    with pytest.raises(FileNotFoundError, match=r"missing.jpg") as error:
        load_list_file_dataset(train, test, tmp_path)
    assert str(tmp_path) in str(error.value) and "train.txt" in str(error.value)
    assert len(load_list_file_dataset(train, test, tmp_path, check_files=False)["train"]) == 2
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_list_file_dataset(tmp_path / "nope.txt", test, tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("a/0.jpg 0\na/0.jpg zero\n")
    with pytest.raises(ValueError, match="bad.txt, line 2"):
        load_list_file_dataset(bad, test, tmp_path)
