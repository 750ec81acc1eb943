"""Shared test set-up: no network, real data located through MISLAS_CIFAR10_DIR."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _cifar10_dir() -> Path:
    return Path(os.environ.get("MISLAS_CIFAR10_DIR", SHARED_DATA / "cifar10"))


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """Folder with the real CIFAR-10 parquet files; skips (and .ci/run then fails) when absent."""
    path = _cifar10_dir()
    if not (path / "train-00000-of-00001.parquet").is_file():
        pytest.skip(f"real CIFAR-10 not found in {path}: set MISLAS_CIFAR10_DIR to the folder with the parquet files")
    return path


@pytest.fixture(scope="session")
def splits_dir() -> Path:
    """Folder with the official ImageNet-LT / Places-LT / iNaturalist split lists."""
    path = Path(os.environ.get("MISLAS_SPLITS_DIR", SHARED_DATA / "splits"))
    if not (path / "Places_LT_train.txt").is_file():
        pytest.skip(f"official split lists not found in {path}: set MISLAS_SPLITS_DIR")
    return path
