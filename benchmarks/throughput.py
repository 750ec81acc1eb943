"""Throughput of the real MiSLAS training and evaluation pipeline, several configurations side by side.

Each measurement runs the recipe's own pipeline (`mislas_hf.scripts`): `parse_arguments` on the recipe config plus the
variant's flags, `load_splits` (real CIFAR-10-LT, real transforms), `build_model`, and `MislasTrainer` with
`stage_arguments` (stage 1: random sampler and mixup; stage 2: class-aware sampler, label-aware smoothing, frozen
backbone with shifted BN; evaluation: the test split at the evaluation batch size). It runs `--warmup` steps, then
times `--steps` steps with a `TrainerCallback`, and reports per phase:

* images/s and step time over the timed steps (a step runs from one step end to the next: data + compute);
* data wait: the part of that time the loop spends between a step end and the next step begin, i.e. fetching the
  batch from the DataLoader (in evaluation: until `prediction_step` starts);
* saved for backward: bytes of activations autograd keeps for the backward pass in one training step (unique
  storages, parameters excluded), counted with `torch.autograd.graph.saved_tensors_hooks` on a warm-up step;
* peak memory: the main process's peak RSS (`resource.getrusage`; DataLoader workers are separate processes), and
  on a GPU the peak of `torch.cuda.max_memory_allocated` over the timed steps.

Every (variant, phase) runs in a fresh subprocess, so peak memory and caches are not shared between measurements.
A variant is a `+`-joined list of tokens applied in order to the recipe config (see `TOKENS`), e.g.
`baseline+channels_last+workers0`. `baseline` is the reference implementation's kind of pipeline (fp32, NCHW,
per-sample transforms, 2 DataLoader workers); `default` is the recipe as configured.

    python benchmarks/throughput.py --variants baseline,default --json throughput.json

`--repeats R` measures every variant R times, round robin, and reports the median run (the lower median for even R).
"""

import argparse
import json
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

from subprocess_measurement import measure_in_subprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"
DEFAULT_DATA = os.environ.get("MISLAS_CIFAR10_DIR", str(REPO_ROOT.parent / "shared/data/cifar10"))
PHASES = ("stage1", "stage2", "eval")
REFERENCE_IMAGES_PER_SECOND = {"stage1": 260.0, "stage2": 650.0}
"""The reference implementation (dvlab-research/MiSLAS: fp32 NCHW, per-sample PIL transforms, 2 DataLoader workers)
on a 2-core CPU, batch 128, CIFAR-10-LT IF100, ResNet-32, as reported in issue #6 (it needs torchvision, so it is
not run here)."""

TOKENS = {
    "default": [],
    "baseline": [
        "--channels_last", "false", "--in_memory_images", "false", "--bf16", "false", "--torch_compile", "false",
        "--dataloader_num_workers", "2",
    ],
    "channels_last": ["--channels_last", "true"],
    "nchw": ["--channels_last", "false"],
    "fast_data": ["--in_memory_images", "true"],
    "per_sample_data": ["--in_memory_images", "false"],
    "bf16": ["--bf16", "true"],
    "fp32": ["--bf16", "false"],
    "compile": ["--torch_compile", "true"],
}
"""Variant tokens and the command-line flags they add; `workersN` sets N DataLoader workers, and `NAME=VALUE` passes
any option of recipes/train.py (`--NAME VALUE`)."""


def variant_flags(variant: str) -> list[str]:
    """The command-line flags of a `+`-joined variant, checked token by token."""
    flags = []
    for token in variant.split("+"):
        workers = re.fullmatch(r"workers(\d+)", token)
        option = re.fullmatch(r"(\w+)=(\S+)", token)
        if workers:
            flags += ["--dataloader_num_workers", workers.group(1)]
        elif option:
            flags += [f"--{option.group(1)}", option.group(2)]
        elif token in TOKENS:
            flags += TOKENS[token]
        else:
            raise ValueError(
                f"variant {variant!r}: unknown token {token!r}; use tokens {', '.join(TOKENS)}, workersN or "
                f"NAME=VALUE, joined by '+'"
            )
    return flags


# ----------------------------------------------------------------------------------------------------------------------
# One measurement (runs in its own subprocess)
# ----------------------------------------------------------------------------------------------------------------------


def measure(spec: dict) -> dict:
    """Run `spec["warmup"] + spec["steps"]` steps of one phase of one variant and return its figures."""
    import datasets
    import torch
    from transformers import TrainerCallback
    from transformers.utils import logging as transformers_logging

    from mislas_hf.scripts.arguments import parse_arguments
    from mislas_hf.scripts.data_setup import load_splits, train_batch_augmentation
    from mislas_hf.scripts.model_setup import build_model, plan_model
    from mislas_hf.scripts.train import stage_arguments
    from mislas_hf.trainer import MislasTrainer

    datasets.disable_progress_bars()
    transformers_logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    warmup, steps, phase = spec["warmup"], spec["steps"], spec["phase"]

    class StepTimer(TrainerCallback):
        """Step begin/end times of training (`on_step_begin`/`on_step_end`) and evaluation (`prediction_begin`,
        `on_prediction_step`); on a GPU the device is synchronised at each step end."""

        def __init__(self):
            self.begins, self.ends = [], []

        def _end(self):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            if len(self.ends) == warmup and cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self._end()

        def prediction_begin(self):
            self.begins.append(time.perf_counter())

        def on_prediction_step(self, args, state, control, **kwargs):
            self._end()

    class BenchmarkTrainer(MislasTrainer):
        """`MislasTrainer` that marks the start of each prediction step and counts the activations autograd saves
        in the first training step; everything else is the trainer's own."""

        saved_bytes = None

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.saved_bytes is not None or self.args.torch_compile:
                return super().training_step(model, inputs, num_items_in_batch)
            parameters = {p.data_ptr() for p in model.parameters()}
            storages = {}

            def pack(tensor):
                pointer = tensor.untyped_storage().data_ptr()
                if pointer not in parameters:
                    storages[pointer] = tensor.untyped_storage().nbytes()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = super().training_step(model, inputs, num_items_in_batch)
            self.saved_bytes = sum(storages.values())
            return loss

        def prediction_step(self, *args, **kwargs):
            timer.prediction_begin()
            return super().prediction_step(*args, **kwargs)

    with tempfile.TemporaryDirectory() as output_dir:
        argv = [
            "--config", spec["config"], "--dataset_name", spec["dataset_name"], "--output_dir", output_dir,
            "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--logging_strategy", "no",
            "--disable_tqdm", "true", *spec["flags"],
        ]
        if not cuda:
            argv += ["--use_cpu", "true"]  # what the Trainer asks for to allow --bf16 on a CPU
        model_args, data_args, args, _ = parse_arguments(argv)
        plan = plan_model(model_args)
        benchmark, counts, train_set, _, test = load_splits(data_args, args, plan)
        model = build_model(model_args, plan, benchmark, counts, data_args)
        stage_args = stage_arguments(args, 2 if phase == "stage2" else 1)
        stage_args.max_steps = warmup + steps
        timer = StepTimer()
        trainer = BenchmarkTrainer(
            model=model,
            args=stage_args,
            train_dataset=train_set,
            callbacks=[timer],
            batch_augmentation=train_batch_augmentation(data_args, benchmark),
        )
        if phase == "eval":
            batch_size = args.per_device_eval_batch_size
            test = test.select(range(min(len(test), (warmup + steps) * batch_size)))
            trainer.evaluate(eval_dataset=test)
        else:
            batch_size = args.per_device_train_batch_size
            trainer.train()
    ends, begins = timer.ends, timer.begins
    timed = min(steps, len(ends) - warmup)
    if warmup < 1 or timed < 1:
        raise RuntimeError(f"{phase}: {len(ends)} steps ran, {warmup} warm-up + {steps} timed requested")
    total = ends[warmup + timed - 1] - ends[warmup - 1]
    wait = sum(begins[i] - ends[i - 1] for i in range(warmup, warmup + timed))
    return {
        "images_per_s": timed * batch_size / total,
        "step_ms": 1000 * total / timed,
        "data_wait_fraction": wait / total,
        "saved_for_backward_mb": None if trainer.saved_bytes is None else trainer.saved_bytes / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "batch_size": batch_size,
        "timed_steps": timed,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
    }


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------




def format_table(results: list[dict]) -> str:
    """The results as a text table, with the speed-up over the first variant and over the reference (images/s: the
    median run, and the range over the runs)."""
    header = (
        f"{'variant':<44} {'phase':<7} {'images/s':>9} {'range':>11} {'step ms':>8} {'data wait':>9} {'saved MB':>9} "
        f"{'peak RSS MB':>11} {'CUDA MB':>8} {'x first':>8} {'x ref':>6}"
    )
    first = {r["phase"]: r["images_per_s"] for r in results if r["variant"] == results[0]["variant"]}
    lines = [header, "-" * len(header)]
    for r in results:
        saved = "-" if r["saved_for_backward_mb"] is None else f"{r['saved_for_backward_mb']:.2f}"
        cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
        reference = REFERENCE_IMAGES_PER_SECOND.get(r["phase"])
        vs_reference = "-" if reference is None else f"{r['images_per_s'] / reference:.2f}"
        spread = f"{min(r['images_per_s_runs']):.0f}-{max(r['images_per_s_runs']):.0f}"
        lines.append(
            f"{r['variant']:<44} {r['phase']:<7} {r['images_per_s']:>9.1f} {spread:>11} {r['step_ms']:>8.1f} "
            f"{100 * r['data_wait_fraction']:>8.1f}% {saved:>9} {r['peak_rss_mb']:>11.0f} {cuda:>8} "
            f"{r['images_per_s'] / first[r['phase']]:>8.2f} {vs_reference:>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="baseline,default", help="Comma-separated variants (see TOKENS).")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"Comma-separated subset of {PHASES}.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per phase (at least 1).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per phase.")
    parser.add_argument(
        "--repeats", type=int, default=1, help="Measure every variant this many times, round robin; report the median."
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Recipe config the variants start from.")
    parser.add_argument(
        "--dataset_name", default=DEFAULT_DATA, help="CIFAR parquet folder or Hub id (default: MISLAS_CIFAR10_DIR)."
    )
    parser.add_argument("--json", help="Also write the results (and the command) to this JSON file.")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.measure:
        print(json.dumps(measure(json.loads(options.measure))))
        return []
    variants = [v for v in options.variants.split(",") if v]
    phases = [p for p in options.phases.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}: use {', '.join(PHASES)}")
    if min(options.warmup, options.steps, options.repeats) < 1:
        parser.error("--warmup, --steps and --repeats must be at least 1")
    try:
        flags = {variant: variant_flags(variant) for variant in variants}
    except ValueError as err:
        parser.error(str(err))
    runs = {(variant, phase): [] for variant in variants for phase in phases}
    for _ in range(options.repeats):  # round robin, so that a slow spell of the machine hits every variant alike
        for variant, phase in runs:
            spec = {
                "variant": variant, "phase": phase, "flags": flags[variant], "warmup": options.warmup,
                "steps": options.steps, "config": options.config, "dataset_name": options.dataset_name,
            }
            started = time.perf_counter()
            runs[variant, phase].append(measure_in_subprocess(__file__, spec, f"{variant} / {phase}"))
            print(
                f"{variant} / {phase}: {runs[variant, phase][-1]['images_per_s']:.1f} images/s "
                f"({time.perf_counter() - started:.0f} s with start-up)",
                file=sys.stderr,
            )
    results = []
    for (variant, phase), measured in runs.items():
        median = sorted(measured, key=lambda r: r["images_per_s"])[(len(measured) - 1) // 2]
        all_runs = [round(r["images_per_s"], 1) for r in measured]
        results.append({"variant": variant, "phase": phase, **median, "images_per_s_runs": all_runs})
    print(format_table(results))
    if options.json:
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
            "reference_images_per_s": REFERENCE_IMAGES_PER_SECOND,
            "results": results,
        }
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
