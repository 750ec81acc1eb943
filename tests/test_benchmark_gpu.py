"""benchmarks/gpu.py's pure parts: its options, the extrapolation of a complete run from a slice, when the complete
run is measured, and the markdown it writes."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("gpu", BENCHMARKS / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_take_the_gpu_or_the_dry_run_settings_unless_given(gpu):
    options = gpu.parse_arguments([])
    assert (options.warmup, options.steps, options.reference_workers) == (20, 300, 16)
    assert (options.slice_epochs, options.full_epochs, options.time_budget_s) == ((5.0, 1.0), None, 480.0)
    assert (options.full_run, options.device, options.max_train_samples) == ("auto", None, None)
    dry = gpu.parse_arguments(["--dry_run", "--steps", "7", "--full_epochs", "3,2"])
    assert (dry.warmup, dry.steps, dry.reference_workers) == (1, 7, 2)
    assert (dry.slice_epochs, dry.full_epochs, dry.max_train_samples) == ((1.0, 1.0), (3.0, 2.0), 512)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slice_epochs", "5"], "give stage-1 and stage-2 epochs as 'S1,S2'"),
        (["--full_epochs", "200,0"], "epochs must be positive"),
        (["--warmup", "0"], "--warmup and --steps must be at least 1"),
        (["--config", "no/such.yaml"], "--config no/such.yaml: no such file"),
    ],
)
def test_bad_options_are_refused_with_what_to_change(gpu, capsys, argv, message):
    with pytest.raises(SystemExit):
        gpu.parse_arguments(argv)
    assert message in capsys.readouterr().err


def test_the_complete_run_is_the_slice_outside_training_plus_each_stage_scaled_by_its_epochs(gpu):
    # a 5 + 1-epoch slice: 41.5 s of wall time, 6.25 s and 1.5 s of it in the two training loops
    outside = 41.5 - 6.25 - 1.5
    expected = outside + 6.25 * 200 / 5 + 1.5 * 10 / 1
    assert gpu.extrapolate_full_run(41.5, (6.25, 1.5), (5, 1), (200, 10)) == pytest.approx(expected, rel=1e-12)
    # a slice as long as the run predicts its own wall time
    assert gpu.extrapolate_full_run(30.0, (12.0, 3.0), (4, 2), (4, 2)) == pytest.approx(30.0, rel=1e-12)


@pytest.mark.parametrize(
    ("mode", "predicted", "remaining", "how"),
    [
        ("auto", 250.0, 300.0, "measured"),
        ("auto", 250.0, 249.9, "extrapolated"),
        ("measure", None, 10.0, "measured"),
        ("extrapolate", 10.0, 1000.0, "extrapolated"),
        ("skip", None, 1000.0, "skipped"),
    ],
)
def test_the_complete_run_is_measured_only_when_its_prediction_fits(gpu, mode, predicted, remaining, how):
    assert gpu.full_run_decision(mode, predicted, remaining) == how


def test_the_recipe_command_names_the_epochs_the_data_and_the_cpu(gpu, tmp_path):
    options = gpu.parse_arguments(["--dry_run", "--dataset_name", "/data/cifar10"])
    options.device = "cpu"
    command = gpu.recipe_command(options, tmp_path / "run", (2.0, 1.0))
    assert command[1] == str(BENCHMARKS.parent / "recipes/train.py")
    flags = dict(zip(command[2::2], command[3::2]))
    assert flags == {
        "--config": str(BENCHMARKS.parent / "recipes/configs/cifar10_lt_if100.yaml"),
        "--dataset_name": "/data/cifar10", "--output_dir": str(tmp_path / "run"), "--stage1_epochs": "2",
        "--stage2_epochs": "1", "--max_train_samples": "512", "--max_eval_samples": "256", "--learning_rate": "0.01",
        "--use_cpu": "true",
    }


def test_epochs_come_from_the_config_or_the_training_defaults(gpu, tmp_path):
    assert gpu.config_epochs(str(BENCHMARKS.parent / "recipes/configs/cifar10_lt_if100.yaml")) == (200.0, 10.0)
    config = tmp_path / "short.yaml"
    config.write_text("stage1_epochs: 30\n")
    assert gpu.config_epochs(str(config)) == (30.0, 10.0)  # MislasTrainingArguments.stage2_epochs


def report(full_run):
    rates = {
        "stage1": {"reference": 1000.0, "fp32": 1500.0, "bf16": 2100.0, "bf16 + channels-last": 2500.4},
        "stage2": {"reference": 4000.0, "fp32": 3000.0, "bf16": 3900.0, "bf16 + channels-last": 3800.0},
    }
    return {
        "device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "cpus": 16, "command": "python benchmarks/gpu.py",
        "settings": {"steps": 300, "warmup": 20, "batch_size": 128, "reference_workers": 16},
        "images_per_s": {phase: {c: {"images_per_s": r} for c, r in row.items()} for phase, row in rates.items()},
        "full_run": full_run,
    }


def test_markdown_table_gives_each_column_and_the_best_package_column_over_the_reference(gpu):
    lines = gpu.format_markdown(report(None)).splitlines()
    assert lines[0] == (
        "GPU benchmark on NVIDIA H100 80GB HBM3 (PyTorch 2.11.0, 16 CPU cores): `python benchmarks/gpu.py`"
    )
    assert lines[2] == (
        "| phase | reference loop | package fp32 | package bf16 | package bf16 + channels-last | best / reference |"
    )
    assert lines[3] == "| --- | ---: | ---: | ---: | ---: | ---: |"
    assert lines[4] == f"| stage 1 (mixup) | 1,000 | 1,500 | 2,100 | 2,500 | {2500.4 / 1000:.2f}x |"
    assert lines[5] == f"| stage 2 | 4,000 | 3,000 | 3,900 | 3,800 | {3900 / 4000:.2f}x |"
    assert "over 300 timed steps after 20 warm-up steps, batch 128" in lines[7]
    assert "in 16 loader workers" in lines[7] and len(lines) == 8


def test_markdown_says_whether_the_complete_run_was_measured_or_extrapolated(gpu):
    slice_run = {"epochs": [5.0, 1.0], "wall_s": 41.5, "train_s": [6.25, 1.5]}
    measured = {"epochs": [200.0, 10.0], "how": "measured", "wall_s": 231.04, "predicted_s": 300.0, "slice": slice_run}
    assert gpu.format_markdown(report(measured)).splitlines()[-1] == (
        "**200 + 10-epoch run alone: 231.0 s, measured** (the 5 + 1-epoch slice predicted 300.0 s)."
    )
    extrapolated = dict(measured, how="extrapolated", wall_s=300.0, why="--full_run extrapolate")
    assert gpu.format_markdown(report(extrapolated)).splitlines()[-1] == (
        "**200 + 10-epoch run alone: 300.0 s, extrapolated** from a 5 + 1-epoch slice (41.5 s of wall time, of which "
        "6.2 + 1.5 s in the two stages' training loops); not measured: --full_run extrapolate."
    )
