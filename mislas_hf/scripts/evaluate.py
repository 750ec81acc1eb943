"""The evaluation job behind `recipes/evaluate_model.py`: a saved model (folder or Hub id) on the test split of the data it
was trained on: top-1, Many/Medium/Few, the ECE family, NLL, the reliability diagram and a model card. The data options
default to those the model was trained with (`MislasConfig.training_data`, `parse_saved_model_arguments`).

Under label shift (`--test_priors`, `--target_prior estimate`) it also evaluates test subsets whose class prior differs
from the one the model predicts for (the test-agnostic protocol, `mislas_hf.data.shifted_test_subsets`), each subset
an index selection of the one forward pass over the test split, in up to three `PRIOR_MODES`:

* `as_trained`: the model's logits as it returns them (its temperature and logit bias included);
* `known_prior`: plus the Bayes correction ``log pi_subset - log pi_model`` to the subset's true class prior, with
  ``pi_model`` the prior the stored model predicts for (`model_output_prior`);
* `estimated_prior` (`--target_prior estimate`): the subset's prior estimated from its unlabeled images by EM
  (Saerens et al. 2002), from the model's probabilities or, when the model records a hold-out, from those of
  bias-corrected temperature scaling fit on it (BCTS, Alexandari et al. 2020), then corrected to the estimate.

`eval_results.json` then holds, besides the usual metrics, `eval_test_priors`: the model's prior, how EM was set up,
and per subset its record (name, direction, imbalance factor, images per class, seed), the metrics of each mode and
the EM estimate with its iterations and L1 error against the subset's true prior."""

import json
import logging
import os

import numpy as np
import torch

from ..calibration import (
    apply_calibration,
    calibration_metrics,
    class_prior,
    estimate_target_prior,
    fit_bias_corrected_temperature,
    model_source_prior,
    prior_correction,
)
from ..data import dataset_labels, shifted_test_subsets
from ..modeling_mislas import MislasForImageClassification
from ..training_args import MislasTrainingArguments
from .arguments import DataArguments, EvaluationArguments, ModelArguments
from .calibrate import load_held_out_and_test
from .data_setup import load_splits, train_batch_augmentation
from .launch import setup_logging, use_cpu_cores
from .model_setup import check_model_classes, plan_model
from .report import float32_evaluation_trainer, float32_prediction, push_folder, report, save_model_folder
from .saved_model_arguments import parse_saved_model_arguments

logger = logging.getLogger(__name__)

PRIOR_MODES = ("as_trained", "known_prior", "estimated_prior")
TEST_PRIORS_KEY = "eval_test_priors"
WHAT_TO_DO = "evaluate it on the benchmark it was trained on (--dataset)."


def model_output_prior(model_config) -> np.ndarray:
    """The class prior the stored model's probabilities are for: the target prior of a prior-aware calibration
    (`config.calibration["target_prior"]`, uniform by default), else the prior its logits were trained for
    (`model_source_prior`: uniform after stage 2 or Balanced Softmax, the training prior after a stage 1 with
    cross-entropy; a plain temperature does not change it)."""
    calibration = model_config.calibration or {}
    if calibration.get("target_prior") is not None:
        return class_prior(calibration["target_prior"])
    return model_source_prior(model_config)


def label_shift_subsets(
    evaluation_args: EvaluationArguments, test_labels: np.ndarray, model_config, train_counts: list[int],
    max_eval_samples: int | None,
) -> dict:
    """The test subsets to evaluate under label shift, by name: `shifted_test_subsets` at the `--test_priors`
    imbalance factors (the classes ordered by `train_counts`, the model's training images per class), or (only
    `--target_prior estimate`) the whole test split as `test`. `ValueError`, before any compute, when the test split
    is not balanced enough for the protocol or a subset would keep no image of a class (its known prior would be 0)."""
    factors = evaluation_args.test_prior_factors()
    subset_note = f" (the --max_eval_samples {max_eval_samples} subset)" if max_eval_samples else ""
    what = (f"--test_priors {evaluation_args.test_priors}" if factors is not None else "--target_prior estimate") + (
        f" on the {len(test_labels)} test images{subset_note}"
    )
    if factors is None:
        counts = np.bincount(test_labels, minlength=model_config.num_labels)
        subsets = {"test": (np.arange(len(test_labels)), {"name": "test", "class_counts": counts.tolist()})}
    else:
        try:
            subsets = shifted_test_subsets(test_labels, train_counts, factors, evaluation_args.test_prior_seed)
        except ValueError as err:
            raise ValueError(
                f"{what}: {err}. Evaluate the whole balanced test split (no --max_eval_samples, or one above its size)."
            ) from err
    for name, (_, record) in subsets.items():
        empty = [k for k, count in enumerate(record["class_counts"]) if count == 0]
        if empty:
            raise ValueError(
                f"{what}: the {name} subset keeps no image of class {empty[0]} ({model_config.id2label[empty[0]]}), "
                "so its known prior is 0 for it. The protocol keeps int(n_max / IF) images of the rarest class: "
                "evaluate the whole balanced test split (no --max_eval_samples), or pass smaller --test_priors "
                "imbalance factors (e.g. '5,2')."
            )
    return subsets


def prior_estimation(model_path: str, held_out, trainer, model_prior: np.ndarray):
    """How `--target_prior estimate` turns test logits into the probabilities EM starts from: returns
    `(calibrate, source_prior, record)`, `calibrate` mapping the model's logits to those calibrated for
    `source_prior`. With a hold-out (`held_out`: its split), BCTS fit on the model's held-out logits, whose
    probabilities are calibrated for the hold-out's class prior; without one, the model's own, for `model_prior`."""
    if held_out is None:
        return (lambda logits: logits), model_prior, {"calibration": "none", "source_prior": model_prior.tolist()}
    prediction = float32_prediction(trainer, held_out, metric_key_prefix="held_out")
    logits, labels = np.asarray(prediction.predictions, dtype=np.float64), np.asarray(prediction.label_ids)
    try:
        fit = fit_bias_corrected_temperature(logits, labels)
    except ValueError as err:
        raise ValueError(
            f"BCTS of {model_path} cannot be fit on its {len(labels)} held-out images: {err}; or pass "
            "--em_calibration none to run EM on the model's own probabilities."
        ) from err
    source_prior = class_prior(np.bincount(labels, minlength=logits.shape[1]))
    record = {"calibration": "bcts", "temperature": fit.temperature, "logit_bias": fit.logit_bias.tolist(),
              "held_out_images": len(labels), "source_prior": source_prior.tolist()}
    return (lambda z: apply_calibration(z, fit.temperature, fit.logit_bias)), source_prior, record


def shifted_prior_results(logits, labels, subsets, model_config, model_prior, estimation=None) -> dict:
    """Metrics (fractions, `calibration_metrics` with the model's class groups) of each test subset in each prior
    mode (`PRIOR_MODES`; `estimated_prior` only with `estimation`, the `(calibrate, source_prior, record)` of
    `prior_estimation`), with the subset's record and, with `estimation`, the EM estimate: prior, iterations,
    whether it converged, and its L1 error against the subset's true prior."""

    def metrics_of(subset_logits, subset_labels):
        return calibration_metrics(
            subset_logits, subset_labels, model_config.class_counts, model_config.class_group_boundaries,
            many_threshold=model_config.many_shot_threshold, few_threshold=model_config.few_shot_threshold,
        )

    results = {}
    for name, (indices, record) in subsets.items():
        z, y = logits[indices], labels[indices]
        true_prior = class_prior(record["class_counts"])
        result = {
            "subset": record | {"images": len(indices)},
            "as_trained": metrics_of(z, y),
            "known_prior": metrics_of(z + prior_correction(model_prior, true_prior), y),
        }
        if estimation is not None:
            calibrate, source_prior, _ = estimation
            calibrated = calibrate(z)
            probabilities = torch.from_numpy(calibrated).softmax(-1).numpy()
            estimate = estimate_target_prior(probabilities, source_prior)
            result["estimated_prior"] = metrics_of(calibrated + prior_correction(source_prior, estimate.prior), y)
            result["prior_estimate"] = {
                "prior": estimate.prior.tolist(), "iterations": estimate.iterations, "converged": estimate.converged,
                "l1_error": float(np.abs(estimate.prior - true_prior).sum()),
            }
        results[name] = result
        shown = " | ".join(
            f"{mode} top-1 {100 * result[mode]['accuracy']:.2f}% ECE {100 * result[mode]['ece']:.2f}% "
            f"NLL {result[mode]['nll']:.4f}" for mode in PRIOR_MODES if mode in result
        )
        logger.info(f"{name} ({len(indices)} test images): {shown}")
    return results


def evaluate(evaluation_args: EvaluationArguments, data_args: DataArguments, args: MislasTrainingArguments):
    """Evaluate a saved model (folder or Hub id) on the benchmark's test split: metrics, diagram, card; with
    `--test_priors` / `--target_prior estimate`, also on test subsets with shifted class priors (module docstring).
    Returns the test split's metrics."""
    setup_logging(args)
    use_cpu_cores(args)
    model_path = evaluation_args.model
    model = MislasForImageClassification.from_pretrained(model_path)
    estimate = evaluation_args.target_prior == "estimate"
    em_calibration = evaluation_args.em_calibration
    if estimate and em_calibration is None:
        em_calibration = "bcts" if model.config.held_out_split is not None else "none"
    if em_calibration == "bcts" and model.config.held_out_split is None:
        raise ValueError(
            f"--em_calibration bcts fits on the hold-out recorded in the model's config, and {model_path} records none "
            "(it was trained without --validation_split_percentage): pass --em_calibration none."
        )
    if em_calibration == "bcts":  # the recorded hold-out, rebuilt as recipes/calibrate.py does (refusals included)
        benchmark, counts, held_out, test, _ = load_held_out_and_test(model, model_path, data_args, args,
                                                                      what_to_do=WHAT_TO_DO)
    else:
        plan = plan_model(ModelArguments(model_name_or_path=model_path), stage="2")
        benchmark, counts, _, _, test = load_splits(data_args, args, plan)
        check_model_classes(model, model_path, benchmark, WHAT_TO_DO)
        held_out = None
    subsets = None
    if evaluation_args.test_priors is not None or estimate:  # checked before anything is written
        test_labels = np.asarray(dataset_labels(test), dtype=np.int64)
        train_counts = model.config.class_counts if model.config.class_counts is not None else counts
        subsets = label_shift_subsets(evaluation_args, test_labels, model.config, train_counts,
                                      data_args.max_eval_samples)
    trainer = float32_evaluation_trainer(model, args, benchmark, counts, train_batch_augmentation(data_args, benchmark))
    prediction = float32_prediction(trainer, test)
    metrics = report(trainer, test, args.output_dir, benchmark, None, model_id=args.hub_model_id or model_path,
                     prediction=prediction)
    if subsets is not None:
        model_prior = model_output_prior(model.config)
        estimation = prior_estimation(model_path, held_out, trainer, model_prior) if estimate else None
        logits = np.asarray(prediction.predictions, dtype=np.float64)
        results = {
            "model_prior": model_prior.tolist(),
            "prior_estimation": None if estimation is None else estimation[2],
            "subsets": shifted_prior_results(logits, np.asarray(prediction.label_ids), subsets, model.config,
                                             model_prior, estimation),
        }
        if trainer.is_world_process_zero():
            path = os.path.join(args.output_dir, "eval_results.json")
            with open(path) as handle:
                saved = json.load(handle)
            with open(path, "w") as handle:
                json.dump(saved | {TEST_PRIORS_KEY: results}, handle, indent=4)  # the subsets in their order
    if args.push_to_hub and args.process_index == 0:
        save_model_folder(model, benchmark, args.output_dir)
        push_folder(args, args.output_dir, f"Evaluation on {benchmark.name}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """`mislas-evaluate` / `recipes/evaluate_model.py`: `MODEL --output_dir DIR [--test_priors protocol]
    [--target_prior estimate] [data options, default the training run's]`."""
    evaluation_args, data_args, training_args = parse_saved_model_arguments(EvaluationArguments, argv)
    return evaluate(evaluation_args, data_args, training_args)


def cli() -> None:
    """The `mislas-evaluate` command: `main` on the command line, exiting 0 when it succeeds (not with the metrics)."""
    main()
