"""MiSLAS against post-hoc calibration and the logit-adjustment baselines on CIFAR-10-LT (imbalance factor 100),
honestly: every model trained with the same 10% per-class hold-out of the training set (`--validation_split_percentage
10`, the config's seed), and every calibration fit on that hold-out, never on the test set.

Models (trained once each, in OUTPUT_DIR/models/<model>/stage{1,2}/; the stage-2 models share `mixup`):

  ce                CE, one stage, no mixup                               (--stage 1 --mixup_alpha 0)
  balanced_softmax  Balanced Softmax, one stage, no mixup                 (... --stage1_loss logit_adjusted
                                                                           --logit_adjustment_tau 1)
  mixup             stage 1 with mixup                                    (--stage 1)
  lws_mixup         LWS on `mixup`   (cross-entropy, no shifted BN)       (--stage 2 --head_mode lws --stage2_loss ce)
  crt_mixup         cRT on `mixup`   (cross-entropy, no shifted BN)       (--stage 2 --head_mode crt --stage2_loss ce)
  mislas            MiSLAS on `mixup` (recipes/configs/cifar10_lt_if100.yaml as it is)

Rows (OUTPUT_DIR/rows/<row>/ holds each calibrated model with its eval_results.json, diagram and card), `ROWS`:

  ce, ce_ts, ce_classwise_ts, ce_la, ce_la_ts, balanced_softmax, balanced_softmax_balanced_ts, mixup_ts, lws_mixup,
  lws_mixup_ts, crt_mixup_ts, crt_mixup_balanced_ts, mislas, mislas_ts, mislas_balanced_ts

Post-hoc methods are `recipes/calibrate.py --method ...` for a uniform (balanced) test prior: "_ts" `temperature` (one
T, Guo et al. 2017), "_classwise_ts" `classwise_temperature`, "_balanced_ts" `balanced_temperature` (T fit on the
hold-out weighted to the prior the model was trained for, then the prior correction), "_la" `logit_adjustment`
(z - tau log pi_train, tau fit on the hold-out weighted to a balanced prior, Menon et al. 2021), "_la_ts"
`logit_adjustment_temperature` (T and tau jointly). The paper's schedule (200 + 10 epochs):

    python recipes/compare_calibration.py --output_dir runs/compare_calibration [--test_priors]

It resumes where it stopped: a model or row whose `eval_results.json` exists is not redone, and a stage that was
interrupted resumes from the last checkpoint in its folder (the config saves one per epoch). Extra arguments go to
every training, calibration and evaluation run (for a smoke test: `--max_steps 40 --learning_rate 0.02
--max_train_samples 1000 --max_eval_samples 500`; their numbers mean nothing; with fewer steps a model can rank the
true class no better than chance on the (reweighted) hold-out, and `recipes/calibrate.py` then refuses to fit). Writes
OUTPUT_DIR/results.md (the tables, percent except NLL and Brier), OUTPUT_DIR/results.json (all metrics, temperatures
and taus, fractions) and OUTPUT_DIR/reliability_diagrams.png (the rows' diagrams side by side).

`--test_priors` adds the second table: every row's model evaluated (`recipes/evaluate_model.py --test_priors protocol
--target_prior estimate`, into OUTPUT_DIR/test_priors/<row>/, resumed the same way) on the 11 test subsets of the
test-agnostic protocol (forward long-tailed 50 ... 2, uniform, backward 2 ... 50) with its prior as trained, corrected
to the subset's known prior, and corrected to the prior EM estimates from the unlabeled subset (after BCTS on the
hold-out). At imbalance factor 50 the protocol keeps int(n / 50) test images of the rarest class, n the images per
class: a smoke test with `--test_priors` needs `--max_eval_samples 500` or more (its subset is class-proportional).
"""

import argparse
import json
import os
from pathlib import Path

from mislas_hf.calibration import combine_reliability_diagrams
from mislas_hf.scripts.arguments import CalibrationArguments, EvaluationArguments, parse_arguments
from mislas_hf.scripts.calibrate import calibrate
from mislas_hf.scripts.evaluate import PRIOR_MODES, TEST_PRIORS_KEY, evaluate
from mislas_hf.scripts.report import DIAGRAM_FILENAME
from mislas_hf.scripts.train import train

CONFIG = Path(__file__).parent / "configs" / "cifar10_lt_if100.yaml"
HELD_OUT_PERCENTAGE = "10"
# model -> (stage it ends with, its flags, the stage-1 model it starts from)
MODELS = {
    "ce": (1, ["--stage", "1", "--mixup_alpha", "0"], None),
    "balanced_softmax": (
        1,
        ["--stage", "1", "--mixup_alpha", "0", "--stage1_loss", "logit_adjusted", "--logit_adjustment_tau", "1"],
        None,
    ),
    "mixup": (1, ["--stage", "1"], None),
    "lws_mixup": (2, ["--stage", "2", "--head_mode", "lws", "--stage2_loss", "ce", "--shift_bn", "false"], "mixup"),
    "crt_mixup": (2, ["--stage", "2", "--head_mode", "crt", "--stage2_loss", "ce", "--shift_bn", "false"], "mixup"),
    "mislas": (2, ["--stage", "2"], "mixup"),
}
# row -> (label, model, calibration method or None); the first table's rows, in its order
ROWS = {
    "ce": ("CE", "ce", None),
    "ce_ts": ("CE + TS", "ce", "temperature"),
    "ce_classwise_ts": ("CE + class-wise TS", "ce", "classwise_temperature"),
    "ce_la": ("CE + logit adjustment", "ce", "logit_adjustment"),
    "ce_la_ts": ("CE + logit adjustment + TS", "ce", "logit_adjustment_temperature"),
    "balanced_softmax": ("Balanced Softmax", "balanced_softmax", None),
    "balanced_softmax_balanced_ts": ("Balanced Softmax + balanced TS", "balanced_softmax", "balanced_temperature"),
    "mixup_ts": ("mixup (stage 1) + TS", "mixup", "temperature"),
    "lws_mixup": ("LWS + mixup", "lws_mixup", None),
    "lws_mixup_ts": ("LWS + mixup + TS", "lws_mixup", "temperature"),
    "crt_mixup_ts": ("cRT + mixup + TS", "crt_mixup", "temperature"),
    "crt_mixup_balanced_ts": ("cRT + mixup + balanced TS", "crt_mixup", "balanced_temperature"),
    "mislas": ("MiSLAS", "mislas", None),
    "mislas_ts": ("MiSLAS + TS", "mislas", "temperature"),
    "mislas_balanced_ts": ("MiSLAS + balanced TS", "mislas", "balanced_temperature"),
}
COLUMNS = [  # (header, metrics key, percent)
    ("Top-1", "accuracy", True), ("Many", "many_accuracy", True), ("Medium", "medium_accuracy", True),
    ("Few", "few_accuracy", True), ("ECE", "ece", True), ("MCE", "mce", True), ("Classwise ECE", "classwise_ece", True),
    ("Adaptive ECE", "adaptive_ece", True), ("Many ECE", "many_ece", True), ("Medium ECE", "medium_ece", True),
    ("Few ECE", "few_ece", True), ("NLL", "nll", False), ("Brier", "brier", False),
]
TEST_PRIOR_COLUMNS = [("Top-1", "accuracy", True), ("ECE", "ece", True), ("NLL", "nll", False)]
"""The second table's metrics, one table each: per row and test prior, the value as trained / known prior / EM."""


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
    """The row's test metrics (fractions), temperature and tau (None without logit adjustment), training and
    calibrating what is missing."""
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
    return {"metrics": {key.removeprefix("eval_"): value for key, value in metrics.items() if key != TEST_PRIORS_KEY},
            "temperature": config.get("temperature", 1.0),
            "tau": (config.get("calibration") or {}).get("tau")}


def test_prior_dir(output_dir: Path, row: str) -> Path:
    return output_dir / "test_priors" / row


def run_test_priors(output_dir: Path, row: str, common: list[str], evaluate_missing: bool) -> dict | None:
    """The row's model on the 11 test priors of the protocol (`eval_test_priors` of its evaluation: per subset the
    record, the metrics of each prior mode and the EM estimate), evaluating it unless that was done; None when it was
    not and `evaluate_missing` is false."""
    folder = test_prior_dir(output_dir, row)
    if not (folder / "eval_results.json").is_file():
        if not evaluate_missing:
            return None
        evaluation_args, _, data_args, training_args, _ = parse_arguments(
            ["--model", str(row_dir(output_dir, row)), *common, "--test_priors", "protocol", "--target_prior",
             "estimate", "--output_dir", str(folder)],
            extra_dataclasses=(EvaluationArguments,),
        )
        evaluate(evaluation_args, data_args, training_args)
    return json.loads((folder / "eval_results.json").read_text())[TEST_PRIORS_KEY]


def value_text(value, percent: bool) -> str:
    return "–" if value is None else f"{100 * value:.2f}" if percent else f"{value:.3f}"


def temperature_text(temperature) -> str:
    if isinstance(temperature, list):
        return f"{min(temperature):.2f}-{max(temperature):.2f}"
    return "–" if temperature == 1.0 else f"{temperature:.3f}"


def write_table(results: dict, path: Path, extra: list[str]) -> None:
    """results.md: the first table (every metric of every row on the test split) and, for the rows evaluated on the
    test priors, the second (top-1, ECE and NLL per test prior: as trained / known prior / EM-estimated prior)."""
    header = ["Row", *(name for name, _, _ in COLUMNS), "T", "tau"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, result in results.items():
        cells = [ROWS[row][0], *(value_text(result["metrics"].get(key), percent) for _, key, percent in COLUMNS)]
        tau = result.get("tau")
        cells += [temperature_text(result["temperature"]), "–" if tau is None else f"{tau:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Test split of CIFAR-10-LT IF 100 (ResNet-32); percent except NLL (nats) and Brier. Every model trained with "
        f"the same {HELD_OUT_PERCENTAGE}% per-class hold-out of the training set, every temperature T and logit "
        "adjustment tau fit on it (class-wise: the range of the T_k).",
        f"Extra arguments: `{' '.join(extra) or 'none (the paper schedule)'}`.",
    ]
    shifted = {row: result["test_priors"] for row, result in results.items() if "test_priors" in result}
    if shifted:
        lines += ["", *test_prior_tables(shifted)]
    path.write_text("\n".join(lines) + "\n")


def test_prior_tables(shifted: dict) -> list[str]:
    """The second table's lines: one table per metric of `TEST_PRIOR_COLUMNS`, a row per calibration row, a column
    per test subset (in the protocol's order), each cell `as trained / known prior / EM-estimated prior`."""
    subsets = list(next(iter(shifted.values()))["subsets"])
    lines = []
    for name, key, percent in TEST_PRIOR_COLUMNS:
        lines += [
            f"**{name}{' (%)' if percent else ' (nats)'} on test sets with shifted class priors: as trained / known "
            "prior / EM-estimated prior**",
            "",
            "| Row | " + " | ".join(subsets) + " |",
            "|" + "---|" * (len(subsets) + 1),
        ]
        for row, test_priors in shifted.items():
            cells = [
                " / ".join(value_text(test_priors["subsets"][subset][mode][key], percent)
                           for mode in PRIOR_MODES if mode in test_priors["subsets"][subset])
                for subset in subsets
            ]
            lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Test subsets of the test-agnostic protocol (LADE, SADE): forwardN keeps the training order of class sizes at "
        "imbalance factor N, backwardN reverses it, uniform is the whole test set (seed 0). Known prior: the logits "
        "corrected by log pi_subset - log pi_model; EM: corrected to the prior EM estimates from the unlabeled subset "
        "(Saerens et al. 2002) after bias-corrected temperature scaling on the hold-out."
    )
    return lines


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(  # no abbreviations: --dataset (a data option) must not pass for --dataset_name
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--dataset_name",
        default=os.environ.get("MISLAS_CIFAR10_DIR", str(Path(__file__).resolve().parents[2] / "shared/data/cifar10")),
        help="CIFAR-10 parquet folder or Hub id (default: MISLAS_CIFAR10_DIR or ../shared/data/cifar10).",
    )
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"Comma-separated rows to run, from {', '.join(ROWS)} (default: all)."
    )
    parser.add_argument(
        "--test_priors", action="store_true",
        help="Also evaluate every row on the 11 test priors of the test-agnostic protocol (the second table).",
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
    for row in selected:  # evaluated now with --test_priors, or read from an earlier run with it
        test_priors = run_test_priors(output_dir, row, common, evaluate_missing=args.test_priors)
        if test_priors is not None:
            results[row]["test_priors"] = test_priors
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_table(results, output_dir / "results.md", extra)
    combine_reliability_diagrams(
        [(ROWS[row][0], row_dir(output_dir, row) / DIAGRAM_FILENAME) for row in selected],
        output_dir / "reliability_diagrams.png",
    )
    return results


if __name__ == "__main__":
    main()
