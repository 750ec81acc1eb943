"""Post-hoc calibration of a saved MiSLAS model, fit on held-out images only, never on the test split.

    python recipes/calibrate.py MODEL_DIR_OR_HUB_ID --method METHOD [--target_prior uniform|train|FILE] \
        [--post_hoc_tau TAU] --output_dir DIR [--dataset cifar10-lt --dataset_name /path/to/cifar10 ...]

METHOD:
  temperature                   one T (Guo et al. 2017), fit on the hold-out as it is
  classwise_temperature         one T per class, regularised towards the scalar T
  balanced_temperature          one T fit on the hold-out weighted to the class prior the model was trained for
                                (pi_source(y) / pi_holdout(y)), then the prior correction log pi_target - log pi_source
  logit_adjustment              z - tau log pi_train (Menon et al. 2021), tau fit on the hold-out weighted to a
                                balanced prior, or --post_hoc_tau; T = 1
  logit_adjustment_temperature  z / T - tau log pi_train, T and tau fit jointly

`--target_prior` (the last three methods) is the class prior the calibrated model will meet: uniform (default, a
balanced test set), train (the training prior) or a JSON file with a list of one positive number per class, in label
order (a prior or counts). The temperature and the per-class logit bias are stored in the model's config
(`temperature`, `logit_bias`, with `source_prior`), so `from_pretrained`, `pipeline` and `trust_remote_code` apply them;
`config.calibration` and the card say what was fit on what.

By default the fit uses the `--validation_split_percentage` hold-out recorded in the model's config when it was
trained (the same images, rebuilt from the same data options; refused when they differ), or
`--validation_split_name NAME`, a separate validation split of the data. The calibrated model (weights, config, image
processor), its test-split `eval_results.json`, reliability diagram and card go to `--output_dir`.

Installed, the same job is `mislas-calibrate`.
"""

from mislas_hf.scripts.calibrate import main

if __name__ == "__main__":
    main()
