"""Stage-1 training speed of the README's command beside a busy process: the package's default thread count against
each fixed count, alone and with a competitor, side by side in one run.

    python benchmarks/busy_cpu.py --max_steps 60 --markdown busy_cpu.md
    python benchmarks/busy_cpu.py --max_steps 5 --thread_counts 1 --repeats 1   # a quick check that it works

Every run is what users run, `accelerate launch recipes/train.py --config recipes/configs/cifar10_lt_if100.yaml
--dataset_name DIR --stage 1 --max_steps N --max_eval_samples 64 --save_strategy no` (plus anything after `--`), in
a fresh process: once with no thread count in the environment (the package's default: the free cores, followed during
training) and once with `OMP_NUM_THREADS=k` for each k of `--thread_counts` (default 1 to the cores this process may
use). Each setting runs alone and beside a competitor: a busy-loop Python process pinned to CPU `--competitor_cpu`
(`os.sched_setaffinity`), started a second before the run, stopped after it and bounded in time (`--run_timeout`)
should this script die first. Images/s is the Trainer's `train_samples_per_second` (steps x global batch / wall time
of the training loop, from `stage1/train_results.json`); with `--repeats R` the median of R rounds, the settings taking
turns within each round.

It prints and writes (`--markdown`) a table of images/s per thread count and condition, with the default's ratio to
the best fixed count in each condition (goal: >= 0.8x), and the thread count the default started with. Time it on a
machine with nothing else running: the competitor is the only other load it should see.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"
DEFAULT_DATA = os.environ.get("MISLAS_CIFAR10_DIR", str(REPO_ROOT.parent / "shared/data/cifar10"))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CONDITIONS = ("alone", "beside a busy process")
BUSY_LOOP = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    pass
"""


class Competitor:
    """A busy-loop Python process pinned to one CPU for at most `seconds`, stopped on leaving the `with` block."""

    def __init__(self, cpu: int, seconds: float):
        self.cpu, self.seconds = cpu, seconds

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(self.cpu), str(self.seconds)])
        time.sleep(1.0)  # spinning before the run looks at the cores
        if self.process.poll() is not None:
            raise RuntimeError(f"the competitor on CPU {self.cpu} exited at once (code {self.process.returncode})")
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=30)


def train_once(threads: int | None, train_arguments: list[str], output_dir: Path, timeout: float) -> dict:
    """One `accelerate launch recipes/train.py` stage-1 run with `OMP_NUM_THREADS=threads` (None: no thread count);
    its images/s, the thread count it started with and the counts it switched to."""
    command = [sys.executable, "-m", "accelerate.commands.launch", str(REPO_ROOT / "recipes/train.py"),
               *train_arguments, "--output_dir", str(output_dir)]
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log_path = output_dir.with_suffix(".log")
    with open(log_path, "w") as log:
        completed = subprocess.run(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, timeout=timeout
        )
    log_text = log_path.read_text()
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log_text[-3000:]}")
    metrics = json.loads((output_dir / "stage1/train_results.json").read_text())
    started = re.search(r"stage 1 on \S+ \d+ processes, (\d+) threads per process", log_text)
    return {
        "images_per_second": metrics["train_samples_per_second"],
        "threads_at_start": int(started.group(1)) if started else None,
        "threads_tried": [int(count) for count in re.findall(r"trying (\d+) threads per process", log_text)],
    }


def markdown_table(medians: dict, settings: list, runs: dict, competitor_cpu: int) -> str:
    """Images/s per setting (rows) and condition (columns); the default row with its ratio to the best fixed count."""
    columns = [f"{condition} (CPU {competitor_cpu})" if condition != "alone" else condition for condition in CONDITIONS]
    lines = ["| threads | " + " | ".join(f"{column}, images/s" for column in columns) + " |",
             "| --- | " + " | ".join("---:" for _ in CONDITIONS) + " |"]
    for setting in settings:
        cells = []
        for condition in CONDITIONS:
            value = medians[condition][setting]
            if setting == "default":
                best = max(medians[condition][s] for s in settings if s != "default")
                started = sorted({run["threads_at_start"] for run in runs[condition]["default"]})
                cells.append(f"{value:.1f} ({value / best:.2f}x best fixed; started on {started} threads)")
            else:
                cells.append(f"{value:.1f}")
        name = "package default" if setting == "default" else f"OMP_NUM_THREADS={setting}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_steps", type=int, default=60, help="stage-1 steps per run")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--thread_counts", type=int, nargs="+", default=list(range(1, cores + 1)),
                        help="fixed OMP_NUM_THREADS values to compare with the default")
    parser.add_argument("--competitor_cpu", type=int, default=min(os.sched_getaffinity(0)),
                        help="the CPU the busy process is pinned to")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every setting in both conditions")
    parser.add_argument("--dataset_name", default=DEFAULT_DATA, help="folder of the CIFAR-10 parquet files")
    parser.add_argument("--run_timeout", type=float, default=1800.0,
                        help="seconds one run (and its competitor) may take")
    parser.add_argument("--markdown", default="busy_cpu.md", help="file the table is written to")
    parser.add_argument("train_arguments", nargs=argparse.REMAINDER, help="-- then more recipes/train.py arguments")
    args = parser.parse_args()
    if args.competitor_cpu not in os.sched_getaffinity(0):
        parser.error(f"--competitor_cpu {args.competitor_cpu} is not one of this process's CPUs "
                     f"{sorted(os.sched_getaffinity(0))}")
    extra = args.train_arguments[1:] if args.train_arguments[:1] == ["--"] else args.train_arguments
    train_arguments = [
        "--config", str(CONFIG), "--dataset_name", args.dataset_name, "--stage", "1",
        "--max_steps", str(args.max_steps), "--max_eval_samples", "64", "--save_strategy", "no", "--report_to", "none",
        *extra,
    ]
    settings = ["default", *args.thread_counts]
    print(f"{cores} CPUs; competitor on CPU {args.competitor_cpu}; recipes/train.py {' '.join(train_arguments)}",
          flush=True)

    runs = {condition: {setting: [] for setting in settings} for condition in CONDITIONS}
    with tempfile.TemporaryDirectory(prefix="busy-cpu-") as scratch:
        for repeat in range(args.repeats):
            for condition in CONDITIONS:
                for setting in settings:
                    output_dir = Path(scratch) / f"{repeat}-{CONDITIONS.index(condition)}-{setting}"
                    threads = None if setting == "default" else setting
                    if condition == "alone":
                        result = train_once(threads, train_arguments, output_dir, args.run_timeout)
                    else:
                        with Competitor(args.competitor_cpu, args.run_timeout + 60):
                            result = train_once(threads, train_arguments, output_dir, args.run_timeout)
                    runs[condition][setting].append(result)
                    print(f"round {repeat + 1}, {condition}, threads {setting}: {json.dumps(result)}", flush=True)

    medians = {
        condition: {setting: statistics.median(run["images_per_second"] for run in results)
                    for setting, results in by_setting.items()}
        for condition, by_setting in runs.items()
    }
    table = markdown_table(medians, settings, runs, args.competitor_cpu)
    print("\n" + table)
    Path(args.markdown).write_text(
        f"Stage 1, `--max_steps {args.max_steps}`, median of {args.repeats} rounds, {cores} CPUs:\n\n{table}"
    )
    print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
