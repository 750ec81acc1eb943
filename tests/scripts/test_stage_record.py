"""What a real stage of recipes/train.py's job says about how it ran (mislas_hf.scripts.train.run_stage): the line it
logs at its start (device, processes, threads, precision, global batch) and the length of training its model card
states, on a `--max_steps 3` run of real CIFAR-10-LT; the card of the same model only evaluated states no length."""

import json
import logging
import math
from pathlib import Path

import torch

from mislas_hf.scripts.arguments import parse_arguments
from mislas_hf.scripts.evaluate import main as evaluate_main
from mislas_hf.scripts.train import train
from mislas_hf.training_args import native_bf16_available

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_max_steps_run_logs_how_it_computes_and_its_card_states_the_steps_trained(
    cifar10_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the user's count: kept as it is
    threads = torch.get_num_threads()
    flags = [
        "--config", str(REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"), "--dataset_name", str(cifar10_dir),
        "--output_dir", str(tmp_path), "--stage", "1", "--max_steps", "3", "--max_train_samples", "400",
        "--max_eval_samples", "200", "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "100",
        "--save_strategy", "no",
    ]
    with caplog.at_level(logging.INFO, logger="mislas_hf"):
        train(*parse_arguments(flags)[:3])

    precision = "bf16" if native_bf16_available(use_cpu=True) else "fp32"  # the default: bf16 where it is native
    assert (
        f"stage 1 on cpu: 1 processes, {threads} threads per process, precision {precision}, global batch 32 = "
        "32 per device x 1 processes x 1 accumulation steps, learning rate 0.1"
    ) in caplog.text
    assert f"training on {threads} threads per process, the count you chose" in caplog.text

    training_images = sum(json.loads((tmp_path / "stage1/config.json").read_text())["class_counts"])
    epochs = 3 / math.ceil(training_images / 32)  # steps / batches per epoch (the last batch is kept)
    card = (tmp_path / "stage1/README.md").read_text()
    assert (
        f"**Length of training (this stage):** 3 optimizer steps of 32 images, {epochs:.4g} epochs of the training "
        "set: `--max_steps 3` set the length, in place of the 200 epochs of the configuration."
    ) in card

    # evaluated again by recipes/evaluate_model.py's job: it trained nothing, and its card says so
    evaluate_main([
        str(tmp_path / "stage1"), "--dataset", "cifar10-lt", "--dataset_name", str(cifar10_dir),
        "--max_eval_samples", "200", "--output_dir", str(tmp_path / "evaluated"), "--report_to", "none",
        "--per_device_eval_batch_size", "100",
    ])
    card = (tmp_path / "evaluated/README.md").read_text()
    assert "Length of training" not in card
    assert "This job did not train the weights (it evaluated or calibrated a saved model)" in card
