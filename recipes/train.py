"""Train MiSLAS (stage 1, stage 2, or both) on a long-tailed benchmark, evaluate, and write model cards.

    accelerate launch recipes/train.py --config recipes/configs/cifar10_lt_if100.yaml [--output_dir DIR] [...]

Every option of the config can be overridden on the command line; see `--help`.
"""

from mislas_hf.run import parse_arguments, train


def main():
    model_args, data_args, training_args, config_text = parse_arguments()
    train(model_args, data_args, training_args, config_yaml=config_text)


if __name__ == "__main__":
    main()
