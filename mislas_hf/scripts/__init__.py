"""The jobs behind `recipes/` and the `mislas-*` commands, one module per part (transformers' example scripts and
TRL's `scripts/` are the model):

* `arguments`: the argument dataclasses and `parse_arguments` (YAML config + command-line overrides).
* `launch`: logging and the CPU thread policy of the launchers.
* `model_setup`: the model a job builds or reads (`plan_model`, `build_model`, `load_saved_model`).
* `data_setup`: the data with its preprocessing and transforms, the held-out split.
* `report`: test-set evaluation, reliability diagram, model card, saving and pushing a folder.
* `train`: the two stages and resume (`mislas-train`).
* `evaluate`: a saved model on the test split (`mislas-evaluate`).
* `calibrate`: post-hoc temperature scaling on held-out images (`mislas-calibrate`).
"""
