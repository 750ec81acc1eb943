"""The MiSLAS job behind `recipes/train.py`, `recipes/evaluate.py` and `recipes/calibrate.py`: argument dataclasses,
YAML + command-line parsing, the two stages in sequence, the evaluation report (metrics, reliability diagram, model
card), and post-hoc temperature scaling on the held-out split a training run recorded.

Output layout of a run: `OUTPUT_DIR/stage1/` and `OUTPUT_DIR/stage2/`, each a `save_pretrained` folder with the
image processor, `eval_results.json`, `reliability_diagram.png` and a `README.md` model card, plus
`OUTPUT_DIR/all_results.json`.
"""

import dataclasses
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml
from accelerate.utils import get_int_from_env
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    HfArgumentParser,
    PreTrainedConfig,
    ResNetModel,
    Trainer,
    TrainerState,
    set_seed,
)
from transformers.utils import logging
from transformers.trainer_utils import get_last_checkpoint

from .calibration import (
    compute_metrics,
    fit_classwise_temperatures,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
)
from .configuration_mislas import BACKBONES as BACKBONE_SPECS, MislasConfig, backbone_of_resnet_config
from .data import (
    BENCHMARKS,
    InMemoryCifarTransform,
    augment_cifar_batch,
    augment_imagenet_batch,
    class_counts,
    decode_cifar_images,
    load_benchmark,
    load_own_dataset,
    make_image_processor,
    stratified_holdout,
    make_transform,
    with_encoded_images,
    subset,
)
from .hub import PAPER_RESULTS, push_model_folder, write_model_card
from .modeling_mislas import MislasForImageClassification, load_resnet_backbone
from .trainer import DeviceBatchTrainer, MislasTrainer, MislasTrainingArguments

DIAGRAM_FILENAME = "reliability_diagram.png"
logger = logging.get_logger(__name__)


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
            "choices": list(BACKBONE_SPECS),
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
        metadata={"help": "Input side length (default: 32 for resnet32, 224 for the ImageNet-family backbones)."},
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
        metadata={"help": "Hold out this % of the training set to select the best epoch on (never the test set)."},
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
        if self.in_memory_images and spec is not None and spec.family != "cifar":
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

    def uses_in_memory_images(self, family: str) -> bool:
        """Whether the splits are decoded once (`in_memory_images`, by default on for the CIFAR benchmarks)."""
        if self.in_memory_images is None:
            return family == "cifar" and not self.own_data
        return self.in_memory_images


@dataclass(frozen=True)
class ModelPlan:
    """What `build_model` builds: from `source` ("new", "mislas": a MiSLAS checkpoint, "resnet": a transformers
    ResNet checkpoint), the backbone and its options after `ModelArguments` and the checkpoint's config are
    reconciled, and the pretrained image processor's normalisation (None: the family's default)."""

    source: str
    backbone: str
    extra_block: bool
    freeze_backbone: bool
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def family(self) -> str:
        return BACKBONE_SPECS[self.backbone][0]


def _checkpoint_config(path: str) -> dict:
    """The `config.json` of a checkpoint (folder or Hub id) as a dict; `ValueError` when there is none."""
    try:
        return PreTrainedConfig.get_config_dict(path)[0]
    except OSError as err:
        raise ValueError(f"--model_name_or_path {path}: no model config found there ({err})") from err


def _pretrained_normalization(path: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The image mean/std of the checkpoint's image processor, or (None, None) when it has none."""
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        logger.warning(f"{path} has no image processor: normalising with the family's default mean/std")
        return None, None
    return tuple(processor.image_mean), tuple(processor.image_std)


def _truncates(checkpoint_backbone: str, backbone: str) -> bool:
    """Whether `backbone` is `checkpoint_backbone` with fewer blocks in some stages (`load_resnet_backbone`)."""
    (family, layer_type, depths, sizes), (other_family, other_type, other_depths, other_sizes) = (
        BACKBONE_SPECS[checkpoint_backbone],
        BACKBONE_SPECS[backbone],
    )
    return (family, layer_type, sizes) == (other_family, other_type, other_sizes) and all(
        ours <= theirs for ours, theirs in zip(other_depths, depths)
    )


def plan_model(model_args: ModelArguments, stage: str = "1") -> ModelPlan:
    """Reconcile the backbone options with the checkpoint of `model_name_or_path`, before any data or model is
    loaded. A new model takes `backbone` (resnet32 by default); `freeze_backbone` without pretrained weights is
    refused. A MiSLAS checkpoint keeps its backbone (another `backbone` is refused, naming both); `extra_block` and
    `freeze_backbone` given here override the checkpoint's, with a warning naming both values. A transformers
    ResNet (`model_type: resnet`) gives the backbone of its architecture (`backbone_of_resnet_config`) and its image
    processor's mean/std; it is refused for stage 2 and any other model type is refused naming it."""
    path = model_args.model_name_or_path
    extra_block, freeze_backbone = model_args.extra_block, model_args.freeze_backbone
    if not path:
        if freeze_backbone:
            raise ValueError(
                "freeze_backbone needs pretrained weights: with a random backbone it would train a classifier on "
                "random features. Pass --model_name_or_path (e.g. microsoft/resnet-50; for Places-LT, torchvision's "
                "ResNet-152 converted by `python -m mislas_hf.convert --backbone_checkpoint FILE --dataset places-lt "
                "--output_dir DIR`) or set freeze_backbone false"
            )
        return ModelPlan("new", model_args.backbone or "resnet32", bool(extra_block), False)
    config = _checkpoint_config(path)
    model_type = config.get("model_type")
    if model_type == MislasConfig.model_type:
        backbone = config.get("backbone", "resnet32")
        if model_args.backbone is not None and model_args.backbone != backbone:
            raise ValueError(
                f"--backbone {model_args.backbone} conflicts with {path}, a {backbone} model: leave backbone unset "
                f"or set it to {backbone}"
            )
        for name, value in (("extra_block", extra_block), ("freeze_backbone", freeze_backbone)):
            if value is not None and value != config.get(name, False):
                logger.warning(f"{name}={value} (given) overrides {name}={config.get(name, False)} of {path}")
        extra_block = config.get("extra_block", False) if extra_block is None else extra_block
        freeze_backbone = config.get("freeze_backbone", False) if freeze_backbone is None else freeze_backbone
        return ModelPlan("mislas", backbone, extra_block, freeze_backbone)
    if model_type != "resnet":
        raise ValueError(
            f"--model_name_or_path {path} is a model of type '{model_type}': pass a MiSLAS model or a transformers "
            "ResNet (model_type 'resnet', e.g. microsoft/resnet-50)"
        )
    if stage == "2":
        raise ValueError(
            f"--stage 2 starts from a MiSLAS stage-1 model, and {path} is a transformers ResNet: run stage 1 from it "
            "first (--stage 1 or both)"
        )
    backbone = backbone_of_resnet_config(config)
    if model_args.backbone is not None and model_args.backbone != backbone:
        if not _truncates(backbone, model_args.backbone):
            raise ValueError(
                f"--backbone {model_args.backbone} conflicts with {path}, a {backbone}: leave backbone unset or set "
                f"it to {backbone}"
            )
        backbone = model_args.backbone
    mean, std = _pretrained_normalization(path)
    return ModelPlan("resnet", backbone, bool(extra_block), bool(freeze_backbone), mean, std)


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


LAUNCHER_MARKERS = ("ACCELERATE_DYNAMO_BACKEND", "TORCHELASTIC_RUN_ID")
"""Environment variables that `accelerate launch` and `torchrun` (`torch.distributed.run`) set in their processes."""
LOCAL_PROCESS_COUNT_VARIABLES = ["LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"]
"""Where launchers put the number of processes on this machine (torchrun / accelerate, Intel MPI, Open MPI)."""


def thread_count_chosen_by_launcher() -> bool:
    """
    Whether `OMP_NUM_THREADS` in this process was set by `accelerate launch` or `torchrun` rather than by the user.

    Both set it for the processes they start: `accelerate launch` (accelerate's `commands/launch.py`) to
    `--num_cpu_threads_per_process`, else the user's `OMP_NUM_THREADS`, else 1 (physical cores / processes with
    `--cpu`); `torchrun` to 1 with several processes when the user set none. A thread count the user chose therefore
    shows in the launcher's own environment (`OMP_NUM_THREADS`) or command line (`--num_cpu_threads_per_process`);
    when neither has it, the launcher's default is in force. Plain `python` runs (no launcher variables) and launchers
    whose process cannot be read count as the user's choice.
    """
    if "OMP_NUM_THREADS" not in os.environ or not any(marker in os.environ for marker in LAUNCHER_MARKERS):
        return False
    try:
        launcher = psutil.Process().parent()
        launcher_environment, launcher_arguments = launcher.environ(), launcher.cmdline()
    except (psutil.Error, AttributeError):  # no parent, or its environment is not readable
        return False
    chosen_on_command_line = any(arg.startswith("--num_cpu_threads_per_process") for arg in launcher_arguments)
    return "OMP_NUM_THREADS" not in launcher_environment and not chosen_on_command_line


def use_cpu_cores(args: MislasTrainingArguments) -> int:
    """
    On a CPU run whose thread count the launcher chose (`thread_count_chosen_by_launcher`, e.g. the README's
    `accelerate launch` without an accelerate config, which gives every process one thread), give each process an
    equal share of the physical cores (accelerate's own rule for multi-CPU runs: cores / local processes, at least
    1) with `torch.set_num_threads`, and log it. Thread counts set by the user, and GPU runs, are left alone.
    Returns the number of intra-op threads torch uses.
    """
    if args.device.type == "cpu" and thread_count_chosen_by_launcher():
        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        local_processes = max(1, get_int_from_env(LOCAL_PROCESS_COUNT_VARIABLES, 1))
        threads = max(1, cores // local_processes)
        if threads != torch.get_num_threads():
            logger.warning(
                f"The launcher set OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (no thread count was given): "
                f"training on {threads} threads per process ({cores} physical cores / {local_processes} local "
                "processes). Set OMP_NUM_THREADS or --num_cpu_threads_per_process to choose."
            )
            torch.set_num_threads(threads)
    return torch.get_num_threads()


def stage_arguments(args: MislasTrainingArguments, stage: int) -> MislasTrainingArguments:
    """The arguments of one stage: its epochs and folder; stage 2 always uses a cosine schedule without warm-up
    (Table 6). Pushing happens once at the end of the run, not from the per-stage Trainer."""
    output_dir = os.path.join(args.output_dir, f"stage{stage}")
    if stage == 1:
        return dataclasses.replace(
            args, stage="1", num_train_epochs=args.stage1_epochs, output_dir=output_dir, push_to_hub=False
        )
    return dataclasses.replace(
        args,
        stage="2",
        num_train_epochs=args.stage2_epochs,
        output_dir=output_dir,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        lr_decay_epochs=None,
        push_to_hub=False,
    )


def load_data(data_args: DataArguments, family: str):
    """The paper benchmark named by `data_args.dataset`, or your own data as it is (`load_own_dataset`, transforms of
    the backbone's `family`), as a `LongTailedBenchmark` with `train` and `test` splits."""
    if data_args.own_data:
        benchmark = load_own_dataset(
            dataset_name=data_args.dataset_name,
            train_dir=data_args.train_dir,
            validation_dir=data_args.validation_dir,
            test_dir=data_args.test_dir,
            image_column=data_args.image_column_name,
            label_column=data_args.label_column_name,
            family=family,
            train_val_split=data_args.train_val_split,
            imbalance_factor=data_args.imbalance_factor,
            seed=data_args.split_seed,
        )
        if benchmark.kept_whole_classes:
            names = [benchmark.class_names[c] for c in benchmark.kept_whole_classes]
            logger.warning(
                f"classes {names} are too small to give an image to the held-out evaluation split "
                f"(--train_val_split {data_args.train_val_split}): they stay whole in the training set"
            )
        if data_args.train_val_split is not None and benchmark.evaluation_split in ("test", "validation"):
            logger.warning(
                f"--train_val_split {data_args.train_val_split} is not used: {benchmark.name} has a "
                f"{benchmark.evaluation_split} split to evaluate on"
            )
        logger.info(
            f"{benchmark.name}: {len(benchmark.class_names)} classes, {sum(benchmark.class_counts)} training images "
            f"(per class {benchmark.class_counts}), evaluated on the {benchmark.evaluation_split} split "
            f"({len(benchmark.splits['test'])} images)"
        )
        return benchmark
    if data_args.train_val_split is not None:
        raise ValueError("--train_val_split is for your own data: the paper benchmarks have their test split")
    return load_benchmark(
        data_args.dataset,
        imbalance_factor=100 if data_args.imbalance_factor is None else data_args.imbalance_factor,
        dataset_name=data_args.dataset_name,
        data_dir=data_args.data_dir,
        train_list=data_args.train_list,
        test_list=data_args.test_list,
        seed=data_args.split_seed,
    )


def preprocessing(data_args: DataArguments, benchmark, plan: ModelPlan) -> dict:
    """`image_size`, `mean`, `std` for `make_transform` / `make_image_processor`: the benchmark's normalisation, or
    for your own data the pretrained backbone's image processor's (None: the family's default)."""
    mean, std = (plan.mean, plan.std) if data_args.own_data else (benchmark.mean, benchmark.std)
    return dict(image_size=data_args.image_size, mean=mean, std=std)


def load_splits(
    data_args: DataArguments, training_args: MislasTrainingArguments, plan: ModelPlan, validation_split_name=None
):
    """The data with transforms set, plus the held-out validation split when asked for: the
    `--validation_split_percentage` hold-out of the training set, or the split `validation_split_name` of the data.
    With in-memory images (`DataArguments.uses_in_memory_images`) the splits are decoded once; the training split
    then yields raw uint8 images, which the trainer augments on its device (`train_batch_augmentation`). Every
    imagenet-family split yields uint8 images, finished on the device by the same function."""
    benchmark = load_data(data_args, plan.family)
    train, test = benchmark.splits["train"], benchmark.splits["test"]
    validation = None
    if data_args.validation_split_percentage:
        train, validation, kept_whole = stratified_holdout(
            train, data_args.validation_split_percentage / 100, seed=training_args.seed
        )
        if kept_whole:
            logger.warning(
                f"classes {kept_whole} are too small to give images to the validation split "
                f"({data_args.validation_split_percentage}% rounds to 0 or would leave none for training): "
                "they stay whole in the training set"
            )
    elif validation_split_name is not None:
        if validation_split_name not in benchmark.splits:
            raise ValueError(
                f"validation_split_name={validation_split_name!r}: {benchmark.name} has splits "
                f"{list(benchmark.splits)}; name a held-out split, or use the recorded --validation_split_percentage "
                "hold-out."
            )
        validation = benchmark.splits[validation_split_name]
    if data_args.max_train_samples is not None:
        train = subset(train, data_args.max_train_samples, seed=training_args.seed)
    if data_args.max_eval_samples is not None:
        test = subset(test, data_args.max_eval_samples, seed=training_args.seed)
    counts = class_counts(train, num_classes=len(benchmark.class_names))
    if data_args.uses_in_memory_images(benchmark.family):
        with training_args.main_process_first(desc="decoding images"):
            train, test = decode_cifar_images(train), decode_cifar_images(test)
            validation = decode_cifar_images(validation) if validation is not None else None
        train_transform, eval_transform = InMemoryCifarTransform(train=True), InMemoryCifarTransform(train=False)
    else:
        if benchmark.family == "imagenet":  # the transform decodes the files itself (torchvision for JPEG)
            train, test = with_encoded_images(train), with_encoded_images(test)
            validation = with_encoded_images(validation) if validation is not None else None
        options = preprocessing(data_args, benchmark, plan)
        if benchmark.family == "imagenet":  # normalised on the device (train_batch_augmentation)
            options = dict(image_size=options["image_size"])
        train_transform = make_transform(benchmark.family, train=True, **options)
        eval_transform = make_transform(benchmark.family, train=False, **options)
    train.set_transform(train_transform)
    test.set_transform(eval_transform)
    if validation is not None:
        validation.set_transform(eval_transform)
    return benchmark, counts, train, validation, test


def held_out_split_record(data_args: DataArguments, training_args, benchmark, validation) -> dict | None:
    """What `MislasConfig.held_out_split` records of the `--validation_split_percentage` hold-out (None without
    one): the percentage and seed, the data options that decide the images, and the held-out images per class."""
    if not data_args.validation_split_percentage:
        return None
    return {
        "percentage": data_args.validation_split_percentage,
        "seed": training_args.seed,
        "dataset": data_args.dataset,
        "imbalance_factor": benchmark.imbalance_factor,
        "split_seed": data_args.split_seed,
        "class_counts": class_counts(validation, num_classes=len(benchmark.class_names)),
    }


def train_batch_augmentation(data_args: DataArguments, benchmark, plan: ModelPlan):
    """`MislasTrainer`'s `batch_augmentation` for the training split of `load_splits`, which runs on the training
    device: for the imagenet family `augment_imagenet_batch` with the mean/std of `preprocessing` (colour jitter and
    normalisation of the uint8 crops the loader workers made); with in-memory CIFAR images `augment_cifar_batch`;
    else None (the per-sample transform already augmented the images). The imagenet family's evaluation splits
    are uint8 as well: the function normalises them (`train=False`), in `MislasTrainer`'s evaluation and in
    `float32_evaluation_trainer`."""
    if benchmark.family == "imagenet":
        options = preprocessing(data_args, benchmark, plan)
        return functools.partial(augment_imagenet_batch, mean=options["mean"], std=options["std"])
    return augment_cifar_batch if data_args.uses_in_memory_images(benchmark.family) else None


def group_options(data_args: DataArguments, benchmark) -> dict:
    """The config entries that define Many/Medium/Few: the benchmark's class-index boundaries, or for your own
    data (no boundaries) the count thresholds."""
    return dict(
        class_group_boundaries=benchmark.class_group_boundaries,
        many_shot_threshold=data_args.many_shot_threshold,
        few_shot_threshold=data_args.few_shot_threshold,
    )


def build_model(
    model_args: ModelArguments, plan: ModelPlan, benchmark, counts: list[int], data_args: DataArguments
) -> MislasForImageClassification:
    """The stage-1 model of `plan`: new, from a MiSLAS checkpoint (its classifier replaced when the classes differ),
    or a new model whose backbone is a transformers ResNet checkpoint's (`load_resnet_backbone`; new classifier)."""
    labels = dict(enumerate(benchmark.class_names))
    config_kwargs = dict(
        num_labels=len(labels),
        id2label=labels,
        class_counts=counts,
        extra_block=plan.extra_block,
        freeze_backbone=plan.freeze_backbone,
        **group_options(data_args, benchmark),
    )
    if plan.source == "mislas":
        return MislasForImageClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=True, **config_kwargs
        )
    model = MislasForImageClassification(MislasConfig(backbone=plan.backbone, **config_kwargs))
    if plan.source == "resnet":
        resnet = ResNetModel.from_pretrained(model_args.model_name_or_path)
        left_out = load_resnet_backbone(model.mislas, resnet)
        if left_out:
            logger.warning(
                f"{plan.backbone} has fewer blocks than {model_args.model_name_or_path}: "
                f"{len(left_out)} tensors of the checkpoint are not used, e.g. resnet.{left_out[0]}"
            )
    return model


def load_stage1_model(path: str, benchmark, counts: list[int], data_args: DataArguments) -> MislasForImageClassification:
    """The stage-1 model stage 2 starts from, checked against the data before any compute is spent."""
    model = MislasForImageClassification.from_pretrained(path)
    if model.config.num_labels != len(benchmark.class_names):
        raise ValueError(
            f"The stage-1 model {path} has {model.config.num_labels} classes but {benchmark.name} has "
            f"{len(benchmark.class_names)}: pass a stage-1 model trained on this data (--model_name_or_path)."
        )
    model.config.class_counts = counts
    for name, value in group_options(data_args, benchmark).items():
        setattr(model.config, name, value)
    return model


def report(trainer: Trainer, test_dataset, output_dir: str, benchmark, config_yaml: str | None, model_id: str) -> dict:
    """Evaluate on the test set and write `eval_results.json`, the reliability diagram and the model card
    (`model_id`: the Hub repo id its loading snippets use).

    The numbers are those of the float32 model, as `from_pretrained` and the pipeline give it to users, whatever
    precision trained it: Accelerate's autocast wrapper is taken off the trained model first (training is over)."""
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    prediction = trainer.predict(test_dataset, metric_key_prefix="eval")
    metrics = prediction.metrics
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics, combined=False)
    if trainer.is_world_process_zero():
        logits = torch.as_tensor(np.asarray(prediction.predictions)).double()
        probabilities = logits.softmax(-1)
        confidences, predicted = probabilities.max(-1)
        correct = predicted.numpy() == np.asarray(prediction.label_ids)
        model = trainer.model
        title = f"{benchmark.name}, stage {model.config.stage}"
        reliability_diagram(confidences.numpy(), correct, os.path.join(output_dir, DIAGRAM_FILENAME), title=title)
        write_model_card(
            output_dir,
            model_config=model.config,
            metrics=metrics,
            dataset_id=benchmark.dataset_id or benchmark.name,
            dataset_name=benchmark.name
            + (f" (imbalance factor {benchmark.imbalance_factor:g})" if benchmark.imbalance_factor else ""),
            model_id=model_id,
            training_config_yaml=config_yaml,
            diagram_filename=DIAGRAM_FILENAME,
            paper_metrics=PAPER_RESULTS.get((benchmark.name, benchmark.imbalance_factor))
            if benchmark.name in BENCHMARKS
            else None,
            provenance=f"Measured by mislas_hf on the {benchmark.evaluation_split} split of {benchmark.name} "
            f"({len(correct)} images).",
        )
    trainer.accelerator.wait_for_everyone()
    return metrics


def save_stage(trainer: Trainer, image_processor, output_dir: str) -> None:
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        image_processor.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def checkpoint_to_resume(stage_args: MislasTrainingArguments) -> str | None:
    """`--resume_from_checkpoint PATH` resumes the stage whose folder holds PATH; for the other stages, and with
    `--resume_from_checkpoint true`, each stage resumes from the last checkpoint in its folder if there is one (a
    stage that had finished then only re-saves and re-evaluates)."""
    requested = stage_args.resume_from_checkpoint
    if requested is None:
        return None
    stage_dir = Path(stage_args.output_dir).resolve()
    if str(requested).lower() not in ("true", "last") and stage_dir in Path(requested).resolve().parents:
        return str(requested)
    return get_last_checkpoint(str(stage_dir)) if stage_dir.is_dir() else None


def finished_state(checkpoint: str) -> TrainerState | None:
    """The `TrainerState` of `checkpoint` if its stage had trained all its steps (a stage that finished before the
    run was interrupted), else None."""
    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    return state if 0 < state.max_steps <= state.global_step else None


def run_stage(
    stage: int, model, args, train, validation, test, image_processor, benchmark, config_yaml, batch_augmentation=None
) -> dict:
    """Train one stage (resuming when asked), save it and report on the test set. Selection of the best epoch,
    when enabled, uses the held-out validation split only. `batch_augmentation`: see `train_batch_augmentation`."""
    stage_args = stage_arguments(args, stage)
    if stage_args.load_best_model_at_end and validation is None:
        raise ValueError(
            "load_best_model_at_end needs --validation_split_percentage: the best epoch is never chosen on the test set."
        )
    if stage_args.process_index == 0:
        global_batch = stage_args.per_device_train_batch_size * stage_args.world_size
        learning_rates = f"learning rate {stage_args.learning_rate:g}"
        if stage == 2:
            learning_rates += f" (ΔW and b: {stage_args.learning_rate * stage_args.delta_lr_ratio:g})"
        logger.warning(
            f"stage {stage}: global batch {global_batch * stage_args.gradient_accumulation_steps} = "
            f"{stage_args.per_device_train_batch_size} per device x {stage_args.world_size} processes x "
            f"{stage_args.gradient_accumulation_steps} accumulation steps, {learning_rates}"
        )
    trainer = MislasTrainer(
        model=model,
        args=stage_args,
        train_dataset=train,
        eval_dataset=validation if validation is not None else test,
        processing_class=image_processor,
        batch_augmentation=batch_augmentation,
    )
    checkpoint = checkpoint_to_resume(stage_args)
    finished = finished_state(checkpoint) if checkpoint is not None else None
    if finished is not None:
        # The Trainer, resumed at its last step in the middle of an epoch, would train one step more.
        model.load_state_dict(load_file(os.path.join(checkpoint, "model.safetensors")))
        trainer.state = finished
    else:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_metrics("train", result.metrics, combined=False)
    trainer.save_state()
    save_stage(trainer, image_processor, stage_args.output_dir)
    return report(
        trainer, test, stage_args.output_dir, benchmark, config_yaml,
        model_id=args.hub_model_id or Path(args.output_dir).resolve().name,
    )


def train(model_args: ModelArguments, data_args: DataArguments, args: MislasTrainingArguments, config_yaml=None):
    """Run stage 1, stage 2, or both; returns the metrics per stage and writes `all_results.json`."""
    if args.stage == "2" and not model_args.model_name_or_path:
        raise ValueError("--stage 2 needs --model_name_or_path: the stage-1 model (folder or Hub id) to start from.")
    use_cpu_cores(args)
    set_seed(args.seed)
    plan = plan_model(model_args, args.stage)
    benchmark, counts, train_set, validation, test = load_splits(data_args, args, plan)
    held_out_split = held_out_split_record(data_args, args, benchmark, validation)
    image_processor = make_image_processor(benchmark.family, **preprocessing(data_args, benchmark, plan))
    stages = [1, 2] if args.stage == "both" else [int(args.stage)]
    results = {}
    stage2_start = os.path.join(args.output_dir, "stage1") if args.stage == "both" else model_args.model_name_or_path
    if args.stage == "2":
        stage1_model = load_stage1_model(stage2_start, benchmark, counts, data_args)  # fail early on a mismatch
        if held_out_split is not None and stage1_model.config.held_out_split != held_out_split:
            raise ValueError(
                f"--validation_split_percentage {data_args.validation_split_percentage} with --seed {args.seed} holds "
                f"out other images than the stage-1 model {stage2_start} was trained without "
                f"(its config.held_out_split: {stage1_model.config.held_out_split}): the held-out images would not be "
                "unseen. Pass the stage-1 run's --validation_split_percentage, --seed and data options."
            )
    for stage in stages:
        set_seed(args.seed)
        if stage == 1:
            model = build_model(model_args, plan, benchmark, counts, data_args)
        else:
            model = load_stage1_model(stage2_start, benchmark, counts, data_args)
        model.config.held_out_split = held_out_split
        results[f"stage{stage}"] = run_stage(
            stage,
            model,
            args,
            train_set,
            validation,
            test,
            image_processor,
            benchmark,
            config_yaml,
            batch_augmentation=train_batch_augmentation(data_args, benchmark, plan),
        )
    if args.process_index == 0:
        Path(args.output_dir, "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
        if args.push_to_hub:
            final_dir = os.path.join(args.output_dir, f"stage{stages[-1]}")
            push_model_folder(
                final_dir,
                repo_id=args.hub_model_id or Path(args.output_dir).name,
                commit_message=f"MiSLAS {benchmark.name}, stage {stages[-1]}",
                private=args.hub_private_repo,
                token=args.hub_token,
            )
    return results


def float32_evaluation_trainer(
    model, args: MislasTrainingArguments, benchmark, counts: list[int], batch_augmentation=None
) -> DeviceBatchTrainer:
    """A plain `Trainer` (a `DeviceBatchTrainer`: uint8 batches go through `batch_augmentation`, see
    `train_batch_augmentation`) that evaluates a saved model in float32 (as `report` says) with the package's
    metrics; the model's config gets the benchmark's class counts and Many/Medium/Few boundaries where it has none."""
    if model.config.class_counts is None:
        model.config.class_counts = counts
    if model.config.class_group_boundaries is None:
        model.config.class_group_boundaries = benchmark.class_group_boundaries
    return DeviceBatchTrainer(
        model=model,
        args=dataclasses.replace(args, push_to_hub=False, bf16=False, fp16=False),
        batch_augmentation=batch_augmentation,
        compute_metrics=compute_metrics(
            model.config.class_counts,
            model.config.class_group_boundaries,
            many_threshold=model.config.many_shot_threshold,
            few_threshold=model.config.few_shot_threshold,
        ),
    )


def evaluate(model_path: str, data_args: DataArguments, args: MislasTrainingArguments):
    """Evaluate a saved model (folder or Hub id) on the benchmark's test split: metrics, diagram, card."""
    use_cpu_cores(args)
    plan = plan_model(ModelArguments(model_name_or_path=model_path), stage="2")
    benchmark, counts, _, _, test = load_splits(data_args, args, plan)
    model = MislasForImageClassification.from_pretrained(model_path)
    if model.config.num_labels != len(benchmark.class_names):
        raise ValueError(
            f"{model_path} has {model.config.num_labels} classes but {benchmark.name} has "
            f"{len(benchmark.class_names)}: evaluate it on the benchmark it was trained on (--dataset)."
        )
    trainer = float32_evaluation_trainer(
        model, args, benchmark, counts, train_batch_augmentation(data_args, benchmark, plan)
    )
    metrics = report(trainer, test, args.output_dir, benchmark, None, model_id=args.hub_model_id or model_path)
    if args.push_to_hub and args.process_index == 0:
        model.save_pretrained(args.output_dir)
        make_image_processor(benchmark.family, **preprocessing(data_args, benchmark, plan)).save_pretrained(
            args.output_dir
        )
        push_model_folder(
            args.output_dir,
            repo_id=args.hub_model_id,
            commit_message=f"Evaluation on {benchmark.name}",
            private=args.hub_private_repo,
            token=args.hub_token,
        )
    return metrics


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


def check_calibration_data(
    calibration_args: CalibrationArguments, model_config, data_args: DataArguments
) -> DataArguments:
    """Refuse, before any image is read, to fit on the test or training split, or on a hold-out other than the one
    recorded in `model_config.held_out_split`. Returns the data options that rebuild the recorded hold-out."""
    name = calibration_args.validation_split_name
    if name is not None:
        if name in ("test", "train"):
            why = "the test split only measures the calibrated model" if name == "test" else "the model was trained on it"
            raise ValueError(
                f"--validation_split_name {name}: temperatures are fit on held-out images only, never on the {name} "
                f"split ({why}). Leave --validation_split_name unset to use the --validation_split_percentage hold-out "
                "recorded when the model was trained, or name a separate validation split."
            )
        if data_args.validation_split_percentage:
            raise ValueError(
                "--validation_split_name and --validation_split_percentage both name held-out images: pass one of them."
            )
        return data_args
    record = model_config.held_out_split
    if record is None:
        raise ValueError(
            f"{calibration_args.model} records no held-out split: it was trained without --validation_split_percentage, "
            "so every training image may have been seen. Retrain with --validation_split_percentage 10, or pass "
            "--validation_split_name NAME of a held-out split of the data (never the test split)."
        )
    if data_args.validation_split_percentage not in (None, record["percentage"]):
        raise ValueError(
            f"--validation_split_percentage {data_args.validation_split_percentage} differs from the "
            f"{record['percentage']}% hold-out recorded in the model's config: leave it unset (the recorded one is used)."
        )
    given = {"dataset": data_args.dataset, "imbalance_factor": data_args.imbalance_factor, "split_seed": data_args.split_seed}
    for option, value in given.items():  # an unset --imbalance_factor takes the benchmark's default: counts check it
        if value != record[option] and not (option == "imbalance_factor" and value is None):
            raise ValueError(
                f"--{option} {value} differs from the {record[option]!r} the model was trained with "
                f"(config.held_out_split): pass the training run's data options so the hold-out is the same images."
            )
    return dataclasses.replace(data_args, validation_split_percentage=record["percentage"])


def calibrate(calibration_args: CalibrationArguments, data_args: DataArguments, args: MislasTrainingArguments):
    """Fit a temperature (scalar or class-wise) on held-out images, store it in the model, evaluate the calibrated
    model on the test split and write the folder: weights, config, image processor, `eval_results.json`,
    reliability diagram, card. Returns the test metrics."""
    if calibration_args.method not in CALIBRATION_METHODS:
        raise ValueError(f"--method {calibration_args.method!r} is not one of {', '.join(CALIBRATION_METHODS)}.")
    use_cpu_cores(args)
    model = MislasForImageClassification.from_pretrained(calibration_args.model)
    data_args = check_calibration_data(calibration_args, model.config, data_args)
    record = model.config.held_out_split
    # the recorded seed rebuilds the hold-out (and draws the same --max_eval_samples test subset as the training run)
    split_args = dataclasses.replace(args, seed=record["seed"]) if calibration_args.validation_split_name is None else args
    plan = plan_model(ModelArguments(model_name_or_path=calibration_args.model), stage="2")
    benchmark, counts, _, validation, test = load_splits(
        data_args, split_args, plan, calibration_args.validation_split_name
    )
    if model.config.num_labels != len(benchmark.class_names):
        raise ValueError(
            f"{calibration_args.model} has {model.config.num_labels} classes but {benchmark.name} has "
            f"{len(benchmark.class_names)}: calibrate it on the benchmark it was trained on (--dataset)."
        )
    held_out_counts = class_counts(validation, num_classes=len(benchmark.class_names))
    if calibration_args.validation_split_name is None and held_out_counts != record["class_counts"]:
        differing = [k for k, (a, b) in enumerate(zip(held_out_counts, record["class_counts"])) if a != b]
        raise ValueError(
            f"the rebuilt hold-out has other images than the recorded one (held-out images per class differ for "
            f"classes {differing[:10]}): pass the training run's data options (--dataset_name, --data_dir, lists)."
        )
    model.config.temperature, model.config.calibration = 1.0, None  # fit on the head's own logits
    trainer = float32_evaluation_trainer(
        model, args, benchmark, counts, train_batch_augmentation(data_args, benchmark, plan)
    )
    prediction = trainer.predict(validation, metric_key_prefix="validation")
    logits, labels = np.asarray(prediction.predictions, dtype=np.float64), np.asarray(prediction.label_ids)
    if calibration_args.method == "temperature":
        temperature = fit_temperature(logits, labels)
        scaled = logits / temperature
    else:
        temperature = fit_classwise_temperatures(logits, labels, calibration_args.classwise_regularization).tolist()
        scaled = logits / np.asarray(temperature)
    if calibration_args.validation_split_name is None:
        fit_on = (
            f"the {record['percentage']:g}% per-class hold-out of the {benchmark.name} training set (seed "
            f"{record['seed']}) that training left out, {len(labels)} images"
        )
    else:
        fit_on = f"the '{calibration_args.validation_split_name}' split of {benchmark.name}, {len(labels)} images"
    model.config.temperature = temperature
    model.config.calibration = {
        "method": calibration_args.method,
        "fit_on": fit_on,
        "held_out_images": len(labels),
        "uncalibrated_model": calibration_args.model,
        "held_out_nll_before": negative_log_likelihood(logits, labels),
        "held_out_nll_after": negative_log_likelihood(scaled, labels),
        **({"regularization": calibration_args.classwise_regularization}
           if calibration_args.method == "classwise_temperature" else {}),
    }
    logger.info(f"fitted {calibration_args.method} on {fit_on}: T = {temperature}")
    os.makedirs(args.output_dir, exist_ok=True)
    metrics = report(trainer, test, args.output_dir, benchmark, None,
                     model_id=args.hub_model_id or Path(args.output_dir).resolve().name)
    if trainer.is_world_process_zero():
        model.save_pretrained(args.output_dir)
        make_image_processor(benchmark.family, **preprocessing(data_args, benchmark, plan)).save_pretrained(
            args.output_dir
        )
        if args.push_to_hub:
            push_model_folder(
                args.output_dir,
                repo_id=args.hub_model_id or Path(args.output_dir).name,
                commit_message=f"{calibration_args.method} fit on {fit_on}",
                private=args.hub_private_repo,
                token=args.hub_token,
            )
    return metrics
