"""The calibration job behind `recipes/calibrate.py`: post-hoc temperature scaling (scalar or class-wise) of a saved
model, fit on held-out images only (the hold-out its config records, or a named validation split; never the test or
training split), stored in the model's config, and the calibrated model evaluated on the test split."""

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from ..calibration import fit_classwise_temperatures, fit_temperature, negative_log_likelihood
from ..data import class_counts
from ..modeling_mislas import MislasForImageClassification
from ..training_args import MislasTrainingArguments
from .arguments import (
    CALIBRATION_METHODS,
    CalibrationArguments,
    DataArguments,
    ModelArguments,
    parse_saved_model_arguments,
)
from .data_setup import load_splits, train_batch_augmentation
from .launch import setup_logging, use_cpu_cores
from .model_setup import check_model_classes, plan_model
from .report import float32_evaluation_trainer, push_folder, report, save_model_folder

logger = logging.getLogger(__name__)


def check_calibration_data(
    calibration_args: CalibrationArguments, model_config, data_args: DataArguments
) -> DataArguments:
    """Refuse, before any image is read, to fit on the test or training split, or on a hold-out other than the one
    recorded in `model_config.held_out_split`. Returns the data options that rebuild the recorded hold-out."""
    name = calibration_args.validation_split_name
    if name is not None:
        if name in ("test", "train"):
            why = "the test split only measures the calibrated model" if name == "test" else "the model was trained on it"
            raise ValueError(
                f"--validation_split_name {name}: temperatures are fit on held-out images only, never on the {name} "
                f"split ({why}). Leave --validation_split_name unset to use the --validation_split_percentage hold-out "
                "recorded when the model was trained, or name a separate validation split."
            )
        if data_args.validation_split_percentage:
            raise ValueError(
                "--validation_split_name and --validation_split_percentage both name held-out images: pass one of them."
            )
        return data_args
    record = model_config.held_out_split
    if record is None:
        raise ValueError(
            f"{calibration_args.model} records no held-out split: it was trained without --validation_split_percentage, "
            "so every training image may have been seen. Retrain with --validation_split_percentage 10, or pass "
            "--validation_split_name NAME of a held-out split of the data (never the test split)."
        )
    if data_args.validation_split_percentage not in (None, record["percentage"]):
        raise ValueError(
            f"--validation_split_percentage {data_args.validation_split_percentage} differs from the "
            f"{record['percentage']}% hold-out recorded in the model's config: leave it unset (the recorded one is used)."
        )
    given = {"dataset": data_args.dataset, "imbalance_factor": data_args.imbalance_factor, "split_seed": data_args.split_seed}
    for option, value in given.items():  # an unset --imbalance_factor takes the benchmark's default: counts check it
        if value != record[option] and not (option == "imbalance_factor" and value is None):
            raise ValueError(
                f"--{option} {value} differs from the {record[option]!r} the model was trained with "
                f"(config.held_out_split): pass the training run's data options so the hold-out is the same images."
            )
    return dataclasses.replace(data_args, validation_split_percentage=record["percentage"])


def calibrate(calibration_args: CalibrationArguments, data_args: DataArguments, args: MislasTrainingArguments):
    """Fit a temperature (scalar or class-wise) on held-out images, store it in the model, evaluate the calibrated
    model on the test split and write the folder: weights, config, image processor, `eval_results.json`,
    reliability diagram, card. Returns the test metrics."""
    if calibration_args.method not in CALIBRATION_METHODS:
        raise ValueError(f"--method {calibration_args.method!r} is not one of {', '.join(CALIBRATION_METHODS)}.")
    setup_logging(args)
    use_cpu_cores(args)
    model = MislasForImageClassification.from_pretrained(calibration_args.model)
    data_args = check_calibration_data(calibration_args, model.config, data_args)
    record = model.config.held_out_split
    # the recorded seed rebuilds the hold-out (and draws the same --max_eval_samples test subset as the training run)
    split_args = dataclasses.replace(args, seed=record["seed"]) if calibration_args.validation_split_name is None else args
    plan = plan_model(ModelArguments(model_name_or_path=calibration_args.model), stage="2")
    benchmark, counts, _, validation, test = load_splits(
        data_args, split_args, plan, calibration_args.validation_split_name
    )
    check_model_classes(
        model, calibration_args.model, benchmark, "calibrate it on the benchmark it was trained on (--dataset)."
    )
    held_out_counts = class_counts(validation, num_classes=len(benchmark.class_names))
    if calibration_args.validation_split_name is None and held_out_counts != record["class_counts"]:
        differing = [k for k, (a, b) in enumerate(zip(held_out_counts, record["class_counts"])) if a != b]
        raise ValueError(
            f"the rebuilt hold-out has other images than the recorded one (held-out images per class differ for "
            f"classes {differing[:10]}): pass the training run's data options (--dataset_name, --data_dir, lists)."
        )
    model.config.temperature, model.config.calibration = 1.0, None  # fit on the head's own logits
    trainer = float32_evaluation_trainer(model, args, benchmark, counts, train_batch_augmentation(data_args, benchmark))
    prediction = trainer.predict(validation, metric_key_prefix="validation")
    logits, labels = np.asarray(prediction.predictions, dtype=np.float64), np.asarray(prediction.label_ids)
    if calibration_args.method == "temperature":
        temperature = fit_temperature(logits, labels)
        scaled = logits / temperature
    else:
        temperature = fit_classwise_temperatures(logits, labels, calibration_args.classwise_regularization).tolist()
        scaled = logits / np.asarray(temperature)
    if calibration_args.validation_split_name is None:
        fit_on = (
            f"the {record['percentage']:g}% per-class hold-out of the {benchmark.name} training set (seed "
            f"{record['seed']}) that training left out, {len(labels)} images"
        )
    else:
        fit_on = f"the '{calibration_args.validation_split_name}' split of {benchmark.name}, {len(labels)} images"
    model.config.temperature = temperature
    model.config.calibration = {
        "method": calibration_args.method,
        "fit_on": fit_on,
        "held_out_images": len(labels),
        "uncalibrated_model": calibration_args.model,
        "held_out_nll_before": negative_log_likelihood(logits, labels),
        "held_out_nll_after": negative_log_likelihood(scaled, labels),
        **({"regularization": calibration_args.classwise_regularization}
           if calibration_args.method == "classwise_temperature" else {}),
    }
    logger.info(f"fitted {calibration_args.method} on {fit_on}: T = {temperature}")
    os.makedirs(args.output_dir, exist_ok=True)
    metrics = report(trainer, test, args.output_dir, benchmark, None,
                     model_id=args.hub_model_id or Path(args.output_dir).resolve().name)
    if trainer.is_world_process_zero():
        save_model_folder(model, benchmark, args.output_dir)
    push_folder(args, args.output_dir, f"{calibration_args.method} fit on {fit_on}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """`mislas-calibrate` / `recipes/calibrate.py`: `MODEL --method temperature|classwise_temperature --output_dir DIR`."""
    calibration_args, data_args, training_args = parse_saved_model_arguments(CalibrationArguments, argv)
    return calibrate(calibration_args, data_args, training_args)


def cli() -> None:
    """The `mislas-calibrate` command: `main` on the command line, exiting 0 when it succeeds (not with the metrics)."""
    main()
