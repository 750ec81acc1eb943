"""Evaluate a saved MiSLAS model (folder or Hub id) on a benchmark's test split: top-1, Many/Medium/Few, ECE, MCE,
NLL, the reliability diagram and a model card in --output_dir (optionally pushed with --push_to_hub).

    python recipes/evaluate.py MODEL_DIR_OR_HUB_ID --dataset cifar10-lt --imbalance_factor 100 --output_dir DIR
"""

import sys
from dataclasses import dataclass, field

from mislas_hf.run import evaluate, parse_arguments


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "Saved model folder or Hub id (also accepted as the first argument)."})


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--model", *argv]
    evaluation_args, _, data_args, training_args, _ = parse_arguments(argv, extra_dataclasses=(EvaluationArguments,))
    return evaluate(evaluation_args.model, data_args, training_args)


if __name__ == "__main__":
    main()
