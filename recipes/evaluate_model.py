"""Evaluate a saved MiSLAS model (folder or Hub id) on a benchmark's test split: top-1, Many/Medium/Few, ECE, MCE,
NLL, the reliability diagram and a model card in --output_dir (optionally pushed with --push_to_hub).

    python recipes/evaluate_model.py MODEL_DIR_OR_HUB_ID --output_dir DIR [data options, default the training run's]

Under label shift:

    python recipes/evaluate_model.py MODEL --output_dir DIR --test_priors protocol [--target_prior estimate]

also evaluates the 11 test subsets of the test-agnostic protocol (forward long-tailed at imbalance factors 50, 25, 10,
5, 2, the uniform full test set, backward 2 ... 50; `--test_priors 10,2` for other factors) from the one forward pass
over the test split, each with the model's prior as trained and corrected to the subset's known prior, and with
`--target_prior estimate` to the prior EM estimates from the subset's unlabeled images (after bias-corrected temperature
scaling on the model's recorded hold-out; `--em_calibration none` for the model's own probabilities). Records, metrics
and estimates go to `eval_test_priors` in `eval_results.json`.

Installed, the same job is `mislas-evaluate`. (Named so that, run as a script, it does not shadow the `evaluate`
package.)
"""

from mislas_hf.scripts.evaluate import main

if __name__ == "__main__":
    main()
