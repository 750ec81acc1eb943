"""Your own data (`mislas_hf.data.own`, `--train_dir` / `--dataset_name` without `--dataset`): folders and parquet files
built here from real CIFAR-10 images with a natural long tail, mixed sizes, modes and formats; both stages end to end;
every refusal names its culprit."""

import io
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import pipeline

from mislas_hf import MislasForImageClassification
from mislas_hf.calibration import calibration_metrics
from mislas_hf.data import BENCHMARKS, Preprocessing, load_own_dataset, make_transform
from mislas_hf.scripts.arguments import parse_arguments
from mislas_hf.scripts.train import train

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]  # CIFAR-10 labels 0-5
TRAIN_COUNTS = [40, 24, 12, 8, 4, 2]  # natural tail, sorted names = imagefolder class order
TEST_PER_CLASS = 3
MANY, FEW = 20, 5  # thresholds of the runs: Many > 20, Medium 5-20, Few < 5
# (width, height, mode, format): sizes 24-80 px, mostly non-square; RGB, grayscale, RGBA, palette, CMYK; PNG and JPEG
VARIANTS = [
    (24, 40, "RGB", "JPEG"), (80, 56, "L", "PNG"), (48, 30, "RGBA", "PNG"),
    (32, 32, "P", "PNG"), (64, 72, "CMYK", "JPEG"), (40, 24, "L", "JPEG"),
]


@pytest.fixture(scope="module")
def cifar_images(cifar10_dir):
    """The first 700 CIFAR-10 training images as PIL images, grouped by label."""
    batch = next(pq.ParquetFile(cifar10_dir / "train-00000-of-00001.parquet").iter_batches(batch_size=700))
    by_label = {}
    for image, label in zip(batch.column("img").to_pylist(), batch.column("label").to_pylist()):
        by_label.setdefault(label, []).append(Image.open(io.BytesIO(image["bytes"])).convert("RGB"))
    return by_label


def varied(image: Image.Image, index: int) -> tuple[Image.Image, str]:
    width, height, mode, image_format = VARIANTS[index % len(VARIANTS)]
    image = image.resize((width, height), Image.BILINEAR)
    if mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE)
    else:
        image = image.convert(mode)
    return image, image_format


def write_folder(root: Path, images_per_class: dict[str, list[Image.Image]]) -> list[Path]:
    files = []
    for name, images in images_per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            image, image_format = varied(image, index)
            path = root / name / f"{index:03d}.{'png' if image_format == 'PNG' else 'jpg'}"
            image.save(path, format=image_format)
            files.append(path)
    return files


@pytest.fixture(scope="module")
def own_imagefolder(cifar_images, tmp_path_factory):
    """train/ (counts TRAIN_COUNTS) and test/ (TEST_PER_CLASS each) imagefolders of real CIFAR-10 images."""
    root = tmp_path_factory.mktemp("own_imagefolder")
    train = {name: cifar_images[c][:n] for c, (name, n) in enumerate(zip(CLASS_NAMES, TRAIN_COUNTS))}
    test = {name: cifar_images[c][-TEST_PER_CLASS:] for c, name in enumerate(CLASS_NAMES)}
    write_folder(root / "train", train)
    write_folder(root / "test", test)
    return root


def run_flags(output_dir, *extra):
    return [
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "32",
        "--samples_per_class", "2",
        "--dataloader_num_workers", "0",
        "--save_strategy", "no",
        "--report_to", "none",
        "--logging_steps", "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def imagefolder_run(own_imagefolder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("own_run")
    flags = run_flags(
        output_dir, "--train_dir", str(own_imagefolder / "train"), "--test_dir", str(own_imagefolder / "test"),
        "--many_shot_threshold", str(MANY), "--few_shot_threshold", str(FEW),
    )
    results = train(*parse_arguments(flags)[:3])
    return output_dir, results


def independent_groups(counts, many, few):
    return {
        "many": [c for c, n in enumerate(counts) if n > many],
        "medium": [c for c, n in enumerate(counts) if few <= n <= many],
        "few": [c for c, n in enumerate(counts) if n < few],
    }


def test_imagefolder_run_keeps_the_folder_counts_and_groups_by_thresholds(imagefolder_run, own_imagefolder):
    output_dir, results = imagefolder_run
    stage2 = output_dir / "stage2"
    config = json.loads((stage2 / "config.json").read_text())
    assert config["class_counts"] == TRAIN_COUNTS
    assert [config["id2label"][str(c)] for c in range(6)] == CLASS_NAMES
    assert (config["many_shot_threshold"], config["few_shot_threshold"]) == (MANY, FEW)
    assert config["class_group_boundaries"] is None
    groups = independent_groups(TRAIN_COUNTS, MANY, FEW)
    assert groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}

    # an independent evaluation of the saved model on the test folder, grouped by the counted thresholds
    model = MislasForImageClassification.from_pretrained(stage2).eval()
    test = datasets.load_dataset("imagefolder", data_dir=str(own_imagefolder / "test"), split="train")
    batch = make_transform(Preprocessing.reference("cifar"), train=False)(test[:])
    with torch.no_grad():
        logits = model(torch.stack(batch["pixel_values"])).logits.double()
    labels = torch.tensor(batch["labels"])
    correct = (logits.argmax(-1) == labels).double()
    eval_results = json.loads((stage2 / "eval_results.json").read_text())
    assert eval_results["eval_accuracy"] == pytest.approx(correct.mean().item(), abs=1e-9)
    for name, members in groups.items():
        in_group = torch.isin(labels, torch.tensor(members))
        assert eval_results[f"eval_{name}_accuracy"] == pytest.approx(correct[in_group].mean().item(), abs=1e-9)
    confidences = logits.softmax(-1).max(-1).values
    edges = torch.linspace(0, 1, 16, dtype=torch.float64)
    ece = sum(
        (in_bin.sum() / len(labels)) * (correct[in_bin].mean() - confidences[in_bin].mean()).abs()
        for lo, hi in zip(edges[:-1], edges[1:])
        if (in_bin := (confidences > lo) & (confidences <= hi)).any()
    )
    assert eval_results["eval_ece"] == pytest.approx(float(ece), abs=1e-6)
    assert results["stage2"]["eval_ece"] == eval_results["eval_ece"]


def test_imagefolder_card_reports_ece_and_the_thresholds(imagefolder_run, own_imagefolder):
    output_dir, _ = imagefolder_run
    card = (output_dir / "stage2" / "README.md").read_text()
    ece = json.loads((output_dir / "stage2" / "eval_results.json").read_text())["eval_ece"]
    assert f"{100 * ece:.2f}" in card
    assert "type: ece" in card
    assert f"Many > {MANY}, Medium {FEW}-{MANY}, Few < {FEW}" in card
    assert f"test split of {own_imagefolder.name} " in card  # provenance: the evaluation split and the data folder


def test_pipeline_on_a_training_file_returns_the_folder_class_names(imagefolder_run, own_imagefolder):
    output_dir, _ = imagefolder_run
    classifier = pipeline("image-classification", model=str(output_dir / "stage2"))
    path = sorted((own_imagefolder / "train" / "dog").iterdir())[0]
    predictions = classifier(str(path), top_k=6)
    assert sorted(p["label"] for p in predictions) == sorted(CLASS_NAMES)
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def parquet_folder(cifar_images, tmp_path_factory):
    """One train parquet file, columns `picture` (PNG/JPEG bytes of varied sizes and modes) and `category` (names)."""
    root = tmp_path_factory.mktemp("own_parquet")
    counts = {"cat": 30, "dog": 12, "frog": 6, "horse": 1}
    pictures, categories = [], []
    for label, (name, n) in zip((3, 5, 6, 7), counts.items()):
        for index, image in enumerate(cifar_images[label][:n]):
            image, image_format = varied(image, index)
            buffer = io.BytesIO()
            image.save(buffer, format=image_format)
            pictures.append({"bytes": buffer.getvalue(), "path": None})
            categories.append(name)
    features = datasets.Features({"picture": datasets.Image(), "category": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"picture": pictures, "category": categories}, features=features)
    dataset.to_parquet(str(root / "train-00000-of-00001.parquet"))
    return root, counts


def test_parquet_run_with_other_columns_and_a_held_out_split(parquet_folder, tmp_path):
    folder, counts = parquet_folder
    fraction = 0.25
    flags = run_flags(
        tmp_path, "--dataset_name", str(folder), "--image_column_name", "picture", "--label_column_name", "category",
        "--train_val_split", str(fraction),
    )
    results = train(*parse_arguments(flags)[:3])
    held_out = {name: min(math.floor(fraction * n + 0.5), n - 1) for name, n in counts.items()}
    expected = [counts[name] - held_out[name] for name in sorted(counts)]
    assert expected == [22, 9, 4, 1]  # horse's single image stays in training
    for stage in ("stage1", "stage2"):
        config = json.loads((tmp_path / stage / "config.json").read_text())
        assert config["class_counts"] == expected
        assert list(config["label2id"]) == sorted(counts)
    eval_results = json.loads((tmp_path / "stage2" / "eval_results.json").read_text())
    card = (tmp_path / "stage2" / "README.md").read_text()
    assert f"held-out 0.25 of the training set split of {folder.name} ({sum(held_out.values())} images)" in card
    assert "eval_ece" in eval_results and "type: ece" in card
    # default thresholds (100 / 20): cat (22) is Medium, the others Few, and Many is absent rather than 0
    assert "eval_medium_accuracy" in eval_results and "eval_few_accuracy" in eval_results
    assert "eval_many_accuracy" not in eval_results
    assert results["stage2"]["eval_accuracy"] == eval_results["eval_accuracy"]


def test_held_out_split_keeps_single_image_classes_in_training(parquet_folder):
    folder, _ = parquet_folder
    data = load_own_dataset(dataset_name=str(folder), image_column="picture", label_column="category",
                            train_val_split=0.25)
    assert data.class_names == ["cat", "dog", "frog", "horse"]
    assert data.kept_whole_classes == (3,)
    assert data.class_group_boundaries is None


def test_own_data_carries_the_preprocessing_it_is_given(parquet_folder):
    folder, _ = parquet_folder
    options = dict(dataset_name=str(folder), image_column="picture", label_column="category", train_val_split=0.25)
    assert load_own_dataset(**options).preprocessing == Preprocessing.reference("cifar")  # the default
    inat = BENCHMARKS["inat2018"].preprocessing.replace(resample="bicubic")
    assert load_own_dataset(**options, preprocessing=inat).preprocessing == inat


def test_empty_groups_are_absent_not_zero():
    logits = np.eye(3)[[0, 1, 2, 0]] * 5.0
    metrics = calibration_metrics(logits, [0, 1, 2, 1], class_counts=[150, 40, 3])
    assert metrics["many_accuracy"] == 1.0 and metrics["few_accuracy"] == 1.0 and metrics["medium_accuracy"] == 0.5
    metrics = calibration_metrics(logits, [0, 1, 2, 1], class_counts=[15, 4, 3])
    assert "many_accuracy" not in metrics and "medium_accuracy" not in metrics
    assert metrics["few_accuracy"] == 0.75
    metrics = calibration_metrics(logits, [0, 1, 2, 1], class_counts=[15, 4, 3], many_threshold=10, few_threshold=4)
    assert metrics["many_accuracy"] == 1.0 and metrics["medium_accuracy"] == 0.5 and metrics["few_accuracy"] == 1.0


# ------------------------------------------------------------------------------------------------------------------
# Refusals, each naming its culprit, before any compute
# ------------------------------------------------------------------------------------------------------------------


def small_folder(root: Path, classes: dict[str, int], cifar_images) -> Path:
    write_folder(root, {name: cifar_images[c][:n] for c, (name, n) in enumerate(classes.items())})
    return root


def test_missing_image_or_label_column_lists_the_columns(parquet_folder):
    folder, _ = parquet_folder
    with pytest.raises(ValueError, match=r"no label column found.*\['picture', 'category'\].*--label_column_name"):
        load_own_dataset(dataset_name=str(folder), train_val_split=0.25)  # `picture`, the only image, is found
    with pytest.raises(ValueError, match=r"image column 'photo' not found.*\['picture', 'category'\]"):
        load_own_dataset(dataset_name=str(folder), image_column="photo", label_column="category", train_val_split=0.25)
    with pytest.raises(ValueError, match=r"label column 'kind' not found.*\['picture', 'category'\]"):
        load_own_dataset(dataset_name=str(folder), image_column="picture", label_column="kind", train_val_split=0.25)


def test_label_column_of_another_type_is_named(tmp_path, cifar_images):
    image = cifar_images[0][0]
    features = datasets.Features({"image": datasets.Image(), "score": datasets.Value("float32")})
    datasets.Dataset.from_dict({"image": [image, image], "score": [0.5, 1.5]}, features=features).to_parquet(
        str(tmp_path / "train-00000-of-00001.parquet")
    )
    with pytest.raises(ValueError, match=r"label column 'score' has feature .*float32.*ClassLabel"):
        load_own_dataset(dataset_name=str(tmp_path), label_column="score", train_val_split=0.5)


def test_class_without_training_images_is_named(tmp_path, cifar_images):
    image = cifar_images[0][0]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["ant", "bee", "cow"])})
    for split, labels in (("train", [0, 0, 1]), ("test", [0, 1])):
        datasets.Dataset.from_dict({"image": [image] * len(labels), "label": labels}, features=features).to_parquet(
            str(tmp_path / f"{split}-00000-of-00001.parquet")
        )
    with pytest.raises(ValueError, match=r"class\(es\) \['cow'\] have no training image"):
        load_own_dataset(dataset_name=str(tmp_path))


def test_evaluation_class_unseen_in_training_is_named(tmp_path, cifar_images):
    small_folder(tmp_path / "train", {"ant": 2, "bee": 2}, cifar_images)
    small_folder(tmp_path / "test", {"ant": 1, "bee": 1, "cow": 1}, cifar_images)
    with pytest.raises(ValueError, match=r"class\(es\) \['cow'\] of the test split have no training image"):
        load_own_dataset(train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"))


def test_corrupted_image_is_named(tmp_path, cifar_images):
    small_folder(tmp_path / "train", {"ant": 3, "bee": 2}, cifar_images)
    broken = tmp_path / "train" / "bee" / "000.jpg"
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 3])
    with pytest.raises(ValueError, match=r"000\.jpg of the train split cannot be decoded"):
        load_own_dataset(train_dir=str(tmp_path / "train"), train_val_split=0.3)


def test_no_evaluation_split_asks_for_train_val_split(tmp_path, cifar_images):
    small_folder(tmp_path / "train", {"ant": 2, "bee": 2}, cifar_images)
    with pytest.raises(ValueError, match=r"no 'test' or 'validation' split.*--train_val_split"):
        load_own_dataset(train_dir=str(tmp_path / "train"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "my-own"], r"--dataset my-own is not a paper benchmark"),
        (["--dataset", "cifar10-lt", "--train_dir", "x"], r"--train_dir are for your own data"),
        (["--few_shot_threshold", "50", "--many_shot_threshold", "10"], r"--few_shot_threshold 50"),
    ],
)
def test_inconsistent_data_options_are_refused(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        parse_arguments(["--output_dir", str(tmp_path), *flags])


def test_freeze_backbone_without_pretrained_weights_is_refused_before_loading_data(tmp_path):
    flags = run_flags(tmp_path, "--train_dir", str(tmp_path / "absent"), "--freeze_backbone", "true")
    with pytest.raises(ValueError, match="freeze_backbone needs pretrained weights"):
        train(*parse_arguments(flags)[:3])
