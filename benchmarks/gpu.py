"""GPU figures of the package in one run: training images/s of `recipes/train.py` against the reference's training
loop on the same device, and the wall time of one complete run alone (CIFAR-10-LT IF 100, ResNet-32).

1. **Images/s**, stage 1 (mixup) and stage 2 (frozen backbone, class-aware sampler, label-aware smoothing), batch
   128 (the recipe config):
   * the package: `benchmarks/throughput.py`'s `measure` (the recipe's own pipeline, `MislasTrainer`, in-memory
     CIFAR images augmented on the device) in fp32 (NCHW), bf16 (NCHW) and bf16 + channels-last (the package's
     default on a GPU with native bf16), each in a fresh subprocess;
   * the reference: the training loop of dvlab-research/MiSLAS (`train_stage1.py` / `train_stage2.py`, `train()`)
     re-implemented here (`measure_reference`): torchvision's CIFAR dataset with its per-sample PIL transforms
     (RandomCrop(32, padding=4), flip, ToTensor, Normalize) in `--reference_workers` loader workers (16 in its
     configs) with pinned memory, a new loader iterator (so new workers) every epoch, fp32 NCHW, mixup, top-1/top-5
     accuracy and `loss.item()` (a host sync) every step. The network is our ResNet-32, the reference's network
     (the official checkpoints load into it), so the two columns differ by the loop and pipeline alone.
   Each runs `--warmup` untimed steps, then times `--steps` steps (crossing epoch ends). The package's timer
   synchronises the device at every step end (throughput.py); the reference loop syncs every step anyway.
2. **A complete 200 + 10-epoch run alone**: `recipes/train.py --config CONFIG` as a user runs it (both stages,
   per-epoch checkpoints, test-set reports, cards), its wall time from process start to exit. `--full_run auto`
   first times a slice (`--slice_epochs`, e.g. 5 + 1 epochs) and extrapolates (`extrapolate_full_run`); the
   complete run follows when that prediction fits in what is left of `--time_budget_s`, and is reported as measured;
   otherwise the extrapolation is reported, marked as such. `measure` runs only the complete run, `extrapolate`
   only the slice.

It prints a markdown table and writes it (`--markdown`) and the figures (`--json`).

    python benchmarks/gpu.py --json gpu.json --markdown gpu.md
    python benchmarks/gpu.py --dry_run --device cpu     # the code path on a CPU: tiny settings, no real timing
"""

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import throughput  # benchmarks/ is on sys.path: see subprocess_measurement.py
from subprocess_measurement import measure_in_subprocess

REPO_ROOT = Path(__file__).resolve().parents[1]


PHASES = {"stage1": "stage 1 (mixup)", "stage2": "stage 2"}
PACKAGE_VARIANTS = {"fp32": "nchw+fp32", "bf16": "nchw+bf16", "bf16 + channels-last": "channels_last+bf16"}
"""Table column -> `throughput.py` variant (tokens on top of the recipe config)."""
COLUMNS = ("reference", *PACKAGE_VARIANTS)
DEFAULTS = {
    "warmup": 20, "steps": 300, "reference_workers": 16, "slice_epochs": "5,1", "full_epochs": None,
    "max_train_samples": None, "max_eval_samples": None, "learning_rate": None, "time_budget_s": 480.0,
}
"""Settings for a GPU (`full_epochs` None: the config's `stage1_epochs`, `stage2_epochs`)."""
DRY_RUN = {
    "warmup": 1, "steps": 2, "reference_workers": 2, "slice_epochs": "1,1", "full_epochs": "2,1",
    "max_train_samples": 512, "max_eval_samples": 256, "learning_rate": 0.01, "time_budget_s": 3600.0,
}
"""`--dry_run`: every code path with tiny settings (a CPU check; its figures mean nothing). The complete run and
the slice train at LR 0.01: a few steps of a fresh network at the recipe's 0.1 send stage 2 to NaN."""
FULL_RUN_MODES = ("auto", "measure", "extrapolate", "skip")


def epoch_pair(text: str) -> tuple[float, float]:
    """`"S1,S2"` -> (stage-1 epochs, stage-2 epochs), both positive."""
    try:
        stage1, stage2 = (float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give stage-1 and stage-2 epochs as 'S1,S2', e.g. '5,1'")
    if min(stage1, stage2) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: epochs must be positive")
    return stage1, stage2


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with `DEFAULTS` (or `DRY_RUN` with `--dry_run`) for those not given; `slice_epochs` and
    `full_epochs` as (stage 1, stage 2) pairs (`full_epochs` None: read from the config)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry_run", action="store_true", help="Tiny settings: check the code path (e.g. on a CPU).")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="Default: cuda when there is one.")
    parser.add_argument("--warmup", type=int, help="Untimed steps per measurement (default 20).")
    parser.add_argument("--steps", type=int, help="Timed steps per measurement (default 300, about 3 epochs).")
    parser.add_argument("--reference_workers", type=int, help="Loader workers of the reference loop (default 16).")
    parser.add_argument(
        "--full_run", choices=FULL_RUN_MODES, default="auto",
        help="auto: time a slice, then the complete run if it fits the budget; measure: the complete run only; "
        "extrapolate: the slice only; skip.",
    )
    parser.add_argument("--slice_epochs", help="Epochs of the timed slice, 'S1,S2' (default 5,1).")
    parser.add_argument("--full_epochs", help="Epochs of the complete run, 'S1,S2' (default: the config's).")
    parser.add_argument("--time_budget_s", type=float, help="Seconds the whole script may take (default 480).")
    parser.add_argument("--max_train_samples", type=int, help="Fewer training images (dry run).")
    parser.add_argument("--max_eval_samples", type=int, help="Fewer test images (dry run).")
    parser.add_argument("--learning_rate", type=float, help="LR of the complete run and slice (default: the config's).")
    parser.add_argument("--config", default=str(throughput.DEFAULT_CONFIG), help="Recipe config.")
    parser.add_argument(
        "--dataset_name", default=throughput.DEFAULT_DATA, help="CIFAR-10 parquet folder (default MISLAS_CIFAR10_DIR)."
    )
    parser.add_argument("--json", help="Write the figures to this JSON file.")
    parser.add_argument("--markdown", help="Write the table to this markdown file.")
    parser.add_argument("--measure_reference", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    for name, value in (DRY_RUN if options.dry_run else DEFAULTS).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    try:
        options.slice_epochs = epoch_pair(options.slice_epochs)
        options.full_epochs = None if options.full_epochs is None else epoch_pair(options.full_epochs)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if options.warmup < 1 or options.steps < 1 or options.reference_workers < 0:
        parser.error("--warmup and --steps must be at least 1, --reference_workers at least 0")
    if options.measure_reference is None and not Path(options.config).is_file():
        parser.error(f"--config {options.config}: no such file")
    return options


# ----------------------------------------------------------------------------------------------------------------------
# The reference's training loop (runs in its own subprocess)
# ----------------------------------------------------------------------------------------------------------------------


def measure_reference(spec: dict) -> dict:
    """`spec["warmup"]` + `spec["steps"]` steps of the reference's `train()` loop of stage `spec["stage"]` on the
    device (CUDA when there is one), returning images/s over the timed steps.

    Data: the package's CIFAR-10-LT IF 100 training split (the reference's cut), decoded into one uint8 HWC array as
    torchvision's `CIFAR10` holds it; `__getitem__` = `Image.fromarray` + the reference's train transform.
    Stage 1: shuffled `DataLoader`, mixup (alpha 1), cross-entropy, the whole network trains. Stage 2: the
    class-aware sampler (4 images per class), backbone frozen with BN in eval mode (`shift_bn: False` in its CIFAR-10
    configs), the scaled-shift head trains with label-aware smoothing (0.3 / 0.0). SGD, momentum 0.9, weight decay
    2e-4, LR 0.1."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms

    from mislas_hf import MislasConfig, MislasForImageClassification
    from mislas_hf.data import CIFAR_MEAN, CIFAR_STD, class_counts, dataset_labels, load_benchmark, subset
    from mislas_hf.losses import LabelAwareSmoothingLoss, mixup_batch, mixup_loss
    from mislas_hf.sampling import ClassAwareSampler

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = load_benchmark("cifar10-lt", imbalance_factor=100, dataset_name=spec["dataset_name"]).splits["train"]
    if spec["max_train_samples"]:
        train = subset(train, spec["max_train_samples"])
    labels = dataset_labels(train)
    counts = class_counts(train, num_classes=10)
    images = np.stack([np.asarray(image.convert("RGB")) for image in train["image"]])
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])

    class ReferenceCifar(torch.utils.data.Dataset):
        """torchvision's `CIFAR10.__getitem__` on the long-tailed images: a PIL image through the transform."""

        def __len__(self):
            return len(labels)

        def __getitem__(self, index):
            return transform(Image.fromarray(images[index])), labels[index]

    stage = spec["stage"]
    loader = torch.utils.data.DataLoader(
        ReferenceCifar(),
        batch_size=spec["batch_size"],
        shuffle=stage == 1,
        sampler=ClassAwareSampler(labels, samples_per_class=4) if stage == 2 else None,
        num_workers=spec["workers"],
        pin_memory=device.type == "cuda",
    )
    model = MislasForImageClassification(MislasConfig(backbone="resnet32", num_labels=10, class_counts=counts))
    if stage == 2:
        model.prepare_stage2(head_mode="mislas", shift_bn=False)
        criterion = LabelAwareSmoothingLoss(counts, smooth_head=0.3, smooth_tail=0.0).to(device)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    model.to(device).train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=2e-4)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    total, step, start, loss_sum, correct = spec["warmup"] + spec["steps"], 0, 0.0, 0.0, torch.zeros(2, device=device)
    while step < total:
        for pixel_values, target in loader:  # a new iterator per epoch: its workers start again, as in the reference
            pixel_values = pixel_values.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if stage == 1:
                pixel_values, target_a, target_b, lam = mixup_batch(pixel_values, target, alpha=1.0)
                output = model(pixel_values=pixel_values).logits
                loss = mixup_loss(criterion, output, target_a, target_b, lam)
            else:
                output = model(pixel_values=pixel_values).logits
                loss = criterion(output, target)
            hits = output.topk(5, dim=1).indices.eq(target[:, None])  # the reference's accuracy(topk=(1, 5))
            correct += torch.stack([hits[:, 0].sum(), hits.sum()])
            loss_sum += loss.item() * len(target)  # its AverageMeter: a host sync every step
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == spec["warmup"]:
                synchronize()
                start = time.perf_counter()
            if step == total:
                break
    synchronize()
    seconds = time.perf_counter() - start
    return {
        "images_per_s": spec["steps"] * spec["batch_size"] / seconds,
        "step_ms": 1000 * seconds / spec["steps"],
        "batch_size": spec["batch_size"],
        "timed_steps": spec["steps"],
        "workers": spec["workers"],
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
    }


def run_reference(spec: dict) -> dict:
    """`measure_reference(spec)` in a fresh Python process; its figures come back as the last stdout line."""
    completed = subprocess.run(
        [sys.executable, __file__, "--measure_reference", json.dumps(spec)], capture_output=True, text=True,
        cwd=REPO_ROOT,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"reference loop, stage {spec['stage']} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------------
# The complete run
# ----------------------------------------------------------------------------------------------------------------------


def config_epochs(config: str) -> tuple[float, float]:
    """(stage1_epochs, stage2_epochs) of a recipe config, `MislasTrainingArguments`' defaults where it sets none."""
    import yaml

    from mislas_hf.training_args import MislasTrainingArguments

    values = yaml.safe_load(Path(config).read_text()) or {}
    defaults = {field.name: field.default for field in dataclasses.fields(MislasTrainingArguments)}
    return tuple(float(values.get(name, defaults[name])) for name in ("stage1_epochs", "stage2_epochs"))


def extrapolate_full_run(
    slice_wall_s: float, slice_train_s: tuple[float, float], slice_epochs: tuple[float, float],
    full_epochs: tuple[float, float],
) -> float:
    """The wall time of a run of `full_epochs` from a timed slice of `slice_epochs`: the slice's time outside the
    two stages' training loops (start-up, data, test-set reports, cards) as it is, plus each stage's training time
    (the Trainer's `train_runtime`, per-epoch checkpoints included) scaled by its epochs. The first epoch's warm-up
    is scaled with the rest, so the estimate leans high."""
    outside = slice_wall_s - sum(slice_train_s)
    return outside + sum(train * full / part for train, full, part in zip(slice_train_s, full_epochs, slice_epochs))


def full_run_decision(mode: str, predicted_s: float | None, remaining_s: float) -> str:
    """"measured" when the complete run is to be run (`measure`, or `auto` with the slice's prediction within the
    remaining budget), "extrapolated" when the slice's prediction is reported instead, "skipped" for `skip`."""
    if mode == "skip":
        return "skipped"
    if mode == "measure" or (mode == "auto" and predicted_s <= remaining_s):
        return "measured"
    return "extrapolated"


def recipe_command(options, output_dir: Path, epochs: tuple[float, float]) -> list[str]:
    """`recipes/train.py` on the config with the benchmark's data, `epochs` (stage 1, stage 2) and its own folder."""
    command = [
        sys.executable, str(REPO_ROOT / "recipes/train.py"), "--config", options.config,
        "--dataset_name", options.dataset_name, "--output_dir", str(output_dir),
        "--stage1_epochs", f"{epochs[0]:g}", "--stage2_epochs", f"{epochs[1]:g}",
    ]
    for name in ("max_train_samples", "max_eval_samples", "learning_rate"):
        if getattr(options, name):
            command += [f"--{name}", str(getattr(options, name))]
    if options.device == "cpu":
        command += ["--use_cpu", "true"]
    return command


def time_recipe(options, epochs: tuple[float, float], timeout_s: float | None) -> dict | None:
    """Run `recipe_command` once and return its wall time and each stage's `train_runtime`; None if it ran past
    `timeout_s` (then it is stopped)."""
    with tempfile.TemporaryDirectory(prefix="gpu_benchmark_run_") as folder:
        output_dir = Path(folder) / "run"
        log_path = Path(folder) / "log.txt"
        started = time.perf_counter()
        with open(log_path, "w") as log:
            try:
                completed = subprocess.run(
                    recipe_command(options, output_dir, epochs), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                return None
        wall_s = time.perf_counter() - started
        if completed.returncode != 0:
            raise RuntimeError(f"recipes/train.py failed:\n{log_path.read_text()[-4000:]}")
        train_s = tuple(
            json.loads((output_dir / f"stage{stage}" / "train_results.json").read_text())["train_runtime"]
            for stage in (1, 2)
        )
    return {"epochs": list(epochs), "wall_s": wall_s, "train_s": list(train_s)}


def full_run(options, deadline: float) -> dict | None:
    """The complete run's wall time as `--full_run` asks (see the module docstring): `how` it was obtained
    ("measured" or "extrapolated"), and for an extrapolation `why` the complete run was not measured."""
    if options.full_run == "skip":
        return None
    full_epochs = options.full_epochs or config_epochs(options.config)
    result = {"epochs": list(full_epochs), "slice": None, "predicted_s": None}
    if options.full_run != "measure":
        result["slice"] = time_recipe(options, options.slice_epochs, timeout_s=None)
        result["predicted_s"] = extrapolate_full_run(
            result["slice"]["wall_s"], result["slice"]["train_s"], options.slice_epochs, full_epochs
        )
    remaining = deadline - time.perf_counter()
    result["how"] = full_run_decision(options.full_run, result["predicted_s"], remaining)
    result["wall_s"] = result["predicted_s"]
    if result["how"] == "extrapolated":
        result["why"] = (
            "--full_run extrapolate" if options.full_run == "extrapolate"
            else f"the prediction exceeds the {max(remaining, 0):.0f} s left of the time budget"
        )
        return result
    measured = time_recipe(options, full_epochs, timeout_s=None if options.full_run == "measure" else remaining)
    if measured is None:
        stopped = f"the complete run was stopped at the time budget, after {remaining:.0f} s"
        result.update(how="extrapolated", why=stopped)
    else:
        result.update(measured=measured, wall_s=measured["wall_s"])
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def _epochs_text(epochs) -> str:
    return " + ".join(f"{value:g}" for value in epochs)


def full_run_sentence(run: dict) -> str:
    """One sentence on the complete run: its wall time and whether it was measured or extrapolated."""
    epochs = _epochs_text(run["epochs"])
    if run["how"] == "measured":
        text = f"**{epochs}-epoch run alone: {run['wall_s']:.1f} s, measured**"
        if run["predicted_s"] is not None:
            text += f" (the {_epochs_text(run['slice']['epochs'])}-epoch slice predicted {run['predicted_s']:.1f} s)"
        return text + "."
    train = " + ".join(f"{value:.1f}" for value in run["slice"]["train_s"])
    return (
        f"**{epochs}-epoch run alone: {run['wall_s']:.1f} s, extrapolated** from a "
        f"{_epochs_text(run['slice']['epochs'])}-epoch slice ({run['slice']['wall_s']:.1f} s of wall time, of which "
        f"{train} s in the two stages' training loops); not measured: {run['why']}."
    )


def format_markdown(report: dict) -> str:
    """The figures as markdown: images/s per phase and column, the best package column over the reference, and the
    complete run's sentence."""
    settings = report["settings"]
    lines = [
        f"GPU benchmark on {report['device']} (PyTorch {report['torch']}, {report['cpus']} CPU cores): "
        f"`{report['command']}`",
        "",
        "| phase | reference loop | " + " | ".join(f"package {column}" for column in PACKAGE_VARIANTS)
        + " | best / reference |",
        "| --- |" + " ---: |" * (len(COLUMNS) + 1),
    ]
    for phase, name in PHASES.items():
        row = report["images_per_s"].get(phase)
        if row is None:
            continue
        rates = [row[column]["images_per_s"] for column in COLUMNS]
        best = max(rates[1:]) / rates[0]
        lines.append(f"| {name} | " + " | ".join(f"{rate:,.0f}" for rate in rates) + f" | {best:.2f}x |")
    lines += [
        "",
        f"Training images/s over {settings['steps']} timed steps after {settings['warmup']} warm-up steps, batch "
        f"{settings['batch_size']}. Reference loop: fp32, NCHW, per-sample PIL transforms in "
        f"{settings['reference_workers']} loader workers, a host sync per step.",
    ]
    if report.get("full_run"):
        lines += ["", full_run_sentence(report["full_run"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    options = parse_arguments(argv)
    if options.measure_reference:
        print(json.dumps(measure_reference(json.loads(options.measure_reference))))
        return {}
    started = time.perf_counter()
    deadline = started + options.time_budget_s
    if options.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every measurement subprocess then runs on the CPU
    import torch

    if options.device is None:
        options.device = "cuda" if torch.cuda.is_available() else "cpu"
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible here; pass --device cpu (with --dry_run) instead")
    batch_size = 128
    extra = [f"--{name}={getattr(options, name)}" for name in ("max_train_samples", "max_eval_samples")
             if getattr(options, name)]
    images_per_s = {}
    for phase in PHASES:
        stage = int(phase[-1])
        reference = run_reference({
            "stage": stage, "warmup": options.warmup, "steps": options.steps, "workers": options.reference_workers,
            "batch_size": batch_size, "dataset_name": options.dataset_name,
            "max_train_samples": options.max_train_samples,
        })
        images_per_s[phase] = {"reference": reference}
        print(f"reference / {phase}: {reference['images_per_s']:.0f} images/s", file=sys.stderr)
        for column, variant in PACKAGE_VARIANTS.items():
            spec = {
                "variant": variant, "phase": phase, "flags": throughput.variant_flags(variant) + extra,
                "warmup": options.warmup, "steps": options.steps, "config": options.config,
                "dataset_name": options.dataset_name,
            }
            images_per_s[phase][column] = measure_in_subprocess(throughput.__file__, spec, f"{column} / {phase}")
            print(f"{column} / {phase}: {images_per_s[phase][column]['images_per_s']:.0f} images/s", file=sys.stderr)
    report = {
        "command": " ".join(["python", "benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": reference["device"],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "settings": {
            "warmup": options.warmup, "steps": options.steps, "batch_size": batch_size,
            "reference_workers": options.reference_workers, "config": options.config, "dry_run": options.dry_run,
            "time_budget_s": options.time_budget_s,
        },
        "images_per_s": images_per_s,
        "full_run": full_run(options, deadline),
        "seconds": None,
    }
    report["seconds"] = time.perf_counter() - started
    markdown = format_markdown(report)
    print(markdown)
    if options.markdown:
        Path(options.markdown).write_text(markdown)
    if options.json:
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
