"""MiSLAS against post-hoc temperature scaling on CIFAR-10-LT (imbalance factor 100), honestly: every model trained
with the same 10% per-class hold-out of the training set (`--validation_split_percentage 10`, the config's seed), and
every temperature fit on that hold-out, never on the test set.

Models (trained once each, in OUTPUT_DIR/models/<model>/stage{1,2}/; the stage-2 models share `mixup`):

  ce          CE, one stage, no mixup                                 (--stage 1 --mixup_alpha 0)
  mixup       stage 1 with mixup                                      (--stage 1)
  lws_mixup   LWS on `mixup`   (cross-entropy, no shifted BN)         (--stage 2 --head_mode lws --stage2_loss ce)
  crt_mixup   cRT on `mixup`   (cross-entropy, no shifted BN)         (--stage 2 --head_mode crt --stage2_loss ce)
  mislas      MiSLAS on `mixup` (recipes/configs/cifar10_lt_if100.yaml as it is)

Rows (OUTPUT_DIR/rows/<row>/ holds each calibrated model with its eval_results.json, diagram and card):

  ce, ce_ts, ce_classwise_ts, mixup_ts, lws_mixup, lws_mixup_ts, crt_mixup_ts, mislas, mislas_ts

"_ts" is `recipes/calibrate.py --method temperature` (one T, Guo et al. 2017), "_classwise_ts" `--method
classwise_temperature` (one T per class, regularised towards the scalar T). The paper's schedule (200 + 10 epochs):

    python recipes/compare_calibration.py --output_dir runs/compare_calibration

It resumes where it stopped: a model or row whose `eval_results.json` exists is not redone, and a stage that was
interrupted resumes from the last checkpoint in its folder (the config saves one per epoch). Extra arguments go to
every training and calibration run (for a smoke test: `--max_steps 2 --max_train_samples 300 --max_eval_samples
200`; their numbers mean nothing). Writes OUTPUT_DIR/results.md (the table, percent except NLL and Brier),
OUTPUT_DIR/results.json (all metrics and temperatures, fractions) and OUTPUT_DIR/reliability_diagrams.png (the rows'
diagrams side by side).
"""

import argparse
import json
import os
from pathlib import Path

from mislas_hf.calibration import combine_reliability_diagrams
from mislas_hf.scripts.arguments import CalibrationArguments, parse_arguments
from mislas_hf.scripts.calibrate import calibrate
from mislas_hf.scripts.report import DIAGRAM_FILENAME
from mislas_hf.scripts.train import train

CONFIG = Path(__file__).parent / "configs" / "cifar10_lt_if100.yaml"
HELD_OUT_PERCENTAGE = "10"
# model -> (stage it ends with, its flags, the stage-1 model it starts from)
MODELS = {
    "ce": (1, ["--stage", "1", "--mixup_alpha", "0"], None),
    "mixup": (1, ["--stage", "1"], None),
    "lws_mixup": (2, ["--stage", "2", "--head_mode", "lws", "--stage2_loss", "ce", "--shift_bn", "false"], "mixup"),
    "crt_mixup": (2, ["--stage", "2", "--head_mode", "crt", "--stage2_loss", "ce", "--shift_bn", "false"], "mixup"),
    "mislas": (2, ["--stage", "2"], "mixup"),
}
# row -> (label, model, calibration method or None)
ROWS = {
    "ce": ("CE", "ce", None),
    "ce_ts": ("CE + TS", "ce", "temperature"),
    "ce_classwise_ts": ("CE + class-wise TS", "ce", "classwise_temperature"),
    "mixup_ts": ("mixup (stage 1) + TS", "mixup", "temperature"),
    "lws_mixup": ("LWS + mixup", "lws_mixup", None),
    "lws_mixup_ts": ("LWS + mixup + TS", "lws_mixup", "temperature"),
    "crt_mixup_ts": ("cRT + mixup + TS", "crt_mixup", "temperature"),
    "mislas": ("MiSLAS", "mislas", None),
    "mislas_ts": ("MiSLAS + TS", "mislas", "temperature"),
}
COLUMNS = [  # (header, metrics key, percent)
    ("Top-1", "accuracy", True), ("Many", "many_accuracy", True), ("Medium", "medium_accuracy", True),
    ("Few", "few_accuracy", True), ("ECE", "ece", True), ("MCE", "mce", True), ("Classwise ECE", "classwise_ece", True),
    ("Adaptive ECE", "adaptive_ece", True), ("Many ECE", "many_ece", True), ("Medium ECE", "medium_ece", True),
    ("Few ECE", "few_ece", True), ("NLL", "nll", False), ("Brier", "brier", False),
]


def model_dir(output_dir: Path, model: str) -> Path:
    stage = MODELS[model][0]
    return output_dir / "models" / model / f"stage{stage}"


def train_model(output_dir: Path, model: str, common: list[str]) -> None:
    """Train `model` (and the stage-1 model it starts from) unless its evaluation exists; resumes interrupted
    stages from their last checkpoint."""
    if (model_dir(output_dir, model) / "eval_results.json").is_file():
        return
    _, flags, start = MODELS[model]
    if start is not None:
        train_model(output_dir, start, common)
        flags = [*flags, "--model_name_or_path", str(model_dir(output_dir, start))]
    run_flags = [*common, *flags, "--output_dir", str(output_dir / "models" / model), "--resume_from_checkpoint", "true"]
    model_args, data_args, training_args, config_text = parse_arguments(run_flags)
    train(model_args, data_args, training_args, config_yaml=config_text)


def row_dir(output_dir: Path, row: str) -> Path:
    _, model, method = ROWS[row]
    return model_dir(output_dir, model) if method is None else output_dir / "rows" / row


def run_row(output_dir: Path, row: str, common: list[str]) -> dict:
    """The row's test metrics (fractions) and temperature, training and calibrating what is missing."""
    _, model, method = ROWS[row]
    train_model(output_dir, model, common)
    folder = row_dir(output_dir, row)
    if method is not None and not (folder / "eval_results.json").is_file():
        calibration_args, _, data_args, training_args, _ = parse_arguments(
            ["--model", str(model_dir(output_dir, model)), *common, "--method", method, "--output_dir", str(folder)],
            extra_dataclasses=(CalibrationArguments,),
        )
        calibrate(calibration_args, data_args, training_args)
    metrics = json.loads((folder / "eval_results.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    return {"metrics": {key.removeprefix("eval_"): value for key, value in metrics.items()},
            "temperature": config.get("temperature", 1.0)}


def temperature_text(temperature) -> str:
    if isinstance(temperature, list):
        return f"{min(temperature):.2f}-{max(temperature):.2f}"
    return "–" if temperature == 1.0 else f"{temperature:.3f}"


def write_table(results: dict, path: Path, extra: list[str]) -> None:
    header = ["Row", *(name for name, _, _ in COLUMNS), "T"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, result in results.items():
        cells = [ROWS[row][0]]
        for _, key, percent in COLUMNS:
            value = result["metrics"].get(key)
            cells.append("–" if value is None else f"{100 * value:.2f}" if percent else f"{value:.3f}")
        lines.append("| " + " | ".join([*cells, temperature_text(result["temperature"])]) + " |")
    lines += [
        "",
        "Test split of CIFAR-10-LT IF 100 (ResNet-32); percent except NLL (nats) and Brier. Every model trained with "
        f"the same {HELD_OUT_PERCENTAGE}% per-class hold-out of the training set, every temperature T fit on it "
        "(class-wise: the range of the T_k).",
        f"Extra arguments: `{' '.join(extra) or 'none (the paper schedule)'}`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--dataset_name",
        default=os.environ.get("MISLAS_CIFAR10_DIR", str(Path(__file__).resolve().parents[2] / "shared/data/cifar10")),
        help="CIFAR-10 parquet folder or Hub id (default: MISLAS_CIFAR10_DIR or ../shared/data/cifar10).",
    )
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"Comma-separated rows to run, from {', '.join(ROWS)} (default: all)."
    )
    args, extra = parser.parse_known_args(argv)
    selected = args.rows.split(",")
    unknown = [row for row in selected if row not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    output_dir = Path(args.output_dir)
    common = ["--config", str(CONFIG), "--dataset_name", args.dataset_name,
              "--validation_split_percentage", HELD_OUT_PERCENTAGE, *extra]
    results = {row: run_row(output_dir, row, common) for row in selected}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_table(results, output_dir / "results.md", extra)
    combine_reliability_diagrams(
        [(ROWS[row][0], row_dir(output_dir, row) / DIAGRAM_FILENAME) for row in selected],
        output_dir / "reliability_diagrams.png",
    )
    return results


if __name__ == "__main__":
    main()
