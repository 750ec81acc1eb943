"""Wall time of a MiSLAS stage with and without the feature cache (`--cached_feature_views`), extraction included.

Both variants run the recipe's own pipeline (`mislas_hf.scripts`): `parse_arguments` on the recipe config plus the
flags given, `load_splits` (real CIFAR-10-LT, real transforms), the stage-1 model of `--model_name_or_path` as
`build_model` makes it (a MiSLAS stage-1 folder, or a backbone checkpoint with a new head; default: a new ResNet-32,
whose random weights change no timing), and `MislasTrainer` with `stage_arguments(args, STAGE)` as the cache needs
it, in both variants so that they do the same work: stage 2 (the default) with shift_bn off, or with `--stage 1` the
linear probe (`--freeze_backbone true --mixup_alpha 0`; it needs a pretrained `--model_name_or_path`):

* `uncached`: `trainer.train()` on the training images;
* `cached`: the feature cache built in a new output folder (`cached_feature_training_set`: hashing, extraction of
  `--views` views per image, writing, loading), then `trainer.train()` on the cached features.

Each variant runs in a fresh subprocess, one after the other, and reports: wall time (from the start of the cache
build, or of training, to the end of training; model and data loading excluded, evaluation not run), the extraction's
share of it, training images/s (the images of the training steps, counted, over the wall time), the process's peak
RSS and, on a GPU, the peak of `torch.cuda.max_memory_allocated`.

    python benchmarks/feature_cache.py --model_name_or_path DIR [--stage 2] [--views 1] [--json out.json] [recipe flags]

Options this script does not know go to the recipe, e.g. `--image_size 224 --dataloader_num_workers 8`, or
`--max_train_samples 200 --max_steps 3` for a quick check (with `--stage 1`, also `--stage1_epochs N`). A new
ResNet-32 starts from the recipe config `recipes/configs/cifar10_lt_if100.yaml`; a `--model_name_or_path` from
`--dataset cifar10-lt` and the training defaults (the same Table 6 values), since that config's `backbone: resnet32`
would contradict the checkpoint's. The issue's measurement: 10 epochs (the recipe's
`stage2_epochs`), EfficientNet-Lite0, CIFAR-10-LT IF 100; goal >= 8x less wall time with one view.
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from subprocess_measurement import measure_in_subprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "recipes/configs/cifar10_lt_if100.yaml"
DEFAULT_DATA = os.environ.get("MISLAS_CIFAR10_DIR", str(REPO_ROOT.parent / "shared/data/cifar10"))
VARIANTS = ("uncached", "cached")


def measure(spec: dict) -> dict:
    """Run stage `spec["stage"]` of one variant (`spec["variant"]`) and return its figures (runs in its own
    subprocess)."""
    import datasets
    import torch
    from transformers.utils import logging as transformers_logging

    from mislas_hf.feature_cache import FEATURE_CACHE_DIRNAME, cached_feature_training_set
    from mislas_hf.scripts.arguments import parse_arguments
    from mislas_hf.scripts.data_setup import load_splits, train_batch_augmentation
    from mislas_hf.scripts.model_setup import build_model, plan_model
    from mislas_hf.scripts.train import stage_arguments
    from mislas_hf.trainer import MislasTrainer

    datasets.disable_progress_bars()
    transformers_logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    cached = spec["variant"] == "cached"
    stage = spec["stage"]
    stage_flags = ["--shift_bn", "false"] if stage == 2 else ["--freeze_backbone", "true", "--mixup_alpha", "0"]

    class CountingTrainer(MislasTrainer):
        """`MislasTrainer` that counts the training images of its steps."""

        images = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.images += len(inputs["labels"])
            return super().training_step(model, inputs, num_items_in_batch)
    with tempfile.TemporaryDirectory() as output_dir:
        argv = [
            *(["--config", spec["config"]] if spec["config"] else ["--dataset", "cifar10-lt"]),
            "--dataset_name", spec["dataset_name"], "--output_dir", output_dir,
            "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
            "--stage", str(stage), *stage_flags,
            *(["--model_name_or_path", spec["model_name_or_path"]] if spec["model_name_or_path"] else []),
            *(["--cached_feature_views", str(spec["views"])] if cached else []), *spec["flags"],
        ]
        model_args, data_args, args, _ = parse_arguments(argv)
        plan = plan_model(model_args)
        benchmark, counts, train_set, _, test = load_splits(data_args, args, plan)
        model = build_model(model_args, plan, benchmark, counts, data_args)
        trainer = CountingTrainer(
            model=model,
            args=stage_arguments(args, stage),
            train_dataset=train_set,
            batch_augmentation=train_batch_augmentation(data_args, benchmark),
        )
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        extraction_s = None
        if cached:
            trainer.train_dataset = cached_feature_training_set(
                trainer, test, benchmark.preprocessing, os.path.join(output_dir, FEATURE_CACHE_DIRNAME)
            )
            extraction_s = time.perf_counter() - started
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        wall_s = time.perf_counter() - started
    return {
        "variant": spec["variant"],
        "stage": stage,
        "views": spec["views"] if cached else None,
        "wall_s": wall_s,
        "extraction_s": extraction_s,
        "steps": trainer.state.global_step,
        "images": trainer.images,
        "images_per_s": trainer.images / wall_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
    }




def format_table(results: list[dict]) -> str:
    """The results as a text table, with each variant's wall-time ratio to the uncached one."""
    header = (
        f"{'variant':<10} {'stage':>5} {'views':>5} {'wall s':>9} {'extract s':>9} {'steps':>6} {'images/s':>10} "
        f"{'peak RSS MB':>11} {'CUDA MB':>8} {'x faster':>8}"
    )
    uncached = next((r["wall_s"] for r in results if r["variant"] == "uncached"), None)
    lines = [header, "-" * len(header)]
    for r in results:
        extraction = "-" if r["extraction_s"] is None else f"{r['extraction_s']:.2f}"
        cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
        speedup = "-" if uncached is None else f"{uncached / r['wall_s']:.2f}"
        lines.append(
            f"{r['variant']:<10} {r['stage']:>5} {r['views'] or '-':>5} {r['wall_s']:>9.2f} {extraction:>9} {r['steps']:>6} "
            f"{r['images_per_s']:>10.1f} {r['peak_rss_mb']:>11.0f} {cuda:>8} {speedup:>8}"
        )
    return "\n".join(lines) + f"\ndevice: {results[0]['device']}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Other options go to recipes/train.py."
    )
    parser.add_argument(
        "--model_name_or_path",
        help="Stage-1 MiSLAS folder or backbone checkpoint (e.g. the EfficientNet-Lite0 timm folder of "
        "`python -m mislas_hf.convert --timm_checkpoint ...`); default: a new ResNet-32.",
    )
    parser.add_argument(
        "--stage", type=int, choices=(1, 2), default=2,
        help="The stage to time: 2 (shift_bn off), or 1, the linear probe (frozen backbone, no mixup).",
    )
    parser.add_argument("--views", type=int, default=1, help="--cached_feature_views of the cached variant.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated subset of {VARIANTS}.")
    parser.add_argument(
        "--config",
        help=f"Recipe config both variants start from (default: {DEFAULT_CONFIG.name} for a new ResNet-32, none with "
        "--model_name_or_path).",
    )
    parser.add_argument(
        "--dataset_name", default=DEFAULT_DATA, help="CIFAR parquet folder or Hub id (default: MISLAS_CIFAR10_DIR)."
    )
    parser.add_argument("--json", help="Also write the results (and the command) to this JSON file.")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    options, recipe_flags = parser.parse_known_args(argv)
    if options.measure:
        print(json.dumps(measure(json.loads(options.measure))))
        return []
    variants = [variant for variant in options.variants.split(",") if variant]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: use {', '.join(VARIANTS)}")
    if options.views < 1:
        parser.error(f"--views {options.views}: at least 1")
    results = []
    for variant in variants:
        spec = {
            "variant": variant, "stage": options.stage, "views": options.views,
            "model_name_or_path": options.model_name_or_path,
            "config": options.config or (None if options.model_name_or_path else str(DEFAULT_CONFIG)),
            "flags": recipe_flags, "dataset_name": options.dataset_name,
        }
        started = time.perf_counter()
        results.append(measure_in_subprocess(__file__, spec, spec["variant"]))
        print(f"{variant}: {results[-1]['wall_s']:.1f} s ({time.perf_counter() - started:.0f} s with start-up)",
              file=sys.stderr)
    print(format_table(results))
    if options.json:
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
            "results": results,
        }
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
