"""recipes/train.py's job (`mislas_hf.scripts.train.main`) on own data in the formats people have: a parquet file
written by pandas (images as the struct `{bytes, path}`) and a CSV of image paths relative to the CSV, both stages
end to end on the CPU. The images are written here (small, random, PNG) and the saved model is evaluated again on
them, read independently of the loader."""

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mislas_hf import MislasForImageClassification
from mislas_hf.data import Preprocessing, make_transform
from mislas_hf.scripts.train import main

TRAIN_COUNTS = {"ant": 12, "bee": 6, "cow": 3, "doe": 1}  # a long tail; sorted names = class ids
TEST_PER_CLASS = 2
CLASSES = sorted(TRAIN_COUNTS)


def random_images(split: str) -> list[tuple[str, Image.Image]]:
    """(class name, image) of a split, classes interleaved; 12x10 RGB images of seeded random pixels."""
    counts = TRAIN_COUNTS if split == "train" else dict.fromkeys(TRAIN_COUNTS, TEST_PER_CLASS)
    rng = np.random.default_rng(0 if split == "train" else 1)
    labels = [name for name, n in counts.items() for _ in range(n)]
    labels = [labels[k] for k in rng.permutation(len(labels))]
    return [(name, Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))) for name in labels]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_pandas_parquet(folder: Path) -> None:
    for split in ("train", "test"):
        rows = random_images(split)
        pd.DataFrame({
            "image": [{"bytes": png(image), "path": None} for _, image in rows],
            "label": [name for name, _ in rows],
        }).to_parquet(folder / f"{split}.parquet")


def write_csv_of_paths(folder: Path) -> None:
    (folder / "pictures").mkdir()
    for split in ("train", "test"):
        rows = random_images(split)
        for k, (_, image) in enumerate(rows):
            image.save(folder / "pictures" / f"{split[:2]}{k:03d}.png")  # no split name: not a data file of a split
        pd.DataFrame({
            "file": [f"pictures/{split[:2]}{k:03d}.png" for k in range(len(rows))],  # relative to the CSV
            "species": [name for name, _ in rows],
        }).to_csv(folder / f"{split}.csv", index=False)


def held_out(n: int, fraction: float) -> int:
    """Images of a class of n that `--validation_split_percentage` holds out: round half up, one kept in training."""
    return min(math.floor(fraction * n + 0.5), n - 1)


FORMATS = {
    "pandas_parquet": (write_pandas_parquet, []),
    # the CSV run also holds out 25 % of every class for validation: the single `doe` image stays in training
    "csv_of_paths": (write_csv_of_paths, ["--label_column_name", "species", "--validation_split_percentage", "25"]),
}


@pytest.mark.parametrize("data_format", list(FORMATS))
def test_own_format_trains_both_stages(tmp_path, data_format, caplog):
    write, extra_flags = FORMATS[data_format]
    data = tmp_path / "my-animals"
    data.mkdir()
    write(data)
    output_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="mislas_hf"):
        results = main([
            "--dataset_name", str(data), "--output_dir", str(output_dir),
            "--max_steps", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--samples_per_class", "2", "--dataloader_num_workers", "0", "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", "1", "--use_cpu", "true", *extra_flags,
        ])
    fraction = 0.25 if "--validation_split_percentage" in extra_flags else 0.0
    expected_counts = [TRAIN_COUNTS[name] - held_out(TRAIN_COUNTS[name], fraction) for name in CLASSES]
    if fraction:
        assert expected_counts == [9, 4, 2, 1]  # ant, bee, cow, doe
        assert "classes ['doe'] are too small to give images to the validation split" in caplog.text
    else:
        assert expected_counts == [12, 6, 3, 1]
    test_images = TEST_PER_CLASS * len(CLASSES)
    for stage in ("stage1", "stage2"):
        folder = output_dir / stage
        config = json.loads((folder / "config.json").read_text())
        assert config["class_counts"] == expected_counts
        assert [config["id2label"][str(k)] for k in range(len(CLASSES))] == CLASSES
        assert f"test split of my-animals ({test_images} images)" in (folder / "README.md").read_text()
        metrics = json.loads((folder / "eval_results.json").read_text())
        assert metrics == pytest.approx(results[stage])
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == 2

    # the saved stage-2 model on the test images as written here: the run evaluated exactly these images and labels
    model = MislasForImageClassification.from_pretrained(output_dir / "stage2").eval()
    rows = random_images("test")
    batch = make_transform(Preprocessing.reference("cifar"), train=False)(
        {"image": [image for _, image in rows], "label": [CLASSES.index(name) for name, _ in rows]}
    )
    with torch.no_grad():
        log_probabilities = model(torch.stack(batch["pixel_values"])).logits.double().log_softmax(-1)
    labels = torch.tensor(batch["labels"])
    accuracy = (log_probabilities.argmax(-1) == labels).double().mean().item()
    nll = -log_probabilities[torch.arange(len(labels)), labels].mean().item()
    assert results["stage2"]["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert results["stage2"]["eval_nll"] == pytest.approx(nll, abs=1e-5)
