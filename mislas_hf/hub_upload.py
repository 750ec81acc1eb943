"""The upload of a saved MiSLAS model folder (weights, config, code files, image processor, card, diagram) to the
Hugging Face Hub, in one commit with `HfApi.upload_folder` (`push_model_folder`)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from .modelcard import CARD_FILENAME

NOT_UPLOADED = (".*", "*/.*")
"""`ignore_patterns` of the upload: hidden files and folders (`.cache`, `.git`, ...) stay local."""


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
):
    """
    Upload a `save_pretrained` folder to the Hub model repo `repo_id`.

    Checks before any request that the folder holds `config.json`, the weights and the `README.md` card, then creates
    the repo if needed (`HfApi.create_repo(exist_ok=True)`) and, for a `revision` other than `main`, the branch, and
    uploads every file of `folder` but hidden ones (`NOT_UPLOADED`: `.cache`, `.git`, ...) with
    `HfApi.upload_folder`: one commit for a model folder (huggingface_hub splits only uploads of hundreds of files
    or over 100 MB of small files into several). `token=None` uses the usual login (`HF_TOKEN` or `hf auth login`);
    the token is only sent as an HTTP header, never written or printed. Returns the `CommitInfo`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist: save the model with save_pretrained first")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: save the model with save_pretrained first")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise FileNotFoundError(f"{folder} has no model.safetensors: save the model with save_pretrained first")
    if not (folder / CARD_FILENAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CARD_FILENAME}: write the card with write_model_card first")
    if not commit_message.strip():
        raise ValueError("commit_message is empty: say what this upload is")

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True, token=token)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, commit_message=commit_message, repo_type="model", revision=revision,
        ignore_patterns=list(NOT_UPLOADED), token=token,  # a new list: upload_folder appends its own patterns to it
    )


__all__ = ["NOT_UPLOADED", "push_model_folder"]
