"""recipes/train.py's job on real CIFAR-10-LT (mislas_hf.scripts.train): both stages end to end, the files and
cards it writes, refusals before training, multi-process runs, resume, and the saved model evaluated again."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as safetensors_load, load_file

from mislas_hf import MislasConfig, MislasForImageClassification
from mislas_hf.scripts.arguments import EvaluationArguments, parse_arguments
from mislas_hf.scripts.evaluate import evaluate
from mislas_hf.scripts.train import train
from mislas_hf.trainer import MislasTrainer

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def quick_run_flags(cifar10_dir, output_dir, *extra):
    return [
        "--config", str(REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"),
        "--dataset_name", str(cifar10_dir),
        "--output_dir", str(output_dir),
        "--max_train_samples", "400",
        "--max_eval_samples", "200",
        "--max_steps", "4",
        "--per_device_train_batch_size", "32",
        "--per_device_eval_batch_size", "100",
        "--dataloader_num_workers", "0",
        "--save_strategy", "no",
        "--logging_steps", "1",
        *extra,
    ]


TRAIN_REPO, EVALUATE_REPO = "mislas-org/cifar10-lt-quick", "mislas-org/cifar10-lt-evaluated"


@pytest.fixture(scope="module")
def both_stages(cifar10_dir, tmp_path_factory, hub_uploads):
    """One real two-stage run (a few steps per stage) shared by the end-to-end checks; it pushes to a recorded
    stand-in for the Hub."""
    output_dir = tmp_path_factory.mktemp("run")
    flags = quick_run_flags(cifar10_dir, output_dir, "--shift_bn", "true",  # the full method (CIFAR-10 configs: off)
                            "--push_to_hub", "--hub_model_id", TRAIN_REPO)
    model_args, data_args, training_args, config_text = parse_arguments(flags)
    results = train(model_args, data_args, training_args, config_yaml=config_text)
    return output_dir, results


def test_both_stages_write_the_documented_files(both_stages):
    output_dir, results = both_stages
    for stage in ("stage1", "stage2"):
        folder = output_dir / stage
        for name in ("config.json", "model.safetensors", "preprocessor_config.json", "eval_results.json",
                     "reliability_diagram.png", "README.md"):
            assert (folder / name).is_file(), f"{stage}/{name}"
        assert (folder / "reliability_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    all_results = json.loads((output_dir / "all_results.json").read_text())
    assert all_results["stage2"]["eval_accuracy"] == results["stage2"]["eval_accuracy"]
    config = json.loads((output_dir / "stage2/config.json").read_text())
    assert config["stage"] == 2 and config["head_mode"] == "mislas" and config["shift_bn"] is True
    assert config["class_group_boundaries"] == [3, 7]


def test_train_pushes_the_final_stage_folder_once(both_stages, hub_uploads):
    output_dir, _ = both_stages
    pushes = [upload for upload in hub_uploads if upload["repo_id"] == TRAIN_REPO]
    assert [upload["call"] for upload in pushes] == ["create_repo", "upload_folder"]
    commit = pushes[1]
    on_disk = {
        path.relative_to(output_dir / "stage2").as_posix(): path.read_bytes()
        for path in (output_dir / "stage2").rglob("*") if path.is_file()
    }
    assert commit["files"] == on_disk  # the whole stage-2 folder as it was written, nothing of stage 1
    assert {"model.safetensors", "config.json", "README.md", "preprocessor_config.json"} <= set(commit["files"])
    assert commit["files"]["model.safetensors"] != (output_dir / "stage1/model.safetensors").read_bytes()
    assert commit["message"] == "MiSLAS cifar10-lt, stage 2"
    assert f"{TRAIN_REPO}" in commit["files"]["README.md"].decode()  # the card's loading snippets name the repo


def test_card_of_the_real_run_carries_the_measured_metrics(both_stages):
    from huggingface_hub import ModelCard

    output_dir, results = both_stages
    card = ModelCard.load(output_dir / "stage2/README.md")
    measured = {result.metric_name: result.metric_value for result in card.data.eval_results}
    expected = results["stage2"]
    assert measured["Top-1 accuracy (%)"] == pytest.approx(round(100 * expected["eval_accuracy"], 2))
    assert measured["Many-shot accuracy (%)"] == pytest.approx(round(100 * expected["eval_many_accuracy"], 2))
    assert measured["ECE (15 bins, %)"] == pytest.approx(round(100 * expected["eval_ece"], 2))
    assert measured["NLL (nats)"] == pytest.approx(round(expected["eval_nll"], 4))
    assert all(result.dataset_split == "test" for result in card.data.eval_results)
    assert "(reliability_diagram.png)" in card.text
    assert "82.1" in card.text  # the paper's CIFAR-10-LT IF100 top-1, in its own table
    assert "shifted batch-norm statistics on): the MiSLAS classifier of Eq. (4)" in card.text
    stage1_card = ModelCard.load(output_dir / "stage1/README.md").text
    assert "Reported in the paper" not in stage1_card  # the paper's table is stage 2's
    assert "stage 1 (representation learning on the long-tailed training set" in stage1_card


def test_stage2_changes_only_the_head_and_bn_statistics(both_stages):
    output_dir, _ = both_stages
    stage1 = load_file(output_dir / "stage1/model.safetensors")
    stage2 = load_file(output_dir / "stage2/model.safetensors")
    assert stage1.keys() == stage2.keys()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for name in stage1:
        if name.startswith("mislas.") and not name.endswith(statistics):
            assert torch.equal(stage1[name], stage2[name]), f"{name} changed in stage 2"
    running_means = [name for name in stage1 if name.endswith("running_mean")]
    assert all(not torch.equal(stage1[n], stage2[n]) for n in running_means), "shift_bn must move BN statistics"
    assert torch.equal(stage1["classifier.weight"], stage2["classifier.weight"])  # W fixed in stage 2
    assert not torch.equal(stage1["classifier.scale"], stage2["classifier.scale"])  # s learned
    assert not torch.equal(stage1["classifier.delta_weight"], stage2["classifier.delta_weight"])  # ΔW learned
    assert torch.equal(stage1["classifier.scale"], torch.ones(10))  # stage 1 never touches s and ΔW
    assert torch.equal(stage1["classifier.delta_weight"], torch.zeros(10, 64))


def test_reported_metrics_match_an_independent_evaluation(both_stages, cifar10_dir):
    output_dir, results = both_stages
    from mislas_hf.data import Preprocessing, load_benchmark, make_transform, subset

    benchmark = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=str(cifar10_dir))
    test = subset(benchmark.splits["test"], 200, seed=0)  # the config's seed
    test.set_transform(make_transform(Preprocessing.reference("cifar"), train=False))
    model = MislasForImageClassification.from_pretrained(output_dir / "stage2").eval()
    batch = [test[i] for i in range(len(test))]
    pixels = torch.stack([item["pixel_values"] for item in batch])
    labels = torch.tensor([item["labels"] for item in batch])
    with torch.no_grad():
        log_probabilities = model(pixels).logits.double().log_softmax(-1)  # no underflow for very confident logits
    probabilities = log_probabilities.exp()
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).double()
    # ECE with 15 equal-width bins (a, b], written out directly
    ece = 0.0
    for low, high in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.double().mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    reported = json.loads((output_dir / "stage2/eval_results.json").read_text())
    assert reported["eval_accuracy"] == pytest.approx(correct.mean().item(), abs=1e-9)
    assert reported["eval_ece"] == pytest.approx(float(ece), abs=1e-6)
    nll = -log_probabilities[torch.arange(len(labels)), labels].mean().item()
    assert reported["eval_nll"] == pytest.approx(nll, abs=1e-5)
    many = labels < 3  # reference CIFAR-10 split: Many = classes 0-2
    assert reported["eval_many_accuracy"] == pytest.approx(correct[many].mean().item(), abs=1e-9)


def test_stage2_batches_are_class_balanced(cifar10_dir, tmp_path):
    model_args, data_args, training_args, _ = parse_arguments(quick_run_flags(cifar10_dir, tmp_path))
    from mislas_hf.scripts.data_setup import load_splits
    from mislas_hf.scripts.model_setup import plan_model
    from mislas_hf.scripts.train import stage_arguments

    benchmark, counts, train_set, _, _ = load_splits(data_args, training_args, plan_model(model_args))
    trainer = MislasTrainer(
        model=MislasForImageClassification(MislasConfig(num_labels=10, class_counts=counts)),
        args=stage_arguments(training_args, 2),
        train_dataset=train_set,
    )
    labels = []
    for batch in trainer.get_train_dataloader():
        labels.extend(batch["labels"].tolist())
    assert len(labels) == len(train_set)  # an epoch draws as many images as the training set has
    groups = [labels[i : i + 4] for i in range(0, len(labels), 4)]
    assert all(len(set(group)) == 1 for group in groups)  # 4 images per class in a row
    per_class = np.bincount(labels, minlength=10)
    uniform = len(labels) / 10
    assert per_class.min() >= 0.9 * uniform and per_class.max() <= 1.1 * uniform  # the data itself is 100:1
    assert counts[0] / counts[9] > 20


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--smooth_head", "0.6"], "smooth_head"),
        (["--stage", "2"], "model_name_or_path"),
    ],
)
def test_bad_input_fails_before_training(cifar10_dir, tmp_path, flags, message):
    (tmp_path / "keep.txt").write_text("already here")
    with pytest.raises(ValueError, match=message):
        model_args, data_args, training_args, _ = parse_arguments(quick_run_flags(cifar10_dir, tmp_path, *flags))
        train(model_args, data_args, training_args)
    assert (tmp_path / "keep.txt").read_text() == "already here"


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset: cifar10-lt\nsmoothing_head: 0.3\n")
    with pytest.raises(ValueError, match="smoothing_head"):
        parse_arguments(["--config", str(config), "--output_dir", str(tmp_path)])


def test_stage2_refuses_a_checkpoint_with_other_classes(both_stages, cifar10_dir, tmp_path):
    output_dir, _ = both_stages
    model = MislasForImageClassification(MislasConfig(num_labels=7, class_counts=[9, 8, 7, 6, 5, 4, 3]))
    model.save_pretrained(tmp_path / "seven")
    flags = quick_run_flags(cifar10_dir, tmp_path / "out", "--stage", "2", "--model_name_or_path", str(tmp_path / "seven"))
    with pytest.raises(ValueError, match="7 classes"):
        train(*parse_arguments(flags)[:3])


@pytest.mark.slow
def test_two_process_cpu_run(cifar10_dir, tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs both stages of the recipe (gloo)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "recipes/train.py"),
        *quick_run_flags(cifar10_dir, tmp_path, "--max_steps", "2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert set(results) == {"stage1", "stage2"}
    state = json.loads((tmp_path / "stage2/trainer_state.json").read_text())
    assert state["global_step"] == 2
    # the cards count the predictions gathered from both ranks: the 200 test images once each, not 2 x 200
    # (tests/test_distributed.py checks which images each rank evaluates)
    for stage in ("stage1", "stage2"):
        assert "(200 images)" in (tmp_path / stage / "README.md").read_text(), stage
    accuracy = results["stage2"]["eval_accuracy"] * 200
    assert accuracy == pytest.approx(round(accuracy), abs=1e-6)


RESUMED_BACKBONES = ("resnet32", "vit")
"""The backbones the resume tests train: a new ResNet-32, and a tiny pretrained ViT, whose tensors transformers saves
under their original checkpoint's names (its weight-conversion mapping): only the model class's own loading maps them
back (`mislas_hf.trainer.load_saved_weights`)."""


@pytest.fixture(scope="module")
def cifar_normalised_vit(tiny_vision_checkpoint, tmp_path_factory):
    """The tiny ViT checkpoint (`tiny_vision_checkpoint("vit")`, 32 px) with an image processor that normalises with
    CIFAR's mean/std, so that CIFAR-10-LT runs on it take the in-memory path, whose random augmentation runs in the
    trainer's batch hook. (Random per-image transforms in the main process do not resume exactly: Accelerate's
    loader fetches one batch ahead, so a checkpoint's RNG state already holds the next batch's draws.)"""
    from transformers import ViTImageProcessor

    from mislas_hf.data import CIFAR_MEAN, CIFAR_STD

    folder = tmp_path_factory.mktemp("cifar_normalised_vit")
    shutil.copytree(tiny_vision_checkpoint("vit"), folder, dirs_exist_ok=True)
    square = {"height": 32, "width": 32}
    ViTImageProcessor(size=square, image_mean=list(CIFAR_MEAN), image_std=list(CIFAR_STD)).save_pretrained(folder)
    return folder


def backbone_run_flags(backbone, cifar10_dir, output_dir, vit_folder, *extra):
    """`quick_run_flags` for a new ResNet-32 (the recipe config), or for `vit` the ViT checkpoint `vit_folder`
    fine-tuned on CIFAR-10-LT with the training defaults: the recipe config's `backbone: resnet32` would contradict
    the checkpoint's."""
    flags = quick_run_flags(cifar10_dir, output_dir, *extra)
    if backbone == "resnet32":
        return flags
    assert flags[0] == "--config"
    return ["--dataset", "cifar10-lt", "--model_name_or_path", str(vit_folder), "--report_to", "none", *flags[2:]]


def count_training_steps(monkeypatch, kill_at=None):
    """The stages of the training-mode `compute_loss` calls, in order (one per step); a `KeyboardInterrupt` ("the run
    is killed") in the step for which `kill_at(steps)` is true."""
    compute_loss, steps = MislasTrainer.compute_loss, []

    def counting(self, model, inputs, *args, **kwargs):
        if model.training:
            steps.append(self.stage)
            if kill_at is not None and kill_at(steps):
                raise KeyboardInterrupt("killed")
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(MislasTrainer, "compute_loss", counting)
    return steps


@pytest.mark.parametrize("backbone", RESUMED_BACKBONES)
def test_killed_run_resumes_to_the_same_weights(backbone, cifar10_dir, tmp_path, monkeypatch, cifar_normalised_vit):
    """Stage 1 for 6 steps in one go, and the same run killed during step 4 then resumed from checkpoint-3:
    identical weights (for the ViT, the backbone's fine-tuned weights come from the checkpoint, not from the
    pretrained folder the stage starts with). The finished stage re-run with --resume_from_checkpoint trains no step
    and saves the same weights again. (The runs share nothing but the seed, so this also checks that a rerun
    reproduces.)"""
    def stage1(output_dir, *extra):
        flags = backbone_run_flags(backbone, cifar10_dir, output_dir, cifar_normalised_vit, "--stage", "1",
                                   "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3", *extra)
        train(*parse_arguments(flags)[:3])
        return load_file(output_dir / "stage1/model.safetensors")

    steps = count_training_steps(monkeypatch, kill_at=lambda steps: os.environ.get("KILL_AT_STEP") == str(len(steps)))
    uninterrupted = stage1(tmp_path / "a")
    assert steps == [1] * 6
    steps.clear()
    monkeypatch.setenv("KILL_AT_STEP", "4")
    with pytest.raises(KeyboardInterrupt):
        stage1(tmp_path / "b")
    monkeypatch.delenv("KILL_AT_STEP")
    assert (tmp_path / "b/stage1/checkpoint-3").is_dir() and not (tmp_path / "b/stage1/model.safetensors").exists()
    start = load_file(tmp_path / "b/stage1/checkpoint-3/model.safetensors")  # (save_total_limit 1 deletes it later)
    steps.clear()
    resumed = stage1(tmp_path / "b", "--resume_from_checkpoint", "true")
    assert steps == [1] * 3  # steps 4 to 6
    steps.clear()
    rerun = stage1(tmp_path / "b", "--resume_from_checkpoint", "true")  # from checkpoint-6: the stage had finished
    assert steps == []
    assert uninterrupted.keys() == resumed.keys() == rerun.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(value, resumed[name]), name
        assert torch.equal(value, rerun[name]), name
    backbone_tensors = [name for name in uninterrupted if name.startswith("mislas.")]
    assert any(not torch.equal(uninterrupted[name], start[name]) for name in backbone_tensors)  # steps 4-6 trained it


def test_best_checkpoint_of_a_vit_is_loaded_whole(cifar10_dir, tmp_path, cifar_normalised_vit):
    """load_best_model_at_end on the ViT: stage 1 for 6 steps, evaluated on the held-out split and saved every 3
    steps, the best checkpoint the one with the highest loss (greater_is_better, so that it is checkpoint-3 and not
    the final weights): the saved model is checkpoint-3's, backbone included, not the step-6 weights."""
    flags = backbone_run_flags(
        "vit", cifar10_dir, tmp_path, cifar_normalised_vit, "--stage", "1", "--max_steps", "6",
        "--validation_split_percentage", "10", "--eval_strategy", "steps", "--eval_steps", "3", "--save_strategy",
        "steps", "--save_steps", "3", "--save_total_limit", "2", "--load_best_model_at_end", "true",
        "--metric_for_best_model", "loss", "--greater_is_better", "true",
    )
    train(*parse_arguments(flags)[:3])
    state = json.loads((tmp_path / "stage1/checkpoint-6/trainer_state.json").read_text())
    assert Path(state["best_model_checkpoint"]).name == "checkpoint-3"
    saved = load_file(tmp_path / "stage1/model.safetensors")
    best, last = (load_file(tmp_path / f"stage1/checkpoint-{step}/model.safetensors") for step in (3, 6))
    assert saved.keys() == best.keys()
    for name, value in best.items():
        assert torch.equal(saved[name], value), name
    backbone_tensors = [name for name in best if name.startswith("mislas.backbone.")]
    assert any(not torch.equal(best[name], last[name]) for name in backbone_tensors)  # steps 4-6 moved the backbone


@pytest.mark.parametrize("backbone", RESUMED_BACKBONES)
def test_run_killed_inside_stage2_resumes_to_the_uninterrupted_result(
    backbone, cifar10_dir, tmp_path, monkeypatch, cifar_normalised_vit
):
    """Both stages, 6 steps each, checkpoints every 5 steps (and at each stage's end). Stage 2 has 64 images per
    epoch = 4 batches of 16, so checkpoint-5 sits one batch into its second epoch (the class-aware stream of epoch 1).
    The run is killed during stage-2 step 6 and resumed with an explicit stage-2 checkpoint path: stage 1, finished,
    trains no step again (only re-saves and re-evaluates, its weights loaded from its last checkpoint); stage 2 runs
    its one missing step. Weights and test metrics equal those of the uninterrupted run."""
    def run(output_dir, *extra):
        flags = backbone_run_flags(
            backbone, cifar10_dir, output_dir, cifar_normalised_vit, "--max_train_samples", "64",
            "--max_eval_samples", "100", "--max_steps", "6", "--per_device_train_batch_size", "16",
            "--save_strategy", "steps", "--save_steps", "5", *extra,
        )
        return train(*parse_arguments(flags)[:3])

    steps = count_training_steps(
        monkeypatch, kill_at=lambda steps: os.environ.get("KILL_AT_STAGE2_STEP") == str(steps.count(2))
    )
    uninterrupted = run(tmp_path / "a")
    assert steps == [1] * 6 + [2] * 6
    steps.clear()
    monkeypatch.setenv("KILL_AT_STAGE2_STEP", "6")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.delenv("KILL_AT_STAGE2_STEP")
    assert (tmp_path / "b/stage1/checkpoint-6").is_dir()  # stage 1's last step, saved as it finished
    assert (tmp_path / "b/stage2/checkpoint-5").is_dir() and not (tmp_path / "b/stage2/model.safetensors").exists()
    steps.clear()
    resumed = run(tmp_path / "b", "--resume_from_checkpoint", str(tmp_path / "b/stage2/checkpoint-5"))
    assert steps == [2]  # stage 1 had finished: no step of it again; stage 2 only its step 6
    for stage in ("stage1", "stage2"):
        expected = load_file(tmp_path / "a" / stage / "model.safetensors")
        actual = load_file(tmp_path / "b" / stage / "model.safetensors")
        assert expected.keys() == actual.keys()
        for name, value in expected.items():
            assert torch.equal(value, actual[name]), f"{stage} {name}"
        for key in ("eval_accuracy", "eval_ece", "eval_nll", "eval_few_accuracy"):
            assert resumed[stage][key] == pytest.approx(uninterrupted[stage][key], rel=1e-6, abs=1e-9), key
    state = json.loads((tmp_path / "b/stage2/trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["epoch"] == pytest.approx(1.5)


# ----------------------------------------------------------------------------------------------- speed paths (issue 6)



def test_in_memory_images_are_refused_for_the_imagenet_family():
    from mislas_hf.scripts.arguments import DataArguments

    with pytest.raises(ValueError, match="in_memory_images"):
        DataArguments(dataset="imagenet-lt", in_memory_images=True)
    assert DataArguments(dataset="cifar100-lt").uses_in_memory_images("cifar")
    assert not DataArguments(dataset="places-lt").uses_in_memory_images("imagenet")


def test_evaluate_recipe_reproduces_the_training_run_metrics(both_stages, cifar10_dir, tmp_path, hub_uploads):
    """`recipes/evaluate_model.py MODEL ...` on the saved stage-2 model gives the metrics the training run reported, and
    pushes the evaluated model with its new card."""
    import runpy

    output_dir, results = both_stages
    evaluate_main = runpy.run_path(str(REPO_ROOT / "recipes/evaluate_model.py"))["main"]
    metrics = evaluate_main([
        str(output_dir / "stage2"), "--dataset", "cifar10-lt", "--dataset_name", str(cifar10_dir),
        "--max_eval_samples", "200", "--seed", "0", "--output_dir", str(tmp_path), "--report_to", "none",
        "--per_device_eval_batch_size", "100", "--push_to_hub", "--hub_model_id", EVALUATE_REPO,
    ])
    # The training run evaluates its channels-last model, evaluate.py a freshly loaded NCHW one: the convolutions
    # take other kernels and float32 sums differ in the last bits (1.4e-6 on this barely trained model's NLL of
    # ~128 on an AVX2 CPU), hence a relative tolerance too.
    for key in ("eval_accuracy", "eval_many_accuracy", "eval_ece", "eval_mce", "eval_nll"):
        assert metrics[key] == pytest.approx(results["stage2"][key], rel=1e-6, abs=1e-6), key
    assert json.loads((tmp_path / "eval_results.json").read_text())["eval_ece"] == pytest.approx(metrics["eval_ece"])
    assert (tmp_path / "reliability_diagram.png").is_file() and (tmp_path / "README.md").is_file()
    pushes = [upload for upload in hub_uploads if upload["repo_id"] == EVALUATE_REPO]
    assert [upload["call"] for upload in pushes] == ["create_repo", "upload_folder"]
    files = pushes[1]["files"]
    assert files == {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    pushed = safetensors_load(files["model.safetensors"])
    trained = load_file(output_dir / "stage2/model.safetensors")
    assert pushed.keys() == trained.keys() and all(torch.equal(pushed[k], trained[k]) for k in trained)
    assert json.loads(files["eval_results.json"])["eval_ece"] == pytest.approx(metrics["eval_ece"])



def write_list_file_benchmark(root: Path, train_counts: dict[int, int], test_counts: dict[int, int], seed: int = 0):
    """JPEGs (and some PNG, grey and CMYK files) of mixed sizes under `root`, with split lists in the reference's
    format (`relative/path original_class_id` per line); `*_counts`: images per original class id."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lines = {"train": [], "test": []}
    index = 0
    for split, counts in (("train", train_counts), ("test", test_counts)):
        for label, count in counts.items():
            for _ in range(count):
                width, height = int(rng.integers(40, 360)), int(rng.integers(30, 300))
                picture = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
                picture = picture.resize((width, height), Image.BILINEAR)
                suffix, mode = [("JPEG", "RGB"), ("png", "RGBA"), ("JPEG", "L"), ("JPEG", "CMYK")][index % 4]
                relative = f"{split}/n{label:08d}/{index}.{suffix}"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                picture.convert(mode).save(root / relative)
                lines[split].append(f"{relative} {label}\n")
                index += 1
    for split in lines:
        (root / f"{split}.txt").write_text("".join(lines[split]))
    return root / "train.txt", root / "test.txt"


def test_list_file_run_trains_both_stages_and_evaluates_every_test_image(tmp_path):
    """ImageNet-LT from split lists, end to end on the CPU: the imagenet pipeline (files decoded and cropped in a
    loader worker, colour jitter and normalisation in the trainer's batch hook), resnet10, both stages."""
    # ImageNet-LT's 1000 classes (its Many/Medium/Few boundaries need them), each with a training image; a few
    # larger classes, whose original ids must come first after the re-sort by descending count
    train_counts = {label: 1 for label in range(1000)} | {7: 10, 3: 6, 0: 3}
    test_counts = {7: 3, 3: 3, 0: 3, 999: 3}
    train_list, test_list = write_list_file_benchmark(tmp_path / "images", train_counts, test_counts)
    output_dir = tmp_path / "run"
    flags = [
        "--config", str(REPO_ROOT / "recipes/configs/imagenet_lt_r50.yaml"),
        "--backbone", "resnet10", "--data_dir", str(tmp_path / "images"),
        "--train_list", str(train_list), "--test_list", str(test_list), "--output_dir", str(output_dir),
        "--max_steps", "2", "--total_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--dataloader_num_workers", "1", "--save_strategy", "no", "--logging_steps", "1", "--bf16", "false",
    ]
    model_args, data_args, training_args, config_text = parse_arguments(flags)
    results = train(model_args, data_args, training_args, config_yaml=config_text)
    test_images = sum(test_counts.values())
    for stage in ("stage1", "stage2"):
        folder = output_dir / stage
        for name in ("model.safetensors", "preprocessor_config.json", "reliability_diagram.png", "README.md"):
            assert (folder / name).is_file(), f"{stage}/{name}"
        metrics = json.loads((folder / "eval_results.json").read_text())
        assert metrics == pytest.approx(results[stage])
        correct = metrics["eval_accuracy"] * test_images  # a whole number of the 12 test images
        assert abs(correct - round(correct)) < 1e-6 and math.isfinite(metrics["eval_nll"])
        assert f"test split of imagenet-lt ({test_images} images)" in (folder / "README.md").read_text()
        config = json.loads((folder / "config.json").read_text())
        assert config["class_counts"][:4] == [10, 6, 3, 1] and sum(config["class_counts"]) == 1016
        assert len(config["id2label"]) == 1000
        assert [config["id2label"][str(k)] for k in range(3)] == ["orig_7", "orig_3", "orig_0"]
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert processor["size"] == {"shortest_edge": 224} and processor["crop_pct"] == pytest.approx(224 / 256)
    state = json.loads((output_dir / "stage1/trainer_state.json").read_text())
    assert state["global_step"] == 2 and all(math.isfinite(entry["loss"]) for entry in state["log_history"] if "loss" in entry)
    # recipes/evaluate_model.py's float32 Trainer normalises the uint8 evaluation batches as the training run's did: the
    # same predictions (its loss is the model's cross-entropy, the run's the stage-2 criterion)
    training_args.output_dir = str(tmp_path / "evaluated")
    evaluated = evaluate(EvaluationArguments(model=str(output_dir / "stage2")), data_args, training_args)
    quality = [name for name in results["stage2"] if name != "eval_loss" and "runtime" not in name
               and "per_second" not in name]
    assert "eval_accuracy" in quality and "eval_nll" in quality
    assert {name: evaluated[name] for name in quality} == pytest.approx({name: results["stage2"][name] for name in quality})
