"""The command-line arguments of the jobs behind `recipes/`: `ModelArguments`, `DataArguments`,
`CalibrationArguments` and `EvaluationArguments` beside `MislasTrainingArguments`, parsed from a YAML config plus
command-line overrides (`parse_arguments`), as transformers' example scripts do with `HfArgumentParser`."""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..configuration_mislas import BACKBONES
from ..data import BENCHMARKS
from ..training_args import MislasTrainingArguments


@dataclass
class ModelArguments:
    """Which model to build or start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Stage 1: weights to start from, a MiSLAS model or any transformers ResNet (model_type resnet, "
            "e.g. microsoft/resnet-50; its backbone loads, the classifier is new). Stage 2: the stage-1 model. "
            "Folder or Hub id."
        },
    )
    backbone: str | None = field(
        default=None,
        metadata={
            "help": "Backbone of a new model (default resnet32); with model_name_or_path, the checkpoint's unless "
            "given (a different one is refused).",
            "choices": list(BACKBONES),
        },
    )
    extra_block: bool | None = field(
        default=None,
        metadata={"help": "Extra bottleneck block before pooling (Places-LT). Default: the checkpoint's, else off."},
    )
    freeze_backbone: bool | None = field(
        default=None,
        metadata={
            "help": "Keep the pretrained backbone frozen in stage 1 too (Places-LT); needs model_name_or_path. "
            "Default: the checkpoint's, else off."
        },
    )


@dataclass
class DataArguments:
    """Which data to train and evaluate on: a paper benchmark (`dataset`) or your own (`dataset_name` / `train_dir`
    without `dataset`)."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Paper benchmark: cifar10-lt, cifar100-lt, imagenet-lt, places-lt or inat2018. Leave it unset "
            "to use your own data (dataset_name or train_dir) as it is; with no data option at all: cifar10-lt."
        },
    )
    imbalance_factor: float | None = field(
        default=None,
        metadata={
            "help": "N_max / N_min of the exponential cut of a balanced training set: CIFAR-LT (10, 50, 100; "
            "default 100), optional for your own data (default: no cut)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder (parquet, arrow, imagefolder) that datasets.load_dataset reads: your own "
            "data, or with dataset a local copy of a CIFAR benchmark."
        },
    )
    train_dir: str | None = field(default=None, metadata={"help": "Your own data: imagefolder of training images."})
    validation_dir: str | None = field(
        default=None, metadata={"help": "Your own data: imagefolder evaluated on when there is no test_dir."}
    )
    test_dir: str | None = field(default=None, metadata={"help": "Your own data: imagefolder of test images."})
    image_column_name: str | None = field(
        default=None, metadata={"help": "Your own data: image column (default: image, img)."}
    )
    label_column_name: str | None = field(
        default=None, metadata={"help": "Your own data: label column (default: label, labels, fine_label)."}
    )
    train_val_split: float | None = field(
        default=None,
        metadata={
            "help": "Your own data without a test or validation split: evaluate on this fraction of every class "
            "of the training set, held out (a class too small to give an image stays in training)."
        },
    )
    many_shot_threshold: int = field(
        default=100, metadata={"help": "Your own data: Many-shot classes have more training images than this."}
    )
    few_shot_threshold: int = field(
        default=20, metadata={"help": "Your own data: Few-shot classes have fewer training images than this."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Input side length (default: the benchmark's or the pretrained image processor's; 32 for a new "
            "resnet32, 224 for the other backbones)."
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "Image root of a list-file benchmark."})
    train_list: str | None = field(default=None, metadata={"help": "Official training split list (list-file sets)."})
    test_list: str | None = field(default=None, metadata={"help": "Official test split list (list-file sets)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Deterministic subset of the long-tailed training set, for quick runs."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Deterministic subset of the test set."})
    validation_split_percentage: float | None = field(
        default=None,
        metadata={"help": "Hold out this percentage of the training set to select the best epoch on (never the test set)."},
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the long-tailed cut and of --train_val_split (0 = the published splits)."}
    )
    in_memory_images: bool | None = field(
        default=None,
        metadata={
            "help": "Decode the images once into memory and crop/flip/normalise whole training batches on the "
            "training device (same augmentation as the per-sample transform). Default: on for the CIFAR "
            "benchmarks, off otherwise (only 32x32 CIFAR images are supported)."
        },
    )

    def __post_init__(self):
        own_data_options = {
            "dataset_name": self.dataset_name,
            "train_dir": self.train_dir,
            "validation_dir": self.validation_dir,
            "test_dir": self.test_dir,
        }
        if self.dataset is None and not any(own_data_options.values()):
            self.dataset = "cifar10-lt"
        folders = [f"--{name}" for name, value in own_data_options.items() if value and name != "dataset_name"]
        if self.dataset is not None and folders:
            raise ValueError(
                f"{', '.join(folders)} are for your own data: leave --dataset ({self.dataset}) unset to use them"
            )
        if self.dataset is not None and self.dataset.lower() not in BENCHMARKS:
            raise ValueError(
                f"--dataset {self.dataset} is not a paper benchmark ({', '.join(BENCHMARKS)}): for your own data "
                "leave --dataset unset and pass --dataset_name (Hub id or folder) or --train_dir"
            )
        if self.own_data and self.in_memory_images:
            raise ValueError("in_memory_images is for the 32x32 CIFAR benchmarks: leave it unset for your own data")
        spec = BENCHMARKS.get(self.dataset.lower()) if self.dataset else None
        if self.in_memory_images and spec is not None and spec.preprocessing.augmentation != "cifar":
            raise ValueError(
                f"in_memory_images is for the 32x32 CIFAR benchmarks; {self.dataset} uses the per-sample "
                "'imagenet' transforms: leave in_memory_images unset."
            )
        if not 0 <= self.few_shot_threshold <= self.many_shot_threshold:
            raise ValueError(
                f"--few_shot_threshold {self.few_shot_threshold} must be between 0 and --many_shot_threshold "
                f"{self.many_shot_threshold}"
            )

    @property
    def own_data(self) -> bool:
        """Whether the run uses your own data (no `dataset`) rather than a paper benchmark."""
        return self.dataset is None

    def uses_in_memory_images(self, augmentation: str) -> bool:
        """Whether the splits are decoded once (`in_memory_images`, by default on for the CIFAR benchmarks, whose
        preprocessing has the `cifar` augmentation)."""
        if self.in_memory_images is None:
            return augmentation == "cifar" and not self.own_data
        return self.in_memory_images


CALIBRATION_METHODS = ("temperature", "classwise_temperature")


@dataclass
class CalibrationArguments:
    """What `recipes/calibrate.py` fits, and on which held-out images."""

    model: str = field(metadata={"help": "Saved model folder or Hub id (also accepted as the first argument)."})
    method: str = field(
        default="temperature",
        metadata={"help": "temperature (one T, Guo et al. 2017) or classwise_temperature (one T per class).",
                  "choices": list(CALIBRATION_METHODS)},
    )
    validation_split_name: str | None = field(
        default=None,
        metadata={"help": "Fit on this split of the data instead of the hold-out recorded in the model's config "
                  "(never the test split)."},
    )
    classwise_regularization: float = field(
        default=5.0,
        metadata={"help": "classwise_temperature: pull of each log T_k towards the scalar log T, in held-out images "
                  "(mislas_hf.calibration.fit_classwise_temperatures)."},
    )


@dataclass
class EvaluationArguments:
    """Which saved model `recipes/evaluate_model.py` evaluates."""

    model: str = field(metadata={"help": "Saved model folder or Hub id (also accepted as the first argument)."})


def parse_arguments(argv: list[str] | None = None, extra_dataclasses: tuple = ()):
    """Parse `--config file.yaml` plus command-line overrides (the command line wins); unknown YAML keys are
    refused with their names. Returns the argument dataclasses and the configuration text (the YAML file and the
    overrides) that model cards record."""
    parser = HfArgumentParser((*extra_dataclasses, ModelArguments, DataArguments, MislasTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    config_text = ""
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv):
            raise ValueError("--config needs a YAML file path.")
        config_path = Path(argv[position + 1])
        del argv[position : position + 2]
        if not config_path.is_file():
            raise FileNotFoundError(f"--config {config_path}: no such file. Configs live in recipes/configs/.")
        config_text = config_path.read_text()
        values = yaml.safe_load(config_text) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{config_path}: unknown config key(s) {', '.join(unknown)}. Run recipes/train.py --help for the "
                "accepted options."
            )
        parser.set_defaults(**values)
    if argv:
        config_text += f"# command-line overrides: {' '.join(argv)}\n"
    return (*parser.parse_args_into_dataclasses(args=argv), config_text)


def parse_saved_model_arguments(job_arguments, argv: list[str] | None = None):
    """`parse_arguments` for a job on a saved model (`EvaluationArguments` or `CalibrationArguments`), whose folder or
    Hub id may come first on the command line without `--model`. Returns the job's arguments, then the data and
    training arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--model", *argv]
    job_args, _, data_args, training_args, _ = parse_arguments(argv, extra_dataclasses=(job_arguments,))
    return job_args, data_args, training_args
