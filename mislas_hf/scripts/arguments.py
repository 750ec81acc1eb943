"""The command-line arguments of the jobs behind `recipes/`: `ModelArguments`, `DataArguments`,
`CalibrationArguments` and `EvaluationArguments` beside `MislasTrainingArguments`, parsed from a YAML config plus
command-line overrides (`parse_arguments`, `read_config`), as transformers' example scripts do with
`HfArgumentParser`. The jobs on a saved model parse theirs with the model's recorded data options as defaults
(`mislas_hf.scripts.saved_model_arguments`)."""

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..configuration_mislas import BACKBONES
from ..data import BENCHMARKS, TEST_PRIOR_IMBALANCE_FACTORS
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
    without `dataset`). The jobs on a saved model (evaluate, calibrate) default each option to the one recorded in
    the model's config (`MislasConfig.training_data`, see `parse_saved_model_arguments`)."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Paper benchmark: cifar10-lt, cifar100-lt, imagenet-lt, places-lt or inat2018. Leave it unset "
            "to use your own data (dataset_name or train_dir) as it is; training with no data option at all: "
            "cifar10-lt. Evaluate / calibrate: every data option defaults to the model's training run's."
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
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Deterministic subset of the test set, drawn with --seed (evaluate / calibrate: the training "
                  "run's subset unless given; a number above the test set's size evaluates all of it)."},
    )
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


CALIBRATION_METHODS = (
    "temperature", "classwise_temperature", "balanced_temperature", "logit_adjustment", "logit_adjustment_temperature"
)
PRIOR_AWARE_METHODS = ("balanced_temperature", "logit_adjustment", "logit_adjustment_temperature")
"""The methods of `recipes/calibrate.py` that calibrate for a known test prior (`--target_prior`) and store a logit
bias; `temperature` and `classwise_temperature` fit the hold-out as it is, long-tailed, and store no bias."""
TEST_PRIOR_PROTOCOL = "protocol"


@dataclass
class CalibrationArguments:
    """What `recipes/calibrate.py` fits, for which test prior, and on which held-out images."""

    model: str = field(metadata={"help": "Saved model folder or Hub id (also accepted as the first argument)."})
    method: str = field(
        default="temperature",
        metadata={
            "help": "temperature (one T, Guo et al. 2017, on the hold-out as it is); classwise_temperature (one T "
            "per class); balanced_temperature (one T on the hold-out weighted to the prior the model was trained "
            "for, then the prior correction to --target_prior); logit_adjustment (post-hoc logit adjustment, Menon "
            "et al. 2021: z - tau log pi_train, tau fit on the hold-out weighted to a balanced prior, or "
            "--post_hoc_tau; T = 1); logit_adjustment_temperature (z / T - tau log pi_train, T and tau fit "
            "jointly). See docs/calibration.md.",
            "choices": list(CALIBRATION_METHODS),
        },
    )
    target_prior: str | None = field(
        default=None,
        metadata={
            "help": "The class prior of the data the calibrated model will meet (balanced_temperature, "
            "logit_adjustment, logit_adjustment_temperature): uniform (the default: a balanced test set), train "
            "(the training counts' prior), or a JSON file holding a list of one positive number per class, in "
            "label order (a prior or counts)."
        },
    )
    post_hoc_tau: float | None = field(
        default=None,
        metadata={
            "help": "logit_adjustment: the tau of z - tau log pi_train (1: the Bayes-optimal adjustment for a "
            "balanced test set). Unset: fit by the held-out NLL. (Not --logit_adjustment_tau, the training loss's.)"
        },
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

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"--method {self.method!r} is not one of {', '.join(CALIBRATION_METHODS)}.")
        if self.target_prior is not None and self.method not in PRIOR_AWARE_METHODS:
            raise ValueError(
                "--target_prior is for the methods that calibrate for a test prior "
                f"({', '.join(PRIOR_AWARE_METHODS)}); --method {self.method} fits the hold-out as it is: leave "
                "--target_prior unset, or pick one of them."
            )
        if self.target_prior == "estimate":
            raise ValueError(
                "--target_prior estimate is for recipes/evaluate_model.py, which estimates the prior of the test "
                "images it evaluates (EM): here pass uniform, train or a JSON file with the prior."
            )
        if self.post_hoc_tau is not None:
            if self.method != "logit_adjustment":
                raise ValueError(
                    f"--post_hoc_tau is for --method logit_adjustment (T = 1, the given tau); --method {self.method} "
                    + ("fits T and tau jointly: leave --post_hoc_tau unset."
                       if self.method == "logit_adjustment_temperature" else "has no tau.")
                )
            if not math.isfinite(self.post_hoc_tau):
                raise ValueError(f"--post_hoc_tau {self.post_hoc_tau} must be a finite number (1: Bayes-optimal).")


@dataclass
class EvaluationArguments:
    """Which saved model `recipes/evaluate_model.py` evaluates, and on which test priors."""

    model: str = field(metadata={"help": "Saved model folder or Hub id (also accepted as the first argument)."})
    test_priors: str | None = field(
        default=None,
        metadata={
            "help": "Also evaluate on test subsets with shifted class priors (the test-agnostic protocol of LADE / "
            "SADE, mislas_hf.data.shifted_test_subsets), each with the prior as the model has it and corrected to "
            "the subset's known prior: 'protocol' (forward and backward long-tailed at imbalance factors 50, 25, "
            "10, 5, 2, and the uniform full test set) or comma-separated imbalance factors (e.g. '10,2'). Needs a "
            "balanced test split with at least IF images of each class."
        },
    )
    target_prior: str | None = field(
        default=None,
        metadata={
            "help": "'estimate': estimate the class prior of each test subset (of the test split without "
            "--test_priors) from its unlabeled images by EM (Saerens et al. 2002) and evaluate with it too."
        },
    )
    em_calibration: str | None = field(
        default=None,
        metadata={
            "help": "--target_prior estimate: the probabilities EM starts from. 'bcts': bias-corrected temperature "
            "scaling (Alexandari et al. 2020) fit on the hold-out recorded in the model's config; 'none': the "
            "model's own. Default: bcts when the model records a hold-out, none otherwise.",
            "choices": ["bcts", "none"],
        },
    )
    test_prior_seed: int = field(
        default=0, metadata={"help": "Seed of the images each --test_priors subset keeps (0: SADE's subsets)."}
    )

    def __post_init__(self):
        self.test_prior_factors()  # refuse a malformed --test_priors before any data is read
        if self.target_prior not in (None, "estimate"):
            raise ValueError(
                f"--target_prior {self.target_prior}: evaluation takes only 'estimate' (EM on the test images); "
                "the known prior of each --test_priors subset is always evaluated. To store a known prior in the "
                "model, use recipes/calibrate.py --target_prior."
            )
        if self.em_calibration is not None and self.target_prior != "estimate":
            raise ValueError("--em_calibration sets how --target_prior estimate calibrates: pass both, or neither.")

    def test_prior_factors(self) -> tuple[float, ...] | None:
        """The imbalance factors of `--test_priors` (None when it is unset)."""
        if self.test_priors is None:
            return None
        if self.test_priors == TEST_PRIOR_PROTOCOL:
            return TEST_PRIOR_IMBALANCE_FACTORS
        try:
            factors = tuple(float(factor) for factor in self.test_priors.split(","))
        except ValueError:
            factors = ()
        if not factors or not all(math.isfinite(factor) and factor > 1 for factor in factors):
            raise ValueError(
                f"--test_priors {self.test_priors}: pass 'protocol' or comma-separated imbalance factors above 1 "
                "(e.g. '10,2')."
            )
        return tuple(int(factor) if factor.is_integer() else factor for factor in factors)  # written as the papers do


def parse_arguments(argv: list[str] | None = None, extra_dataclasses: tuple = ()):
    """Parse `--config file.yaml` plus command-line overrides (the command line wins); unknown YAML keys are
    refused with their names. Returns the argument dataclasses and the configuration text (the YAML file and the
    overrides) that model cards record."""
    parser = HfArgumentParser((*extra_dataclasses, ModelArguments, DataArguments, MislasTrainingArguments))
    argv, config_values, config_text = read_config(parser, list(sys.argv[1:] if argv is None else argv))
    parser.set_defaults(**config_values)
    return (*parser.parse_args_into_dataclasses(args=argv), config_text)


def read_config(parser: HfArgumentParser, argv: list[str]) -> tuple[list[str], dict, str]:
    """`--config FILE` of `argv`, for `parser`: the other arguments, the YAML file's values (keys the parser does not
    know are refused, naming them) and the configuration text that model cards record (the file and the overrides)."""
    config_text, values = "", {}
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
    if argv:
        config_text += f"# command-line overrides: {' '.join(argv)}\n"
    return argv, values, config_text
