"""Train MiSLAS (stage 1, stage 2, or both) on a long-tailed benchmark or your own data, evaluate, write model cards.

    accelerate launch recipes/train.py --config recipes/configs/cifar10_lt_if100.yaml [--output_dir DIR] [...]

Every option of the config can be overridden on the command line; see `--help`. Installed, the same job is
`mislas-train`.
"""

from mislas_hf.scripts.train import main

if __name__ == "__main__":
    main()
