"""The benchmark scripts run the recipe's real pipeline: a measurement on real CIFAR-10-LT, its figures consistent."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("phase", ["stage1", "eval"])
def test_throughput_measures_the_recipe_pipeline(cifar10_dir, phase):
    """One `measure` as a benchmark subprocess runs it (recipe config, in-memory CIFAR-10-LT, MislasTrainer with the
    recipe's batch augmentation): warm-up + timed steps ran, and images/s is the phase's batch over the step time."""
    throughput = load_benchmark_script("throughput")
    spec = {
        "variant": "default", "phase": phase, "warmup": 1, "steps": 2,
        "flags": ["--max_train_samples", "300", "--max_eval_samples", "200", "--per_device_train_batch_size", "32",
                  "--per_device_eval_batch_size", "64"],
        "config": str(throughput.DEFAULT_CONFIG), "dataset_name": str(cifar10_dir),
    }
    result = throughput.measure(spec)
    batch_size = 32 if phase == "stage1" else 64
    assert result["images_per_s"] == pytest.approx(batch_size * 1000 / result["step_ms"], rel=1e-9)
    assert 0 <= result["data_wait_fraction"] < 1


def test_measure_in_subprocess_returns_the_last_stdout_line_or_the_failure(tmp_path):
    """The helper every benchmark runs its measurements with: a fresh interpreter started as `SCRIPT --measure JSON`
    in the repository root; the figures are its last stdout line; a failure raises with what failed and its stderr."""
    from subprocess_measurement import REPO_ROOT, measure_in_subprocess

    script = tmp_path / "bench.py"
    script.write_text(
        "import json, os, sys\n"
        "spec = json.loads(sys.argv[sys.argv.index('--measure') + 1])\n"
        "if spec['fail']:\n"
        "    sys.exit('out of memory')\n"
        "print('warming up')\n"
        "print(json.dumps({'images_per_s': spec['batch'] * 2.5, 'cwd': os.getcwd()}))\n"
    )
    result = measure_in_subprocess(script, {"batch": 8, "fail": False}, "tiny / stage1")
    assert result == {"images_per_s": 20.0, "cwd": str(REPO_ROOT)}
    with pytest.raises(RuntimeError, match=r"(?s)tiny / stage1 failed:\nout of memory"):
        measure_in_subprocess(script, {"batch": 8, "fail": True}, "tiny / stage1")
