"""The arguments of the jobs on a saved model (evaluate, calibrate), defaulted from what its training run recorded.

A training run records its data options in the model (`training_data_record`, written into
`MislasConfig.training_data`); a job on the saved model reads its `config.json` (`checkpoint_config`), the data
options recorded there (`recorded_data_options`, also for folders saved before that record existed), and takes them
as the defaults of the options its command line and `--config` leave unset (`saved_model_data_defaults`,
`parse_saved_model_arguments`)."""

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from transformers import HfArgumentParser, PreTrainedConfig

from ..training_args import MislasTrainingArguments
from .arguments import DataArguments, ModelArguments, read_config

logger = logging.getLogger(__name__)


def _command_line_values(dataclass_types: tuple, argv: list[str]) -> dict:
    """The options that `argv` itself sets, with their values: none of the defaults."""
    probe = HfArgumentParser(dataclass_types, add_help=False)
    for action in probe._actions:
        action.default, action.required = argparse.SUPPRESS, False
    return vars(probe.parse_known_args(argv)[0])


def checkpoint_config(path: str, option: str = "model_name_or_path") -> dict:
    """The `config.json` of the checkpoint (folder or Hub id) that `--option` names, as a dict; `ValueError` when
    there is none."""
    if path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"--{option} {path}: no such folder; pass the folder of a saved model or a Hub id")
    try:
        return PreTrainedConfig.get_config_dict(path)[0]
    except OSError as err:
        raise ValueError(f"--{option} {path}: no model config found there ({err})") from err


NOT_RECORDED_DATA_OPTIONS = ("max_train_samples", "validation_split_percentage")
"""The `DataArguments` that `MislasConfig.training_data` leaves out: the images a run trained on are counted in
`class_counts` (after the hold-out and the `--max_train_samples` subset; they give Many/Medium/Few), and its hold-out is
`held_out_split`."""
PATH_DATA_OPTIONS = ("train_dir", "validation_dir", "test_dir", "data_dir", "train_list", "test_list")
SPLIT_FOLDER_OPTIONS = ("train_dir", "validation_dir", "test_dir")
SOURCE_DATA_OPTIONS = ("dataset", "dataset_name", *SPLIT_FOLDER_OPTIONS)
"""The options that name the data: a paper benchmark, or your own data (a `dataset_name`, or imagefolders per split)."""


def _absolute_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def training_data_record(data_args: DataArguments, seed: int) -> dict:
    """What `MislasConfig.training_data` records of a training run: its data options but `NOT_RECORDED_DATA_OPTIONS`,
    with absolute paths (a local `dataset_name` folder too; a Hub id stays as it is), and the `seed` that drew its
    `max_eval_samples` test subset."""
    record = {
        option.name: getattr(data_args, option.name)
        for option in dataclasses.fields(DataArguments)
        if option.name not in NOT_RECORDED_DATA_OPTIONS
    }
    for name in PATH_DATA_OPTIONS:
        if record[name] is not None:
            record[name] = _absolute_path(record[name])
    if record["dataset_name"] is not None and os.path.isdir(os.path.expanduser(record["dataset_name"])):
        record["dataset_name"] = _absolute_path(record["dataset_name"])
    return record | {"seed": seed}


def recorded_data_options(model_config: dict) -> dict | None:
    """The data options (and `seed`) a saved model, `model_config` its `config.json`, was trained with: its
    `training_data`; for folders saved before that was recorded, the `dataset`, `imbalance_factor`, `split_seed` and
    `seed` of its `held_out_split`; None when it records neither."""
    if model_config.get("training_data") is not None:
        return model_config["training_data"]
    held_out = model_config.get("held_out_split")
    if held_out is None:
        return None
    return {name: held_out[name] for name in ("dataset", "imbalance_factor", "split_seed", "seed")}


def saved_model_data_defaults(model: str, record: dict | None, given: dict) -> dict:
    """The defaults of a job on the saved model `model`: its recorded data options and seed (`record`, see
    `recorded_data_options`) where `given` (the options of the command line and of `--config`) has none, so that a
    default never stands against an option the user did not pass.

    The record names one source of data, which options naming another replace rather than mix with: a `dataset`
    other than the recorded one, or own-data folders (`train_dir`, `validation_dir`, `test_dir`) for a model trained
    on a paper benchmark, leave the record unused; `dataset_name` replaces recorded folders and `train_dir` a
    recorded `dataset_name`. `ValueError` when the options then name no data (no record, no data option: the
    training default cifar10-lt does not apply to a saved model) or your own data without its training split, which
    gives the classes and the training counts (Many/Medium/Few); and for split folders beside a recorded
    `dataset_name`."""
    defaults = {}
    if record is not None:
        trained_on = record.get("dataset")
        folders = [name for name in SPLIT_FOLDER_OPTIONS if given.get(name)]
        other_benchmark = given.get("dataset") is not None and given["dataset"].lower() != str(trained_on).lower()
        if other_benchmark or (folders and trained_on is not None):
            named = f"--dataset {given['dataset']}" if other_benchmark else f"--{folders[0]} {given[folders[0]]}"
            logger.warning(
                f"{named} is not the data {model} was trained on ({trained_on or 'your own data'}, "
                "config.training_data): its recorded data options are not used"
            )
        else:
            defaults = {name: value for name, value in record.items() if name not in given}
            if given.get("dataset_name"):
                for name in SPLIT_FOLDER_OPTIONS:
                    defaults.pop(name, None)
            if given.get("train_dir"):
                defaults.pop("dataset_name", None)
            if folders and defaults.get("dataset_name"):
                raise ValueError(
                    f"--{folders[0]} {given[folders[0]]}: {model} was trained on --dataset_name "
                    f"{defaults['dataset_name']} (config.training_data), whose training split gives the classes and "
                    "the training counts (Many/Medium/Few), and a dataset_name does not mix with imagefolders per "
                    "split: pass --train_dir with the training images too, or a --dataset_name with a test split"
                )
    options = defaults | given
    if not any(options.get(name) for name in SOURCE_DATA_OPTIONS):
        raise ValueError(
            f"{model} does not record the data it was trained on (config.training_data: written by training runs "
            "since this version, not by older ones or converted checkpoints): pass its data options, --dataset "
            "BENCHMARK (cifar10-lt, cifar100-lt, ... with --imbalance_factor, and --dataset_name for a local copy) or "
            "your own data's --dataset_name (Hub id or folder) or --train_dir with --test_dir"
        )
    if options.get("dataset") is None and not options.get("dataset_name") and not options.get("train_dir"):
        folder = next(name for name in SPLIT_FOLDER_OPTIONS if options.get(name))
        raise ValueError(
            f"--{folder} {options[folder]} alone: your own data needs its training split too, which gives the "
            "classes and the training counts (Many/Medium/Few): pass --train_dir (imagefolder of the training "
            "images) or --dataset_name (Hub id or folder with a train split)"
        )
    return defaults


def parse_saved_model_arguments(job_arguments, argv: list[str] | None = None):
    """`parse_arguments` for a job on a saved model (`EvaluationArguments` or `CalibrationArguments`), whose folder or
    Hub id may come first on the command line without `--model`. The data options and `--seed` that neither the
    command line nor `--config` gives are the model's recorded ones (`saved_model_data_defaults`). Returns the job's
    arguments, then the data and training arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--model", *argv]
    dataclass_types = (job_arguments, ModelArguments, DataArguments, MislasTrainingArguments)
    parser = HfArgumentParser(dataclass_types)
    argv, config_values, _ = read_config(parser, argv)
    parser.set_defaults(**config_values)
    given = config_values | _command_line_values(dataclass_types, argv)
    if given.get("model") and not any(arg in ("-h", "--help") for arg in argv):
        record = recorded_data_options(checkpoint_config(given["model"], option="model"))
        known = {action.dest for action in parser._actions}
        defaults = saved_model_data_defaults(given["model"], record, given)
        parser.set_defaults(**{name: value for name, value in defaults.items() if name in known})
    job_args, _, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return job_args, data_args, training_args
