"""The training job behind `recipes/train.py`: stage 1, stage 2 or both in sequence (`train`), each stage trained
by `MislasTrainer`, resumed when asked (`checkpoint_to_resume`, `finished_state`), saved and reported on the test set
(`run_stage`).

Output layout of a run: `OUTPUT_DIR/stage1/` and `OUTPUT_DIR/stage2/`, each a `save_pretrained` folder with the
image processor, `eval_results.json`, `reliability_diagram.png` and a `README.md` model card, plus
`OUTPUT_DIR/all_results.json`; with `--cached_feature_views`, `OUTPUT_DIR/feature_cache/` or `--feature_cache_dir`
(`mislas_hf.feature_cache`).
"""

import dataclasses
import json
import logging
import os
from pathlib import Path

from transformers import TrainerState, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..feature_cache import FEATURE_CACHE_DIRNAME, cached_feature_training_set
from ..trainer import MislasTrainer, load_saved_weights
from ..training_args import MislasTrainingArguments
from .arguments import DataArguments, ModelArguments, parse_arguments
from .data_setup import held_out_split_record, load_splits, train_batch_augmentation
from .launch import compute_setup, cpu_thread_adapter, setup_logging, use_cpu_cores
from .model_setup import build_model, load_stage1_model, plan_model
from .report import push_folder, report
from .saved_model_arguments import training_data_record

logger = logging.getLogger(__name__)


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


def finished_state(checkpoint: str) -> TrainerState | None:
    """The `TrainerState` of `checkpoint` if its stage had trained all its steps (a stage that finished before the
    run was interrupted), else None."""
    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    return state if 0 < state.max_steps <= state.global_step else None


def run_stage(
    stage: int, model, args, train, validation, test, image_processor, benchmark, config_yaml, batch_augmentation=None
) -> dict:
    """Train one stage (resuming when asked; with `cached_feature_views`, from the backbone's cached features), save
    it and report on the test set. A resumed stage that had finished trains nothing: its last checkpoint's weights
    are loaded (`load_saved_weights`), saved and evaluated again. Selection of the best epoch, when enabled, uses the
    held-out validation split only. `batch_augmentation`: see `train_batch_augmentation`.
    Logs how the stage computes (`compute_setup`), its global batch and learning rates; on a CPU whose thread count
    the user did not choose, the count follows the cores other processes leave free (`cpu_thread_adapter`)."""
    stage_args = stage_arguments(args, stage)
    if stage_args.load_best_model_at_end and validation is None:
        raise ValueError(
            "load_best_model_at_end needs --validation_split_percentage: the best epoch is never chosen on the test set."
        )
    if stage_args.process_index == 0:
        global_batch = stage_args.per_device_train_batch_size * stage_args.world_size
        learning_rates = f"learning rate {stage_args.learning_rate:g}"
        if stage == 2:
            learning_rates += f" (ΔW and b: {stage_args.learning_rate * stage_args.delta_lr_ratio:g})"
        logger.info(
            f"stage {stage} on {compute_setup(stage_args)}, "
            f"global batch {global_batch * stage_args.gradient_accumulation_steps} = "
            f"{stage_args.per_device_train_batch_size} per device x {stage_args.world_size} processes x "
            f"{stage_args.gradient_accumulation_steps} accumulation steps, {learning_rates}"
        )
    trainer = MislasTrainer(
        model=model,
        args=stage_args,
        train_dataset=train,
        eval_dataset=validation if validation is not None else test,
        processing_class=image_processor,
        batch_augmentation=batch_augmentation,
    )
    thread_adapter = cpu_thread_adapter(stage_args)
    if thread_adapter is not None:
        trainer.add_callback(thread_adapter)
    checkpoint = checkpoint_to_resume(stage_args)
    finished = finished_state(checkpoint) if checkpoint is not None else None
    if finished is not None:
        # The Trainer, resumed at its last step in the middle of an epoch, would train one step more.
        load_saved_weights(model, checkpoint)
        trainer.state = finished
    else:
        if stage_args.cached_feature_views is not None:  # the head trains from cached backbone features
            trainer.train_dataset = cached_feature_training_set(
                trainer, test, benchmark.preprocessing,
                args.feature_cache_dir or os.path.join(args.output_dir, FEATURE_CACHE_DIRNAME),
            )
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_metrics("train", result.metrics, combined=False)
    trainer.save_state()
    trainer.save_model(stage_args.output_dir)  # the model and its image processor (`processing_class`)
    return report(
        trainer, test, stage_args.output_dir, benchmark, config_yaml,
        model_id=args.hub_model_id or Path(args.output_dir).resolve().name,
    )


def train(model_args: ModelArguments, data_args: DataArguments, args: MislasTrainingArguments, config_yaml=None):
    """Run stage 1, stage 2, or both; returns the metrics per stage and writes `all_results.json`."""
    if args.stage == "2" and not model_args.model_name_or_path:
        raise ValueError("--stage 2 needs --model_name_or_path: the stage-1 model (folder or Hub id) to start from.")
    setup_logging(args)
    use_cpu_cores(args)
    set_seed(args.seed)
    plan = plan_model(model_args, args.stage)
    benchmark, counts, train_set, validation, test = load_splits(data_args, args, plan)
    held_out_split = held_out_split_record(data_args, args, benchmark, validation)
    training_data = training_data_record(data_args, args.seed)
    image_processor = benchmark.preprocessing.image_processor()
    stages = args.stage_numbers
    results = {}
    stage2_start = os.path.join(args.output_dir, "stage1") if args.stage == "both" else model_args.model_name_or_path
    if args.stage == "2":
        stage1_model = load_stage1_model(stage2_start, benchmark, counts, data_args)  # fail early on a mismatch
        if held_out_split is not None and stage1_model.config.held_out_split != held_out_split:
            raise ValueError(
                f"--validation_split_percentage {data_args.validation_split_percentage} with --seed {args.seed} holds "
                f"out other images than the stage-1 model {stage2_start} was trained without "
                f"(its config.held_out_split: {stage1_model.config.held_out_split}): the held-out images would not be "
                "unseen. Pass the stage-1 run's --validation_split_percentage, --seed and data options."
            )
    for stage in stages:
        set_seed(args.seed)
        if stage == 1:
            model = build_model(model_args, plan, benchmark, counts, data_args)
            if 2 in stages:
                model.mislas.resolve_shift_bn(args.shift_bn)  # refuse stage 2's --shift_bn before stage 1 trains
        else:
            model = load_stage1_model(stage2_start, benchmark, counts, data_args)
        model.config.held_out_split, model.config.training_data = held_out_split, training_data
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
    push_folder(
        args, os.path.join(args.output_dir, f"stage{stages[-1]}"), f"MiSLAS {benchmark.name}, stage {stages[-1]}"
    )
    return results


def main(argv: list[str] | None = None) -> dict:
    """`mislas-train` / `recipes/train.py`: parse `--config` and the command line, run the stages."""
    model_args, data_args, training_args, config_text = parse_arguments(argv)
    return train(model_args, data_args, training_args, config_yaml=config_text)


def cli() -> None:
    """The `mislas-train` command: `main` on the command line, exiting 0 when it succeeds (not with the metrics)."""
    main()
