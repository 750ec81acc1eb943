"""The evaluation job behind `recipes/evaluate_model.py`: a saved model (folder or Hub id) on the test split of the data it
was trained on: top-1, Many/Medium/Few, the ECE family, NLL, the reliability diagram and a model card."""

from ..training_args import MislasTrainingArguments
from .arguments import DataArguments, EvaluationArguments, ModelArguments, parse_saved_model_arguments
from .data_setup import load_splits, train_batch_augmentation
from .launch import setup_logging, use_cpu_cores
from .model_setup import load_saved_model, plan_model
from .report import float32_evaluation_trainer, push_folder, report, save_model_folder


def evaluate(model_path: str, data_args: DataArguments, args: MislasTrainingArguments):
    """Evaluate a saved model (folder or Hub id) on the benchmark's test split: metrics, diagram, card."""
    setup_logging(args)
    use_cpu_cores(args)
    plan = plan_model(ModelArguments(model_name_or_path=model_path), stage="2")
    benchmark, counts, _, _, test = load_splits(data_args, args, plan)
    model = load_saved_model(model_path, benchmark, "evaluate it on the benchmark it was trained on (--dataset).")
    trainer = float32_evaluation_trainer(model, args, benchmark, counts, train_batch_augmentation(data_args, benchmark))
    metrics = report(trainer, test, args.output_dir, benchmark, None, model_id=args.hub_model_id or model_path)
    if args.push_to_hub and args.process_index == 0:
        save_model_folder(model, benchmark, args.output_dir)
        push_folder(args, args.output_dir, f"Evaluation on {benchmark.name}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """`mislas-evaluate` / `recipes/evaluate_model.py`: `MODEL [--dataset ...] --output_dir DIR`."""
    evaluation_args, data_args, training_args = parse_saved_model_arguments(EvaluationArguments, argv)
    return evaluate(evaluation_args.model, data_args, training_args)


def cli() -> None:
    """The `mislas-evaluate` command: `main` on the command line, exiting 0 when it succeeds (not with the metrics)."""
    main()
