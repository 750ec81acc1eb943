"""Training throughput of `recipes/train.py` under `python` and under `accelerate launch`, side by side.

The README's main command is `accelerate launch recipes/train.py --config recipes/configs/cifar10_lt_if100.yaml`,
without an accelerate config. This runs that command and `python recipes/train.py` with the same arguments,
alternately (`--repeats` rounds), and reports for each launcher the median images/s of stage 1 and stage 2 (the
Trainer's `train_samples_per_second`, from `stage{1,2}/train_results.json`), the ratio to `python`, the torch
thread count the run reported, and the peak RSS of the launched process tree (`os.wait4`).

    python benchmarks/launchers.py --repeats 3 --json launchers.json -- \\
        --config recipes/configs/cifar10_lt_if100.yaml --max_steps 60 --max_eval_samples 256

Everything after `--` goes to `recipes/train.py` unchanged (each run gets its own `--output_dir`). The environment is
passed on as it is, minus OMP_NUM_THREADS (a run with no thread count chosen, as a new user runs it); an accelerate
default config, if one exists, is reported, since `accelerate launch` would read it.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "python": [sys.executable],
    "accelerate launch": [sys.executable, "-m", "accelerate.commands.launch"],
}
STAGES = ("stage1", "stage2")


def run_once(launcher: list[str], train_arguments: list[str], output_dir: Path) -> dict:
    """One run of recipes/train.py under `launcher`: images/s per stage that ran, torch threads, peak RSS (MiB)."""
    command = [*launcher, str(REPO_ROOT / "recipes/train.py"), *train_arguments, "--output_dir", str(output_dir)]
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    log_path = output_dir.with_suffix(".log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    log_text = log_path.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log_text[-3000:]}")
    result = {"peak_rss_mib": usage.ru_maxrss / 1024}
    for stage in STAGES:
        metrics_file = output_dir / stage / "train_results.json"
        if metrics_file.is_file():
            result[f"{stage}_images_per_second"] = json.loads(metrics_file.read_text())["train_samples_per_second"]
    threads = re.findall(r"training on (\d+) threads per process", log_text)
    result["threads_set_by_run"] = int(threads[0]) if threads else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every launcher once")
    parser.add_argument("--json", default=None, help="also write all runs and medians to this file")
    parser.add_argument("train_arguments", nargs=argparse.REMAINDER, help="-- then recipes/train.py arguments")
    args = parser.parse_args()
    train_arguments = args.train_arguments[1:] if args.train_arguments[:1] == ["--"] else args.train_arguments
    accelerate_config = Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "accelerate"
    accelerate_config /= "default_config.yaml"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; accelerate default config: "
          f"{accelerate_config if accelerate_config.is_file() else 'none'}")
    print(f"recipes/train.py {' '.join(train_arguments)}")

    runs = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory(prefix="launchers-") as scratch:
        for repeat in range(args.repeats):
            for name, launcher in LAUNCHERS.items():
                output_dir = Path(scratch) / f"{name.replace(' ', '_')}-{repeat}"
                runs[name].append(run_once(launcher, train_arguments, output_dir))
                print(f"round {repeat + 1}, {name}: {json.dumps(runs[name][-1])}", flush=True)

    medians = {
        name: {key: statistics.median(run[key] for run in results) for key in results[0] if key != "threads_set_by_run"}
        for name, results in runs.items()
    }
    print("\n| launcher | " + " | ".join(f"{stage} images/s (x python)" for stage in STAGES) + " | peak RSS MiB |")
    print("| --- | " + " | ".join("---:" for _ in STAGES) + " | ---: |")
    for name, median in medians.items():
        cells = []
        for stage in STAGES:
            key = f"{stage}_images_per_second"
            if key in median:
                cells.append(f"{median[key]:.1f} ({median[key] / medians['python'][key]:.2f}x)")
            else:
                cells.append("-")
        print(f"| {name} | " + " | ".join(cells) + f" | {median['peak_rss_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"arguments": train_arguments, "runs": runs, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
