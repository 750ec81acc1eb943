"""What a job writes about a model: the test-set evaluation with the reliability diagram and the model card
(`report`, stating the length of training, `training_length`, and the paper's numbers where they apply,
`paper_metrics_for`), the float32 evaluation of a saved model
(`float32_evaluation_trainer`, `float32_prediction`), the model folder of `evaluate` and `calibrate`
(`save_model_folder`), and the upload of a finished folder (`push_folder`)."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_utils import PredictionOutput

from ..calibration import compute_metrics, reliability_diagram
from ..data import BENCHMARKS, LongTailedBenchmark
from ..hub_upload import push_model_folder
from ..modelcard import write_model_card
from ..modelcard_sections import TrainingLength
from ..trainer import DeviceBatchTrainer
from ..training_args import MislasTrainingArguments

DIAGRAM_FILENAME = "reliability_diagram.png"


def float32_prediction(trainer: Trainer, dataset, metric_key_prefix: str = "eval") -> PredictionOutput:
    """`trainer.predict(dataset)` of the float32 model, as `from_pretrained` and the pipeline give it to users,
    whatever precision trained it: Accelerate's autocast wrapper is taken off the model first (training is over), also
    from a model this Trainer did not train, which `predict` would otherwise wrap in autocast."""
    accelerator = trainer.accelerator
    if not accelerator._models:  # not trained here (a finished stage, resumed): prepare it as `predict` would, once
        accelerator.prepare_model(trainer.model, evaluation_mode=True)
    accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return trainer.predict(dataset, metric_key_prefix=metric_key_prefix)


def report(
    trainer: Trainer,
    test_dataset,
    output_dir: str,
    benchmark: LongTailedBenchmark,
    config_yaml: str | None,
    model_id: str,
    prediction: PredictionOutput | None = None,
) -> dict:
    """Evaluate on the test set and write `eval_results.json`, the reliability diagram and the model card
    (`model_id`: the Hub repo id its loading snippets use). The card states the steps and epochs `trainer` trained
    (`training_length`), or that this job did not train the model.

    The numbers are those of the float32 model (`float32_prediction`); a job that needs the test logits too passes
    the `prediction` it made of `test_dataset` that way, so the test set is run through the model once."""
    if prediction is None:
        prediction = float32_prediction(trainer, test_dataset)
    metrics = prediction.metrics
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics, combined=False)
    if trainer.is_world_process_zero():
        logits = torch.as_tensor(np.asarray(prediction.predictions)).double()
        probabilities = logits.softmax(-1)
        confidences, predicted = probabilities.max(-1)
        correct = predicted.numpy() == np.asarray(prediction.label_ids)
        model = trainer.model
        title = f"{benchmark.name}, stage {model.config.stage}"
        reliability_diagram(confidences.numpy(), correct, os.path.join(output_dir, DIAGRAM_FILENAME), title=title)
        trained = training_length(trainer)
        provenance = (
            f"Measured by mislas_hf on the {benchmark.evaluation_split} split of {benchmark.name} ({len(correct)} "
            "images)."
        )
        if trained is None:
            provenance += (
                " This job did not train the weights (it evaluated or calibrated a saved model): the card of the run "
                "that trained them says for how long."
            )
        write_model_card(
            output_dir,
            model_config=model.config,
            metrics=metrics,
            dataset_id=benchmark.dataset_id or benchmark.name,
            dataset_name=benchmark.name
            + (f" (imbalance factor {benchmark.imbalance_factor:g})" if benchmark.imbalance_factor else ""),
            model_id=model_id,
            training_config_yaml=config_yaml,
            diagram_filename=DIAGRAM_FILENAME,
            paper_metrics=paper_metrics_for(benchmark, model.config),
            preprocessing=benchmark.preprocessing.description(),
            provenance=provenance,
            training=trained,
        )
    trainer.accelerator.wait_for_everyone()
    return metrics


def paper_metrics_for(benchmark: LongTailedBenchmark, model_config) -> dict | None:
    """The paper's MiSLAS numbers for `benchmark` (`BENCHMARKS[...].paper_results`) when `model_config` is the model
    they were reported for: the benchmark's paper backbone (its first reference backbone), stage 2, the MiSLAS head.
    None for anything else (stage 1, cRT or LWS, another backbone, your own data), whose card then shows no paper
    table beside its own numbers."""
    spec = BENCHMARKS.get(benchmark.name)
    if spec is None or model_config.stage != 2 or model_config.head_mode != "mislas":
        return None
    if model_config.backbone_config is not None or model_config.backbone != spec.reference_backbones[0]:
        return None
    return spec.paper_results.get(benchmark.imbalance_factor)


def training_length(trainer: Trainer) -> TrainingLength | None:
    """How long `trainer` trained its model (`TrainerState.global_step`, `.epoch`, `.max_steps`, the global batch and
    the run's `num_train_epochs` / `max_steps`), or None when it trained no step (a saved model evaluated or
    calibrated)."""
    state, args = trainer.state, trainer.args
    if state.global_step == 0:
        return None
    return TrainingLength(
        steps=state.global_step,
        epochs=state.epoch,
        planned_steps=state.max_steps,
        images_per_step=state.train_batch_size * args.world_size * args.gradient_accumulation_steps,
        configured_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
    )


def float32_evaluation_trainer(
    model, args: MislasTrainingArguments, benchmark: LongTailedBenchmark, counts: list[int], batch_augmentation=None
) -> DeviceBatchTrainer:
    """A plain `Trainer` (a `DeviceBatchTrainer`: uint8 batches go through `batch_augmentation`, see
    `train_batch_augmentation`) that evaluates a saved model in float32 (as `report` says) with the package's
    metrics; the model's config gets the benchmark's class counts and Many/Medium/Few boundaries where it has none."""
    if model.config.class_counts is None:
        model.config.class_counts = counts
    if model.config.class_group_boundaries is None:
        model.config.class_group_boundaries = benchmark.class_group_boundaries
    return DeviceBatchTrainer(
        model=model,
        args=dataclasses.replace(args, push_to_hub=False, bf16=False, fp16=False),
        batch_augmentation=batch_augmentation,
        compute_metrics=compute_metrics(
            model.config.class_counts,
            model.config.class_group_boundaries,
            many_threshold=model.config.many_shot_threshold,
            few_threshold=model.config.few_shot_threshold,
        ),
    )


def save_model_folder(model, benchmark: LongTailedBenchmark, folder: str) -> None:
    """Save `model` with the image processor of the benchmark's preprocessing into `folder` (main process only)."""
    model.save_pretrained(folder)
    benchmark.preprocessing.image_processor().save_pretrained(folder)


def push_folder(args: MislasTrainingArguments, folder: str, commit_message: str) -> None:
    """With `--push_to_hub`, upload the finished `folder` from the main process to `--hub_model_id` (default: the
    name of `--output_dir`)."""
    if args.push_to_hub and args.process_index == 0:
        push_model_folder(
            folder,
            repo_id=args.hub_model_id or Path(args.output_dir).resolve().name,
            commit_message=commit_message,
            private=args.hub_private_repo,
            token=args.hub_token,
        )
