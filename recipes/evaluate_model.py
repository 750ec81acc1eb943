"""Evaluate a saved MiSLAS model (folder or Hub id) on a benchmark's test split: top-1, Many/Medium/Few, ECE, MCE,
NLL, the reliability diagram and a model card in --output_dir (optionally pushed with --push_to_hub).

    python recipes/evaluate_model.py MODEL_DIR_OR_HUB_ID --dataset cifar10-lt --imbalance_factor 100 --output_dir DIR

Installed, the same job is `mislas-evaluate`. (Named so that, run as a script, it does not shadow the `evaluate`
package.)
"""

from mislas_hf.scripts.evaluate import main

if __name__ == "__main__":
    main()
