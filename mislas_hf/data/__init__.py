"""Long-tailed data for MiSLAS as `datasets.Dataset` objects.

* `benchmarks`: the paper's benchmarks, one typed registry (`BENCHMARKS`) and `load_benchmark`.
* `long_tail`: the long-tailed cut of a balanced dataset (CIFAR-LT).
* `list_files`: the official split lists of ImageNet-LT / Places-LT / iNaturalist 2018.
* `own`: your own data as it is (any `datasets` source or imagefolders; natural class counts; held-out split).
* `labels`: labels and class counts read without decoding images; class-proportional subsets.
* `preprocessing`: `Preprocessing` (size, resize, crop, mean/std, resample, augmentation), apart from the
  architecture, and the image processor saved with a model.
* `transforms`: per-image training / evaluation transforms, run in the loader workers.
* `device_augment`: the batch part of the augmentation, on the training device.
* `gpu_decode`: the `imagenet` augmentation's JPEGs decoded, cropped and augmented on a GPU.
* `in_memory`: CIFAR images decoded once into memory.
* `test_priors`: test subsets with shifted class priors (the test-agnostic protocol of LADE / SADE).

This package does not import the model or the trainer.
"""

from .benchmarks import BENCHMARKS, BenchmarkSpec, LongTailedBenchmark, load_benchmark
from .device_augment import CIFAR_CROP_PADDING, COLOUR_JITTER, augment_cifar_batch, augment_imagenet_batch
from .gpu_decode import EncodedImageBatch, EncodedImageTransform, augment_imagenet_images, collate_image_batch
from .in_memory import CIFAR_IMAGE_SHAPE, InMemoryCifarTransform, decode_cifar_images
from .labels import class_counts, dataset_labels, label_feature, stratified_holdout, subset
from .list_files import class_order_by_count, load_list_file_dataset, read_list_file, reference_class_order
from .long_tail import PROFILES, long_tailed_class_counts, make_long_tailed
from .own import check_images_decode, load_own_dataset
from .preprocessing import (
    AUGMENTATIONS,
    CIFAR_MEAN,
    CIFAR_STD,
    INATURALIST_MEAN,
    INATURALIST_STD,
    RESIZE_RATIO,
    Preprocessing,
)
from .test_priors import TEST_PRIOR_DIRECTIONS, TEST_PRIOR_IMBALANCE_FACTORS, shifted_test_subset, shifted_test_subsets
from .transforms import (
    IMAGENET_CROP_RATIO,
    IMAGENET_CROP_SCALE,
    BatchImageTransform,
    ImageNetTransform,
    decode_rgb,
    make_transform,
    with_encoded_images,
)

__all__ = [
    "AUGMENTATIONS",
    "BENCHMARKS",
    "CIFAR_CROP_PADDING",
    "CIFAR_IMAGE_SHAPE",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "COLOUR_JITTER",
    "IMAGENET_CROP_RATIO",
    "IMAGENET_CROP_SCALE",
    "INATURALIST_MEAN",
    "INATURALIST_STD",
    "PROFILES",
    "RESIZE_RATIO",
    "TEST_PRIOR_DIRECTIONS",
    "TEST_PRIOR_IMBALANCE_FACTORS",
    "BatchImageTransform",
    "BenchmarkSpec",
    "EncodedImageBatch",
    "EncodedImageTransform",
    "ImageNetTransform",
    "InMemoryCifarTransform",
    "LongTailedBenchmark",
    "Preprocessing",
    "augment_cifar_batch",
    "augment_imagenet_batch",
    "augment_imagenet_images",
    "check_images_decode",
    "class_counts",
    "class_order_by_count",
    "collate_image_batch",
    "dataset_labels",
    "decode_cifar_images",
    "decode_rgb",
    "label_feature",
    "load_benchmark",
    "load_list_file_dataset",
    "load_own_dataset",
    "long_tailed_class_counts",
    "make_long_tailed",
    "make_transform",
    "read_list_file",
    "reference_class_order",
    "shifted_test_subset",
    "shifted_test_subsets",
    "stratified_holdout",
    "subset",
    "with_encoded_images",
]
