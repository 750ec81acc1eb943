"""The data of a job as the Trainer takes it: the benchmark or your own data with its preprocessing (`load_data`),
the splits with their transforms and the held-out split (`load_splits`), what the model's config records of that
hold-out (`held_out_split_record`), and the part of the augmentation that runs on the training device
(`train_batch_augmentation`)."""

import dataclasses
import functools
import logging

from ..data import (
    EncodedImageTransform,
    InMemoryCifarTransform,
    LongTailedBenchmark,
    Preprocessing,
    augment_cifar_batch,
    augment_imagenet_images,
    class_counts,
    decode_cifar_images,
    load_benchmark,
    load_own_dataset,
    make_transform,
    stratified_holdout,
    subset,
    with_encoded_images,
)
from ..training_args import MislasTrainingArguments
from .arguments import DataArguments
from .model_setup import ModelPlan

logger = logging.getLogger(__name__)


def load_data(data_args: DataArguments, plan: ModelPlan) -> LongTailedBenchmark:
    """The paper benchmark named by `data_args.dataset` with its preprocessing, or your own data as it is
    (`load_own_dataset`) with the model's (`ModelPlan.default_preprocessing`), as a `LongTailedBenchmark` with `train`
    and `test` splits. On a benchmark, a pretrained backbone other than the paper's ResNets (`plan.backbone_config`)
    gets its image processor's input size, mean/std and filter (`Preprocessing.with_inputs_of`). `--image_size`
    replaces the input size of any."""
    benchmark = _load_source(data_args, plan)
    preprocessing = benchmark.preprocessing
    if not data_args.own_data and plan.backbone_config is not None and plan.pretrained_preprocessing is not None:
        preprocessing = preprocessing.with_inputs_of(plan.pretrained_preprocessing)
    return dataclasses.replace(benchmark, preprocessing=preprocessing.replace(image_size=data_args.image_size))


def uses_in_memory_images(data_args: DataArguments, preprocessing: Preprocessing) -> bool:
    """Whether the splits are decoded once into memory (`DataArguments.uses_in_memory_images`): only for the CIFAR
    reference's 32x32 input with CIFAR's mean/std, which `augment_cifar_batch` implements; another input size or
    normalisation (`--image_size`, a pretrained backbone's) uses the per-sample transforms, and asking for in-memory
    images with it is a `ValueError`."""
    if not data_args.uses_in_memory_images(preprocessing.augmentation):
        return False
    reference = Preprocessing.reference("cifar")
    inputs = (preprocessing.image_size, preprocessing.mean, preprocessing.std)
    if inputs == (reference.image_size, reference.mean, reference.std):
        return True
    if data_args.in_memory_images:
        raise ValueError(
            f"in_memory_images augments 32x32 CIFAR images normalised with CIFAR's mean/std, and this run's input is "
            f"{preprocessing.image_size} px normalised with mean {list(preprocessing.mean)}: leave in_memory_images "
            "unset (the per-sample transforms resize and normalise as the preprocessing says)"
        )
    return False


def _load_source(data_args: DataArguments, plan: ModelPlan) -> LongTailedBenchmark:
    if data_args.own_data:
        benchmark = load_own_dataset(
            dataset_name=data_args.dataset_name,
            train_dir=data_args.train_dir,
            validation_dir=data_args.validation_dir,
            test_dir=data_args.test_dir,
            image_column=data_args.image_column_name,
            label_column=data_args.label_column_name,
            preprocessing=plan.default_preprocessing,
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


def load_splits(
    data_args: DataArguments, training_args: MislasTrainingArguments, plan: ModelPlan, validation_split_name=None
):
    """The data with transforms set, plus the held-out validation split when asked for: the
    `--validation_split_percentage` hold-out of the training set, or the split `validation_split_name` of the data.
    With in-memory images (`uses_in_memory_images`) the splits are decoded once; the training split
    then yields raw uint8 images, which the trainer augments on its device (`train_batch_augmentation`). Every split
    of the `imagenet` augmentation yields uint8 images, finished on the device by the same function; when the
    training device is a CUDA GPU, the JPEGs instead leave the workers encoded (`EncodedImageTransform`) and are
    decoded there (`data.gpu_decode`)."""
    benchmark = load_data(data_args, plan)
    preprocessing = benchmark.preprocessing
    train, test = benchmark.splits["train"], benchmark.splits["test"]
    validation = None
    if data_args.validation_split_percentage:
        train, validation, kept_whole = stratified_holdout(
            train, data_args.validation_split_percentage / 100, seed=training_args.seed
        )
        if kept_whole:
            names = [benchmark.class_names[c] for c in kept_whole]
            logger.warning(
                f"classes {names} are too small to give images to the validation split "
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
    if uses_in_memory_images(data_args, preprocessing):
        with training_args.main_process_first(desc="decoding images"):
            train, test = decode_cifar_images(train), decode_cifar_images(test)
            validation = decode_cifar_images(validation) if validation is not None else None
        train_transform, eval_transform = InMemoryCifarTransform(train=True), InMemoryCifarTransform(train=False)
    else:
        if preprocessing.augmentation == "imagenet":  # the transform decodes the files itself (torchvision for JPEG)
            train, test = with_encoded_images(train), with_encoded_images(test)
            validation = with_encoded_images(validation) if validation is not None else None
        if preprocessing.augmentation == "imagenet" and training_args.device.type == "cuda":
            # the workers only read the files; the GPU decodes and augments them (augment_imagenet_images)
            train_transform = eval_transform = EncodedImageTransform()
        else:
            train_transform = make_transform(preprocessing, train=True)
            eval_transform = make_transform(preprocessing, train=False)
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


def train_batch_augmentation(data_args: DataArguments, benchmark: LongTailedBenchmark):
    """`MislasTrainer`'s `batch_augmentation` for the training split of `load_splits`, which runs on the training
    device: for the `imagenet` augmentation `augment_imagenet_images` with the preprocessing (colour jitter and
    normalisation of the uint8 crops the loader workers made; on a CUDA device, where `load_splits` leaves the JPEGs
    encoded, their decoding, crop, resize and flip too); with in-memory CIFAR images
    `augment_cifar_batch`; else None (the per-sample transform already augmented the images). The `imagenet`
    evaluation splits are uint8 as well: the function normalises them (`train=False`), in `MislasTrainer`'s
    evaluation and in `float32_evaluation_trainer`."""
    preprocessing = benchmark.preprocessing
    if preprocessing.augmentation == "imagenet":
        return functools.partial(augment_imagenet_images, preprocessing=preprocessing)
    return augment_cifar_batch if uses_in_memory_images(data_args, preprocessing) else None
