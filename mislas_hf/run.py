"""The MiSLAS job behind `recipes/train.py` and `recipes/evaluate.py`: argument dataclasses, YAML + command-line
parsing, the two stages in sequence, and the evaluation report (metrics, reliability diagram, model card).

Output layout of a run: `OUTPUT_DIR/stage1/` and `OUTPUT_DIR/stage2/`, each a `save_pretrained` folder with the
image processor, `eval_results.json`, `reliability_diagram.png` and a `README.md` model card, plus
`OUTPUT_DIR/all_results.json`.
"""

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import HfArgumentParser, Trainer, set_seed
from transformers.utils import logging
from transformers.trainer_utils import get_last_checkpoint

from .calibration import compute_metrics, reliability_diagram
from .configuration_mislas import BACKBONES as BACKBONE_SPECS, MislasConfig
from .data import (
    BENCHMARKS,
    InMemoryCifarTransform,
    augment_cifar_batch,
    class_counts,
    decode_cifar_images,
    load_benchmark,
    make_image_processor,
    stratified_holdout,
    make_transform,
    subset,
)
from .hub import PAPER_RESULTS, push_model_folder, write_model_card
from .modeling_mislas import MislasForImageClassification
from .trainer import MislasTrainer, MislasTrainingArguments

DIAGRAM_FILENAME = "reliability_diagram.png"
logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model to build or start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Stage-1 model (folder or Hub id) to start stage 2 from; for stage 1, weights to start from."},
    )
    backbone: str = field(default="resnet32", metadata={"help": "Backbone of a new model.", "choices": list(BACKBONE_SPECS)})
    extra_block: bool = field(default=False, metadata={"help": "Extra bottleneck block before pooling (Places-LT)."})
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Keep the pretrained backbone frozen in stage 1 too (Places-LT)."}
    )


@dataclass
class DataArguments:
    """Which long-tailed benchmark to train and evaluate on."""

    dataset: str = field(
        default="cifar10-lt",
        metadata={"help": "Benchmark: cifar10-lt, cifar100-lt, imagenet-lt, places-lt or inat2018."},
    )
    imbalance_factor: float | None = field(default=100, metadata={"help": "N_max / N_min for CIFAR-LT (10, 50, 100)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of parquet files (default: the benchmark's Hub id)."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Image root of a list-file benchmark."})
    train_list: str | None = field(default=None, metadata={"help": "Official training split list (list-file sets)."})
    test_list: str | None = field(default=None, metadata={"help": "Official test split list (list-file sets)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Deterministic subset of the long-tailed training set, for quick runs."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Deterministic subset of the test set."})
    validation_split_percentage: float | None = field(
        default=None,
        metadata={"help": "Hold out this % of the training set to select the best epoch on (never the test set)."},
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the long-tailed cut (0 = the published splits)."})
    in_memory_images: bool | None = field(
        default=None,
        metadata={
            "help": "Decode the images once into memory and crop/flip/normalise whole training batches on the "
            "training device (same augmentation as the per-sample transform). Default: on for CIFAR, off otherwise "
            "(only 32x32 CIFAR images are supported)."
        },
    )

    def __post_init__(self):
        spec = BENCHMARKS.get(self.dataset.lower())
        if self.in_memory_images and spec is not None and spec.family != "cifar":
            raise ValueError(
                f"in_memory_images is for the 32x32 CIFAR benchmarks; {self.dataset} uses the per-sample "
                "'imagenet' transforms: leave in_memory_images unset."
            )

    def uses_in_memory_images(self, family: str) -> bool:
        """Whether the splits are decoded once (`in_memory_images`, by default on for the cifar family)."""
        return family == "cifar" if self.in_memory_images is None else self.in_memory_images


def parse_arguments(argv: list[str] | None = None, extra_dataclasses: tuple = ()):
    """Parse `--config file.yaml` plus command-line overrides (the command line wins); unknown YAML keys are
    refused with their names. Returns the argument dataclasses and the configuration text (the YAML file and the
    overrides) that model cards record."""
    parser = HfArgumentParser((*extra_dataclasses, ModelArguments, DataArguments, MislasTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    config_text = ""
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise ValueError("--config needs a YAML file path.")
        config_path = Path(argv[position + 1])
        del argv[position : position + 2]
        if not config_path.is_file():
            raise FileNotFoundError(f"--config {config_path}: no such file. Configs live in recipes/configs/.")
        config_text = config_path.read_text()
        values = yaml.safe_load(config_text) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{config_path}: unknown config key(s) {', '.join(unknown)}. Run recipes/train.py --help for the "
                "accepted options."
            )
        parser.set_defaults(**values)
    if argv:
        config_text += f"# command-line overrides: {' '.join(argv)}\n"
    return (*parser.parse_args_into_dataclasses(args=argv), config_text)


def stage_arguments(args: MislasTrainingArguments, stage: int) -> MislasTrainingArguments:
    """The arguments of one stage: its epochs and folder; stage 2 always uses a cosine schedule without warm-up
    (Table 6). Pushing happens once at the end of the run, not from the per-stage Trainer."""
    output_dir = os.path.join(args.output_dir, f"stage{stage}")
    if stage == 1:
        return dataclasses.replace(
            args, stage="1", num_train_epochs=args.stage1_epochs, output_dir=output_dir, push_to_hub=False
        )
    return dataclasses.replace(
        args,
        stage="2",
        num_train_epochs=args.stage2_epochs,
        output_dir=output_dir,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        lr_decay_epochs=None,
        push_to_hub=False,
    )


def load_splits(data_args: DataArguments, training_args: MislasTrainingArguments):
    """The benchmark with transforms set, plus the held-out validation split when asked for. With in-memory images
    (`DataArguments.uses_in_memory_images`) the splits are decoded once; the training split then yields raw uint8
    images, which the trainer augments on its device (`train_batch_augmentation`)."""
    benchmark = load_benchmark(
        data_args.dataset,
        imbalance_factor=data_args.imbalance_factor,
        dataset_name=data_args.dataset_name,
        data_dir=data_args.data_dir,
        train_list=data_args.train_list,
        test_list=data_args.test_list,
        seed=data_args.split_seed,
    )
    train, test = benchmark.splits["train"], benchmark.splits["test"]
    validation = None
    if data_args.validation_split_percentage:
        train, validation, kept_whole = stratified_holdout(
            train, data_args.validation_split_percentage / 100, seed=training_args.seed
        )
        if kept_whole:
            logger.warning(
                f"classes {kept_whole} are too small to give images to the validation split "
                f"({data_args.validation_split_percentage}% rounds to 0 or would leave none for training): "
                "they stay whole in the training set"
            )
    if data_args.max_train_samples is not None:
        train = subset(train, data_args.max_train_samples, seed=training_args.seed)
    if data_args.max_eval_samples is not None:
        test = subset(test, data_args.max_eval_samples, seed=training_args.seed)
    counts = class_counts(train, num_classes=len(benchmark.class_names))
    if data_args.uses_in_memory_images(benchmark.family):
        with training_args.main_process_first(desc="decoding images"):
            train, test = decode_cifar_images(train), decode_cifar_images(test)
            validation = decode_cifar_images(validation) if validation is not None else None
        train_transform, eval_transform = InMemoryCifarTransform(train=True), InMemoryCifarTransform(train=False)
    else:
        normalization = dict(mean=benchmark.mean, std=benchmark.std)
        train_transform = make_transform(benchmark.family, train=True, **normalization)
        eval_transform = make_transform(benchmark.family, train=False, **normalization)
    train.set_transform(train_transform)
    test.set_transform(eval_transform)
    if validation is not None:
        validation.set_transform(eval_transform)
    return benchmark, counts, train, validation, test


def train_batch_augmentation(data_args: DataArguments, benchmark):
    """`MislasTrainer`'s `batch_augmentation` for the training split of `load_splits`: `augment_cifar_batch` with
    in-memory images, else None (the per-sample transform already augmented the images)."""
    return augment_cifar_batch if data_args.uses_in_memory_images(benchmark.family) else None


def build_model(model_args: ModelArguments, benchmark, counts: list[int]) -> MislasForImageClassification:
    """A new stage-1 model for the benchmark (or one started from `model_name_or_path`)."""
    labels = dict(enumerate(benchmark.class_names))
    config_kwargs = dict(
        num_labels=len(labels),
        id2label=labels,
        class_counts=counts,
        class_group_boundaries=benchmark.class_group_boundaries,
    )
    if model_args.model_name_or_path:
        return MislasForImageClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=True, **config_kwargs
        )
    config = MislasConfig(
        backbone=model_args.backbone,
        extra_block=model_args.extra_block,
        freeze_backbone=model_args.freeze_backbone,
        **config_kwargs,
    )
    return MislasForImageClassification(config)


def load_stage1_model(path: str, benchmark, counts: list[int]) -> MislasForImageClassification:
    """The stage-1 model stage 2 starts from, checked against the benchmark before any compute is spent."""
    model = MislasForImageClassification.from_pretrained(path)
    if model.config.num_labels != len(benchmark.class_names):
        raise ValueError(
            f"The stage-1 model {path} has {model.config.num_labels} classes but {benchmark.name} has "
            f"{len(benchmark.class_names)}: pass a stage-1 model trained on this benchmark (--model_name_or_path)."
        )
    model.config.class_counts = counts
    model.config.class_group_boundaries = benchmark.class_group_boundaries
    return model


def report(trainer: Trainer, test_dataset, output_dir: str, benchmark, config_yaml: str | None, model_id: str) -> dict:
    """Evaluate on the test set and write `eval_results.json`, the reliability diagram and the model card
    (`model_id`: the Hub repo id its loading snippets use).

    The numbers are those of the float32 model, as `from_pretrained` and the pipeline give it to users, whatever
    precision trained it: Accelerate's autocast wrapper is taken off the trained model first (training is over)."""
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    prediction = trainer.predict(test_dataset, metric_key_prefix="eval")
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
        write_model_card(
            output_dir,
            model_config=model.config,
            metrics=metrics,
            dataset_id=BENCHMARKS[benchmark.name].hub_id or benchmark.name,
            dataset_name=benchmark.name
            + (f" (imbalance factor {benchmark.imbalance_factor:g})" if benchmark.imbalance_factor else ""),
            model_id=model_id,
            training_config_yaml=config_yaml,
            diagram_filename=DIAGRAM_FILENAME,
            paper_metrics=PAPER_RESULTS.get((benchmark.name, benchmark.imbalance_factor)),
            provenance=f"Measured by mislas_hf on the {benchmark.name} test split ({len(correct)} images).",
        )
    trainer.accelerator.wait_for_everyone()
    return metrics


def save_stage(trainer: Trainer, image_processor, output_dir: str) -> None:
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        image_processor.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def checkpoint_to_resume(stage_args: MislasTrainingArguments) -> str | None:
    """`--resume_from_checkpoint PATH` resumes the stage whose folder holds PATH; for the other stages, and with
    `--resume_from_checkpoint true`, each stage resumes from the last checkpoint in its folder if there is one (a
    stage that had finished then only re-saves and re-evaluates)."""
    requested = stage_args.resume_from_checkpoint
    if requested is None:
        return None
    stage_dir = Path(stage_args.output_dir).resolve()
    if str(requested).lower() not in ("true", "last") and stage_dir in Path(requested).resolve().parents:
        return str(requested)
    return get_last_checkpoint(str(stage_dir)) if stage_dir.is_dir() else None


def run_stage(
    stage: int, model, args, train, validation, test, image_processor, benchmark, config_yaml, batch_augmentation=None
) -> dict:
    """Train one stage (resuming when asked), save it and report on the test set. Selection of the best epoch,
    when enabled, uses the held-out validation split only. `batch_augmentation`: see `train_batch_augmentation`."""
    stage_args = stage_arguments(args, stage)
    if stage_args.load_best_model_at_end and validation is None:
        raise ValueError(
            "load_best_model_at_end needs --validation_split_percentage: the best epoch is never chosen on the test set."
        )
    trainer = MislasTrainer(
        model=model,
        args=stage_args,
        train_dataset=train,
        eval_dataset=validation if validation is not None else test,
        processing_class=image_processor,
        batch_augmentation=batch_augmentation,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(stage_args))
    trainer.save_metrics("train", result.metrics, combined=False)
    trainer.save_state()
    save_stage(trainer, image_processor, stage_args.output_dir)
    return report(
        trainer, test, stage_args.output_dir, benchmark, config_yaml,
        model_id=args.hub_model_id or Path(args.output_dir).resolve().name,
    )


def train(model_args: ModelArguments, data_args: DataArguments, args: MislasTrainingArguments, config_yaml=None):
    """Run stage 1, stage 2, or both; returns the metrics per stage and writes `all_results.json`."""
    if args.stage == "2" and not model_args.model_name_or_path:
        raise ValueError("--stage 2 needs --model_name_or_path: the stage-1 model (folder or Hub id) to start from.")
    set_seed(args.seed)
    benchmark, counts, train_set, validation, test = load_splits(data_args, args)
    image_processor = make_image_processor(benchmark.family, mean=benchmark.mean, std=benchmark.std)
    stages = [1, 2] if args.stage == "both" else [int(args.stage)]
    results = {}
    stage2_start = os.path.join(args.output_dir, "stage1") if args.stage == "both" else model_args.model_name_or_path
    if args.stage == "2":
        load_stage1_model(stage2_start, benchmark, counts)  # fail early on a mismatched checkpoint
    for stage in stages:
        set_seed(args.seed)
        if stage == 1:
            model = build_model(model_args, benchmark, counts)
        else:
            model = load_stage1_model(stage2_start, benchmark, counts)
        results[f"stage{stage}"] = run_stage(
            stage,
            model,
            args,
            train_set,
            validation,
            test,
            image_processor,
            benchmark,
            config_yaml,
            batch_augmentation=train_batch_augmentation(data_args, benchmark),
        )
    if args.process_index == 0:
        Path(args.output_dir, "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
        if args.push_to_hub:
            final_dir = os.path.join(args.output_dir, f"stage{stages[-1]}")
            push_model_folder(
                final_dir,
                repo_id=args.hub_model_id or Path(args.output_dir).name,
                commit_message=f"MiSLAS {benchmark.name}, stage {stages[-1]}",
                private=args.hub_private_repo,
                token=args.hub_token,
            )
    return results


def evaluate(model_path: str, data_args: DataArguments, args: MislasTrainingArguments):
    """Evaluate a saved model (folder or Hub id) on the benchmark's test split: metrics, diagram, card."""
    benchmark, counts, _, _, test = load_splits(data_args, args)
    model = MislasForImageClassification.from_pretrained(model_path)
    if model.config.num_labels != len(benchmark.class_names):
        raise ValueError(
            f"{model_path} has {model.config.num_labels} classes but {benchmark.name} has "
            f"{len(benchmark.class_names)}: evaluate it on the benchmark it was trained on (--dataset)."
        )
    if model.config.class_counts is None:
        model.config.class_counts = counts
    if model.config.class_group_boundaries is None:
        model.config.class_group_boundaries = benchmark.class_group_boundaries
    eval_args = dataclasses.replace(args, push_to_hub=False, bf16=False, fp16=False)  # float32, as report() says
    trainer = Trainer(
        model=model,
        args=eval_args,
        compute_metrics=compute_metrics(model.config.class_counts, model.config.class_group_boundaries),
    )
    metrics = report(trainer, test, args.output_dir, benchmark, None, model_id=args.hub_model_id or model_path)
    if args.push_to_hub and args.process_index == 0:
        model.save_pretrained(args.output_dir)
        make_image_processor(benchmark.family, mean=benchmark.mean, std=benchmark.std).save_pretrained(args.output_dir)
        push_model_folder(
            args.output_dir,
            repo_id=args.hub_model_id,
            commit_message=f"Evaluation on {benchmark.name}",
            private=args.hub_private_repo,
            token=args.hub_token,
        )
    return metrics
