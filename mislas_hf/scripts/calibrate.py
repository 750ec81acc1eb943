"""The calibration job behind `recipes/calibrate.py`: post-hoc calibration of a saved model, fit on held-out images only
(the hold-out its config records, or a named validation split; never the test or training split), stored in the
model's config (`temperature`, `logit_bias`, `source_prior`, and `calibration`: what was fit on what, with the
held-out NLL and ECE before and after), and the calibrated model evaluated on the test split. The data options
default to those the model was trained with (`MislasConfig.training_data`, `parse_saved_model_arguments`).

Methods (`CALIBRATION_METHODS`; `mislas_hf.calibration.label_shift` for the formulas), with ``pi_s`` the prior the
model's logits were trained for (`model_source_prior`), ``pi_h`` the hold-out's, ``pi_t`` the `--target_prior`:

* `temperature`, `classwise_temperature`: the NLL of `softmax(z / T)` on the hold-out as it is (Guo et al. 2017).
* `balanced_temperature`: T by the held-out NLL weighted by ``pi_s(y) / pi_h(y)`` (the long-tailed hold-out made to
  stand for the prior the logits are for: uniform after stage 2 or Balanced Softmax), then the Bayes correction
  ``log pi_t - log pi_s`` as `logit_bias`.
* `logit_adjustment`: post-hoc logit adjustment (Menon et al., ICLR 2021), ``z - tau log pi_train`` (T = 1), tau
  given or fit by the held-out NLL weighted by ``(1 / K) / pi_h(y)`` (the adjusted logits are for a balanced prior),
  then ``log pi_t - log(1 / K)`` added for another target prior.
* `logit_adjustment_temperature`: the same with T and tau fit jointly (``z / T - tau log pi_train``).
"""

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from ..calibration import (
    apply_calibration,
    calibration_metrics,
    class_prior,
    fit_classwise_temperatures,
    fit_logit_adjustment,
    fit_temperature,
    logit_adjustment,
    model_source_prior,
    negative_log_likelihood,
    prior_correction,
    prior_weights,
)
from ..data import class_counts
from ..modeling_mislas import MislasForImageClassification
from ..training_args import MislasTrainingArguments
from .arguments import PRIOR_AWARE_METHODS, CalibrationArguments, DataArguments, ModelArguments
from .data_setup import load_splits, train_batch_augmentation
from .launch import setup_logging, use_cpu_cores
from .model_setup import check_model_classes, plan_model
from .report import float32_evaluation_trainer, float32_prediction, push_folder, report, save_model_folder
from .saved_model_arguments import parse_saved_model_arguments

logger = logging.getLogger(__name__)

TARGET_PRIOR_NAMES = {"uniform": "uniform (a balanced test set)", "train": "the training prior (config.class_counts)"}


def check_calibration_data(
    model_path: str, model_config, data_args: DataArguments, validation_split_name: str | None = None
) -> DataArguments:
    """Refuse, before any image is read, to fit on the test or training split, or on a hold-out other than the one
    recorded in `model_config.held_out_split`. Returns the data options that rebuild the recorded hold-out.

    `data_args` are those of `parse_saved_model_arguments`: an option the user did not pass is the recorded one, so
    only a passed option can differ from the record (or, when the options name other data than the model was
    trained on, the data set itself)."""
    name = validation_split_name
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
            f"{model_path} records no held-out split: it was trained without --validation_split_percentage, "
            "so every training image may have been seen. Retrain with --validation_split_percentage 10, or pass "
            "--validation_split_name NAME of a held-out split of the data (never the test split)."
        )
    if data_args.validation_split_percentage not in (None, record["percentage"]):
        raise ValueError(
            f"--validation_split_percentage {data_args.validation_split_percentage} differs from the "
            f"{record['percentage']}% hold-out recorded in the model's config: leave it unset (the recorded one is used)."
        )
    if data_args.dataset != record["dataset"]:
        named, trained_on = (
            "your own data (no --dataset)" if dataset is None else f"--dataset {dataset}"
            for dataset in (data_args.dataset, record["dataset"])
        )
        raise ValueError(
            f"the data options name {named}, but {model_path} was trained on, and holds out images of, "
            f"{trained_on} (config.held_out_split): leave the data options unset (the recorded ones are used) or pass "
            "the training run's, so the hold-out is the same images."
        )
    given = {"imbalance_factor": data_args.imbalance_factor, "split_seed": data_args.split_seed}
    for option, value in given.items():  # an unset --imbalance_factor takes the benchmark's default: counts check it
        if value != record[option] and not (option == "imbalance_factor" and value is None):
            raise ValueError(
                f"--{option} {value} differs from the {record[option]!r} the model was trained with "
                f"(config.held_out_split): leave it unset (the recorded one is used), so the hold-out is the same "
                "images."
            )
    return dataclasses.replace(data_args, validation_split_percentage=record["percentage"])


def load_held_out_and_test(
    model, model_path: str, data_args: DataArguments, args: MislasTrainingArguments,
    validation_split_name: str | None = None, what_to_do: str = "calibrate it on the benchmark it was trained on.",
):
    """The held-out images a calibration is fit on (the recorded hold-out, rebuilt and checked image for image by its
    per-class counts, or the split `validation_split_name`) and the test split, for the saved `model` loaded from
    `model_path`. Returns `(benchmark, training counts, held-out split, test split, fit_on)`, `fit_on` a phrase
    naming the held-out images for logs, config and card."""
    data_args = check_calibration_data(model_path, model.config, data_args, validation_split_name)
    record = model.config.held_out_split
    # the recorded seed rebuilds the hold-out (and draws the same --max_eval_samples test subset as the training run)
    split_args = dataclasses.replace(args, seed=record["seed"]) if validation_split_name is None else args
    plan = plan_model(ModelArguments(model_name_or_path=model_path), stage="2")
    benchmark, counts, _, validation, test = load_splits(data_args, split_args, plan, validation_split_name)
    check_model_classes(model, model_path, benchmark, what_to_do)
    held_out_counts = class_counts(validation, num_classes=len(benchmark.class_names))
    if validation_split_name is None and held_out_counts != record["class_counts"]:
        differing = [k for k, (a, b) in enumerate(zip(held_out_counts, record["class_counts"])) if a != b]
        raise ValueError(
            f"the rebuilt hold-out has other images than the recorded one (held-out images per class differ for "
            f"classes {differing[:10]}): pass the training run's data options (--dataset_name, --data_dir, lists)."
        )
    if validation_split_name is None:
        fit_on = (
            f"the {record['percentage']:g}% per-class hold-out of the {benchmark.name} training set (seed "
            f"{record['seed']}) that training left out, {len(validation)} images"
        )
    else:
        fit_on = f"the '{validation_split_name}' split of {benchmark.name}, {len(validation)} images"
    return benchmark, counts, validation, test, fit_on


def read_target_prior(option: str | None, model_config) -> tuple[np.ndarray, str]:
    """The class prior `--target_prior` names, float64 ``[K]`` summing to 1, and its name for the record:
    `uniform` (also when unset), `train` (`class_prior(config.class_counts)`) or a JSON file holding a list of one
    positive number per class in label order (a prior or counts). `FileNotFoundError` / `ValueError` naming the
    file and what it must hold, before any image is read."""
    num_classes = model_config.num_labels
    if option in (None, "uniform"):
        return np.full(num_classes, 1.0 / num_classes), "uniform"
    if option == "train":
        if model_config.class_counts is None:
            raise ValueError(
                "--target_prior train: the model's config records no training counts (config.class_counts): pass "
                f"them as a JSON file holding a list of {num_classes} numbers."
            )
        return class_prior(model_config.class_counts), "train"
    path = Path(option)
    expected = (
        f"a JSON list of {num_classes} positive numbers, one per class in label order ({model_config.id2label[0]}, "
        f"{model_config.id2label[1]}, ...): the class prior the calibrated model will meet, or class counts"
    )
    if not path.is_file():
        raise FileNotFoundError(
            f"--target_prior {option}: no such file; pass uniform, train, or a file holding {expected}."
        )
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--target_prior {path} is not JSON ({err}): it must hold {expected}.") from err
    if (not isinstance(values, list) or len(values) != num_classes
            or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)):
        held = f"a list of {len(values)} entries" if isinstance(values, list) else f"a JSON {type(values).__name__}"
        raise ValueError(f"--target_prior {path} holds {held}; it must hold {expected}.")
    bad = next((k for k, value in enumerate(values) if not (math.isfinite(value) and value > 0)), None)
    if bad is not None:
        raise ValueError(
            f"--target_prior {path}: class {bad} ({model_config.id2label[bad]}) has {values[bad]}, but every class "
            "needs a positive finite prior (its log enters the logits): give a class you expect rarely a small "
            "positive number instead of 0."
        )
    return class_prior(values), str(path)


def target_nll(logits: np.ndarray, labels: np.ndarray, prior: np.ndarray) -> float:
    """The held-out NLL under the class prior `prior`: the mean NLL of each class's held-out images, weighted by the
    class's prior (classes without held-out images left out, the others' weights renormalised); the mean of the
    per-image NLL weighted by `prior_weights(labels, K, prior)`."""
    present = np.unique(labels)
    per_class = [negative_log_likelihood(logits[labels == k], labels[labels == k]) for k in present]
    return float(np.dot(prior[present], per_class) / prior[present].sum())


def fit_calibration(calibration_args: CalibrationArguments, logits, labels, model_config, target_prior):
    """Fit `calibration_args.method` on the held-out `logits` / `labels` (float64, of the uncalibrated model) for the
    test prior `target_prior` (see the module docstring). Returns `(temperature, logit_bias or None, record)`, the
    record the method's own entries of `config.calibration` (regularization, tau)."""
    method, num_classes = calibration_args.method, logits.shape[1]
    if method == "temperature":
        return fit_temperature(logits, labels), None, {}
    if method == "classwise_temperature":
        regularization = calibration_args.classwise_regularization
        temperatures = fit_classwise_temperatures(logits, labels, regularization).tolist()
        return temperatures, None, {"regularization": regularization}
    if method == "balanced_temperature":
        source_prior = model_source_prior(model_config)
        temperature = fit_temperature(logits, labels, sample_weight=prior_weights(labels, num_classes, source_prior))
        return temperature, prior_correction(source_prior, target_prior), {}
    uniform = np.full(num_classes, 1.0 / num_classes)
    train_prior = class_prior(model_config.class_counts)
    if calibration_args.post_hoc_tau is not None:
        temperature, tau = 1.0, calibration_args.post_hoc_tau
    else:
        temperature, tau = fit_logit_adjustment(
            logits, labels, train_prior, sample_weight=prior_weights(labels, num_classes),
            temperature=None if method == "logit_adjustment_temperature" else 1.0,
        )
    bias = logit_adjustment(train_prior, tau) + prior_correction(uniform, target_prior)
    return temperature, bias, {"tau": tau, "tau_fit": calibration_args.post_hoc_tau is None}


def calibration_text(temperature: float | list[float], tau: float | None = None) -> str:
    """The fitted calibration as the job logs it: `T = 1.2345` (scalar) or the range of the class-wise T, and tau."""
    if isinstance(temperature, list):
        text = f"{len(temperature)} class-wise T from {min(temperature):.4f} to {max(temperature):.4f}"
    else:
        text = f"T = {temperature:.4f}"
    return text if tau is None else f"{text}, tau = {tau:.4f}"


def calibrate(calibration_args: CalibrationArguments, data_args: DataArguments, args: MislasTrainingArguments):
    """Fit `calibration_args.method` on held-out images, store it in the model (temperature, logit bias, source
    prior, record), evaluate the calibrated model on the test split and write the folder: weights, config, image
    processor, `eval_results.json`, reliability diagram, card. Returns the test metrics."""
    setup_logging(args)
    use_cpu_cores(args)
    model_path, method = calibration_args.model, calibration_args.method
    model = MislasForImageClassification.from_pretrained(model_path)
    prior_aware = method in PRIOR_AWARE_METHODS
    target_prior, target_name = read_target_prior(calibration_args.target_prior, model.config)
    benchmark, counts, validation, test, fit_on = load_held_out_and_test(
        model, model_path, data_args, args, calibration_args.validation_split_name
    )
    model.config.temperature, model.config.logit_bias, model.config.calibration = 1.0, None, None  # the head's logits
    trainer = float32_evaluation_trainer(model, args, benchmark, counts, train_batch_augmentation(data_args, benchmark))
    if model.config.source_prior is None:  # folders saved before it was recorded: stage and counts give it
        model.config.source_prior = model_source_prior(model.config).tolist()
    prediction = float32_prediction(trainer, validation, metric_key_prefix="validation")
    logits, labels = np.asarray(prediction.predictions, dtype=np.float64), np.asarray(prediction.label_ids)
    before = calibration_metrics(logits, labels)
    try:
        temperature, logit_bias, fitted = fit_calibration(calibration_args, logits, labels, model.config, target_prior)
    except ValueError as err:
        raise ValueError(
            f"{method} of {model_path} cannot be fit on {fit_on}: {err}: train with a larger "
            "--validation_split_percentage (e.g. 10) for more held-out images, train longer, or fit on a separate "
            "validation split of the data (--validation_split_name NAME)."
        ) from err
    calibrated_logits = apply_calibration(logits, temperature, logit_bias)
    after = calibration_metrics(calibrated_logits, labels)
    if logit_bias is not None and np.all(np.abs(logit_bias) < 1e-12):  # e.g. uniform -> uniform: no correction
        logit_bias = None
    model.config.temperature = temperature
    model.config.logit_bias = None if logit_bias is None else logit_bias.tolist()
    model.config.calibration = {
        "method": method,
        "fit_on": fit_on,
        "held_out_images": len(labels),
        "uncalibrated_model": model_path,
        "held_out_nll_before": before["nll"],
        "held_out_nll_after": after["nll"],
        "held_out_ece_before": before["ece"],
        "held_out_ece_after": after["ece"],
        **fitted,
    }
    text = (
        f"fitted {method} on {fit_on}: {calibration_text(temperature, fitted.get('tau'))}; held-out NLL "
        f"{before['nll']:.4f} -> {after['nll']:.4f}, ECE {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}%"
    )
    if prior_aware:
        nll_before = target_nll(logits, labels, target_prior)
        nll_after = target_nll(calibrated_logits, labels, target_prior)
        model.config.calibration |= {
            "target_prior": target_prior.tolist(),
            "target_prior_name": target_name,
            "held_out_target_nll_before": nll_before,
            "held_out_target_nll_after": nll_after,
        }
        text += f"; for the {target_name} target prior, held-out NLL {nll_before:.4f} -> {nll_after:.4f}"
    logger.info(text)
    os.makedirs(args.output_dir, exist_ok=True)
    metrics = report(trainer, test, args.output_dir, benchmark, None,
                     model_id=args.hub_model_id or Path(args.output_dir).resolve().name)
    if trainer.is_world_process_zero():
        save_model_folder(model, benchmark, args.output_dir)
    push_folder(args, args.output_dir, f"{method} fit on {fit_on}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """`mislas-calibrate` / `recipes/calibrate.py`: `MODEL --method METHOD [--target_prior PRIOR] --output_dir DIR`
    (the data options the model was trained with unless given)."""
    calibration_args, data_args, training_args = parse_saved_model_arguments(CalibrationArguments, argv)
    return calibrate(calibration_args, data_args, training_args)


def cli() -> None:
    """The `mislas-calibrate` command: `main` on the command line, exiting 0 when it succeeds (not with the metrics)."""
    main()
