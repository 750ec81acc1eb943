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


class RecordingHfApi:
    """Stand-in for `huggingface_hub.HfApi` inside `mislas_hf.hub` (the tests never reach the network): records each
    call, and for a commit the repo id, message and the bytes of every file it adds, read when the commit is made."""

    def __init__(self, uploads: list):
        self.uploads = uploads

    def create_repo(self, repo_id, **kwargs):
        self.uploads.append({"call": "create_repo", "repo_id": repo_id, "private": kwargs.get("private")})

    def create_branch(self, repo_id, branch, **kwargs):
        self.uploads.append({"call": "create_branch", "repo_id": repo_id, "branch": branch})

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        files = {operation.path_in_repo: Path(operation.path_or_fileobj).read_bytes() for operation in operations}
        self.uploads.append({"call": "create_commit", "repo_id": repo_id, "message": commit_message, "files": files})


@pytest.fixture(scope="module")
def hub_uploads():
    """The Hub calls of `mislas_hf.hub.push_model_folder` made by this module's tests, in order (no network)."""
    import mislas_hf.hub

    uploads = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mislas_hf.hub, "HfApi", lambda: RecordingHfApi(uploads))
        yield uploads
