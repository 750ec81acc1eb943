"""Post-hoc temperature scaling of a saved MiSLAS model, fit on held-out images only, never on the test split.

    python recipes/calibrate.py MODEL_DIR_OR_HUB_ID --method temperature|classwise_temperature --output_dir DIR \
        [--dataset cifar10-lt --imbalance_factor 100 --dataset_name /path/to/cifar10 ...]

By default the temperature is fit on the `--validation_split_percentage` hold-out recorded in the model's config
when it was trained (the same images, rebuilt from the same data options; refused when they differ), or on
`--validation_split_name NAME`, a separate validation split of the data. The calibrated model (weights, config
with the temperature, image processor), its test-split `eval_results.json`, reliability diagram and card go to
`--output_dir`.

Installed, the same job is `mislas-calibrate`.
"""

from mislas_hf.scripts.calibrate import main

if __name__ == "__main__":
    main()
