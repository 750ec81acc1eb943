"""Long-tailed data for MiSLAS as `datasets.Dataset` objects.

* `benchmarks`: the paper's benchmarks by name (CIFAR-LT cut, ImageNet-LT / Places-LT / iNaturalist split lists).
* `own`: your own data as it is (any `datasets` source or imagefolders; natural class counts; held-out split).
* `labels`: labels and class counts read without decoding images; class-proportional subsets.
* `transforms`: training / evaluation transforms per family (per image in loader workers, per batch on the
  training device), the in-memory CIFAR path.
* `image_processing`: normalisation statistics and the image processor saved with a model.

This package does not import the model or the trainer.
"""

from .benchmarks import (
    BENCHMARKS,
    PROFILES,
    BenchmarkSpec,
    LongTailedBenchmark,
    class_order_by_count,
    load_benchmark,
    load_list_file_dataset,
    long_tailed_class_counts,
    make_long_tailed,
    read_list_file,
    reference_class_order,
)
from .image_processing import (
    CIFAR_MEAN,
    CIFAR_STD,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NORMALIZATION,
    FAMILIES,
    INATURALIST_MEAN,
    INATURALIST_STD,
    RESIZE_RATIO,
    make_image_processor,
    preprocessing_of,
)
from .labels import class_counts, dataset_labels, label_feature, stratified_holdout, subset
from .own import check_images_decode, load_own_dataset
from .transforms import (
    CIFAR_CROP_PADDING,
    CIFAR_IMAGE_SHAPE,
    COLOUR_JITTER,
    IMAGENET_CROP_RATIO,
    IMAGENET_CROP_SCALE,
    BatchImageTransform,
    ImageNetTransform,
    InMemoryCifarTransform,
    augment_cifar_batch,
    augment_imagenet_batch,
    decode_cifar_images,
    decode_rgb,
    make_transform,
    with_encoded_images,
)

__all__ = [
    "BENCHMARKS",
    "CIFAR_CROP_PADDING",
    "CIFAR_IMAGE_SHAPE",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "COLOUR_JITTER",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NORMALIZATION",
    "FAMILIES",
    "IMAGENET_CROP_RATIO",
    "IMAGENET_CROP_SCALE",
    "INATURALIST_MEAN",
    "INATURALIST_STD",
    "RESIZE_RATIO",
    "PROFILES",
    "BatchImageTransform",
    "BenchmarkSpec",
    "ImageNetTransform",
    "InMemoryCifarTransform",
    "LongTailedBenchmark",
    "augment_cifar_batch",
    "augment_imagenet_batch",
    "check_images_decode",
    "class_counts",
    "class_order_by_count",
    "dataset_labels",
    "decode_cifar_images",
    "decode_rgb",
    "label_feature",
    "load_benchmark",
    "load_list_file_dataset",
    "load_own_dataset",
    "long_tailed_class_counts",
    "make_image_processor",
    "make_long_tailed",
    "make_transform",
    "preprocessing_of",
    "read_list_file",
    "reference_class_order",
    "stratified_holdout",
    "subset",
    "with_encoded_images",
]
