"""The paper's benchmarks by name: one typed registry (`BENCHMARKS`: source, preprocessing, Many/Medium/Few split,
class names, the reference's training setting, the paper's results), and `load_benchmark`, which loads one as a
`LongTailedBenchmark` of `datasets.Dataset` splits.

* CIFAR-10-LT / CIFAR-100-LT: the balanced CIFAR training set cut to the long-tailed profile (`long_tail`); the test
  set stays balanced.
* ImageNet-LT, Places-LT, iNaturalist 2018: the official split lists (`list_files`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from .labels import class_counts
from .list_files import load_list_file_dataset
from .long_tail import make_long_tailed
from .preprocessing import INATURALIST_MEAN, INATURALIST_STD, Preprocessing

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trolleybus tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark of the paper: where its data comes from, how the reference preprocesses, trains and evaluates
    it, and what the paper reports on it (see `BENCHMARKS`).

    `display_name`: its name in the paper. `preprocessing`: the reference's transforms. `hub_id` (CIFAR) with its
    `image_column` / `label_column`, or the official `train_list` / `test_list`. `class_group_boundaries` (a, b):
    Many = classes [0, a), Medium = [a, b), Few = [b, K). `class_names`: where the source has them (CIFAR).
    `cifar_images_per_class`: CIFAR's images per class before the long-tailed cut. `reference_backbones`: the
    backbones of the reference's configs (the first is its default); `extra_block` / `freeze_backbone`: its Places-LT
    recipe. `paper_results`: MiSLAS's published numbers (fractions and their `source`), keyed by imbalance factor
    (None where the split lists fix the profile).
    """

    display_name: str
    preprocessing: Preprocessing
    num_classes: int
    class_group_boundaries: tuple[int, int]
    reference_backbones: tuple[str, ...]
    paper_results: Mapping[float | None, Mapping[str, float | str]]
    hub_id: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    train_list: str | None = None
    test_list: str | None = None
    class_names: tuple[str, ...] | None = None
    cifar_images_per_class: int | None = None
    extra_block: bool = False
    freeze_backbone: bool = False


TABLE_4 = "Zhong et al. (CVPR 2021), Table 4"
TABLE_5 = "Zhong et al. (CVPR 2021), Table 5 (top-1, ECE) and Table {} (Many / Medium / Few), {}"

# `class_group_boundaries` are the `head/med/tail_class_idx` of the reference configs; the published Many/Medium/Few
# numbers use them. They are not the paper's thresholds (> 100 / 20-100 / < 20 training images, Appendix A), which
# `class_group_boundaries=None` applies. Classes per group, thresholds vs. these index ranges, on the training counts:
#   CIFAR-10-LT   IF 10: 10/0/0 vs 3/4/3;   IF 50: 9/1/0 vs 3/4/3;     IF 100: 8/2/0 vs 3/4/3
#   CIFAR-100-LT  IF 10: 69/31/0 vs 36/35/29; IF 50: 41/41/18 vs 36/35/29; IF 100: 35/35/30 vs 36/35/29
#   Places-LT (official list): 131/163/71 vs 131/157/77 (the index ranges put the six 20-image classes in Few)
# ImageNet-LT and iNaturalist 2018 are not counted here (their training lists are not in the test data).
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "cifar10-lt": BenchmarkSpec(
        "CIFAR-10-LT", Preprocessing.reference("cifar"), 10, (3, 7), ("resnet32",),
        {
            100: {"accuracy": 0.821, "ece": 0.0370, "source": TABLE_4},
            50: {"accuracy": 0.857, "ece": 0.0217, "source": TABLE_4},
            10: {"accuracy": 0.900, "ece": 0.0120, "source": TABLE_4},
        },
        hub_id="uoft-cs/cifar10", image_column="img", label_column="label", class_names=CIFAR10_CLASSES,
        cifar_images_per_class=5000,
    ),
    "cifar100-lt": BenchmarkSpec(
        "CIFAR-100-LT", Preprocessing.reference("cifar"), 100, (36, 71), ("resnet32",),
        {
            100: {"accuracy": 0.470, "ece": 0.0483, "source": TABLE_4},
            50: {"accuracy": 0.523, "ece": 0.0225, "source": TABLE_4},
            10: {"accuracy": 0.632, "ece": 0.0173, "source": TABLE_4},
        },
        hub_id="uoft-cs/cifar100", image_column="img", label_column="fine_label", class_names=CIFAR100_CLASSES,
        cifar_images_per_class=500,
    ),
    "imagenet-lt": BenchmarkSpec(
        "ImageNet-LT", Preprocessing.reference("imagenet"), 1000, (390, 835), ("resnet50", "resnet101", "resnet152"),
        {None: {"accuracy": 0.527, "ece": 0.0183, "many_accuracy": 0.617, "medium_accuracy": 0.513,
                "few_accuracy": 0.358, "source": TABLE_5.format(7, "ResNet-50")}},
        train_list="ImageNet_LT_train.txt", test_list="ImageNet_LT_test.txt",
    ),
    "places-lt": BenchmarkSpec(
        "Places-LT", Preprocessing.reference("imagenet"), 365, (131, 288), ("resnet152_places",),
        {None: {"accuracy": 0.404, "ece": 0.0359, "many_accuracy": 0.396, "medium_accuracy": 0.433,
                "few_accuracy": 0.361, "source": TABLE_5.format(9, "ResNet-152")}},
        train_list="Places_LT_train.txt", test_list="Places_LT_test.txt", extra_block=True, freeze_backbone=True,
    ),
    "inat2018": BenchmarkSpec(
        "iNaturalist 2018", Preprocessing.reference("imagenet", mean=INATURALIST_MEAN, std=INATURALIST_STD), 8142,
        (842, 4543), ("resnet50",),
        {None: {"accuracy": 0.716, "ece": 0.0767, "many_accuracy": 0.732, "medium_accuracy": 0.724,
                "few_accuracy": 0.704, "source": TABLE_5.format(8, "ResNet-50")}},
        train_list="iNaturalist18_train.txt", test_list="iNaturalist18_val.txt",
    ),
}
"""The benchmarks of the paper (Sec. 4.1), by the `--dataset` name: CIFAR from the Hub (or a local parquet copy),
the others from split lists; with the paper's MiSLAS results (Table 4; Table 5 with Tables 7-9)."""


@dataclass(frozen=True)
class LongTailedBenchmark:
    """A loaded benchmark: the splits plus what a trainer needs to know about them.

    `splits`: `DatasetDict` with `train` (long-tailed) and `test`, columns `image` and `label`. `class_counts`:
    training images per class. `class_group_boundaries`: `(a, b)`, the reference's Many = [0, a), Medium = [a, b),
    Few = [b, K) class-index split (see `BENCHMARKS`). `imbalance_factor` is None for list-file benchmarks.
    `preprocessing`: how its images are preprocessed (the benchmark's, or for your own data the backbone's).
    Your own data (`own.load_own_dataset`) has no `class_group_boundaries` (Many/Medium/Few follow count thresholds);
    `dataset_id` is the Hub id of the source (None for local files), `evaluation_split` says what `test` holds (the
    source's `test` or `validation` split, or a held-out fraction of the training set) and `kept_whole_classes` the
    classes too small to give an image to that held-out part.
    """

    name: str
    preprocessing: Preprocessing
    splits: datasets.DatasetDict
    class_counts: list[int]
    class_names: list[str]
    class_group_boundaries: tuple[int, int] | None
    imbalance_factor: float | None
    dataset_id: str | None = None
    evaluation_split: str = "test"
    kept_whole_classes: tuple[int, ...] = ()


def _canonical_columns(split: datasets.Dataset, spec: BenchmarkSpec, source: str) -> datasets.Dataset:
    """Keep only the image and label columns of a Hub/parquet split, renamed to `image` and `label`."""
    chosen = []
    for preferred, canonical in ((spec.image_column, "image"), (spec.label_column, "label")):
        column = next((c for c in (preferred, canonical) if c in split.column_names), None)
        if column is None:
            raise ValueError(
                f"{source} has columns {split.column_names}, none of them '{preferred}' or '{canonical}': "
                f"pass a copy of {spec.hub_id} with its original columns"
            )
        chosen.append((column, canonical))
    split = split.select_columns([column for column, _ in chosen])
    return split.rename_columns({column: canonical for column, canonical in chosen if column != canonical})


def _load_hub_or_parquet(name: str, spec: BenchmarkSpec, dataset_name: str | None) -> datasets.DatasetDict:
    """Load a CIFAR benchmark's raw splits from the Hub id, or from `dataset_name` (Hub id or local folder)."""
    source = dataset_name or spec.hub_id
    if source.startswith(("/", ".", "~")) or os.path.isdir(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset_name {source}: folder not found; pass a folder holding the parquet files")
        source = str(folder)
    try:
        raw = datasets.load_dataset(source)
    except ConnectionError as err:
        raise ConnectionError(
            f"cannot reach the Hugging Face Hub to load '{source}' for {name} ({err}). Use a local copy: download "
            f"it once where there is network (`hf download {source} --repo-type dataset --local-dir "
            f"/path/to/{name}`), then pass `--dataset_name /path/to/{name}` (dataset_name='/path/to/{name}', a "
            f"folder with the train/test parquet files)"
        ) from err
    for split in ("train", "test"):
        if split not in raw:
            raise ValueError(f"{source} has splits {list(raw)}: {name} needs a 'train' and a 'test' split")
    return datasets.DatasetDict({split: _canonical_columns(raw[split], spec, source) for split in ("train", "test")})


def load_benchmark(
    name: str,
    imbalance_factor: float = 100,
    dataset_name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    train_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    check_files: bool = True,
) -> LongTailedBenchmark:
    """Load a benchmark of `BENCHMARKS` by name ("cifar10-lt", "cifar100-lt", "imagenet-lt", "places-lt", "inat2018").

    CIFAR: from the Hub id (`uoft-cs/cifar10`, `uoft-cs/cifar100`) or from `dataset_name`, a Hub id or a local folder
    of parquet files (as `--dataset_name` of transformers' run_image_classification.py); the training split is cut
    by `make_long_tailed(imbalance_factor, seed=seed)`, the test split stays balanced. `ConnectionError` when the
    Hub cannot be reached, saying how to pass a local copy.
    List-file benchmarks: `data_dir` is the image root; the split lists default to the reference's file names
    (e.g. `Places_LT_train.txt`) inside `data_dir` unless `train_list`/`test_list` are given; `imbalance_factor` and
    `seed` do not apply (the lists fix the profile). See `load_list_file_dataset` for `check_files`.
    """
    key = name.lower()
    if key not in BENCHMARKS:
        raise ValueError(f"benchmark '{name}' is unknown: use one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[key]
    if spec.hub_id is not None:
        if data_dir is not None or train_list is not None or test_list is not None:
            raise ValueError(
                f"{key} is loaded from parquet files: pass a local copy as dataset_name (a folder of parquet files), "
                f"not data_dir/train_list/test_list"
            )
        raw = _load_hub_or_parquet(key, spec, dataset_name)
        splits = datasets.DatasetDict(
            {"train": make_long_tailed(raw["train"], imbalance_factor, seed=seed), "test": raw["test"]}
        )
        factor = imbalance_factor
    else:
        if dataset_name is not None:
            raise ValueError(f"{key} is read from split lists: pass the image root as data_dir, not dataset_name")
        if data_dir is None:
            raise ValueError(
                f"{key} needs data_dir: the image root its split lists ({spec.train_list}, {spec.test_list}) are "
                f"relative to (the lists are looked up there unless train_list/test_list are given)"
            )
        splits = load_list_file_dataset(
            train_list if train_list is not None else Path(data_dir) / spec.train_list,
            test_list if test_list is not None else Path(data_dir) / spec.test_list,
            data_dir,
            check_files=check_files,
        )
        factor = None
    counts = class_counts(splits["train"])
    label_feature = splits["train"].features["label"]
    is_class_label = isinstance(label_feature, datasets.ClassLabel)
    class_names = list(label_feature.names) if is_class_label else [str(c) for c in range(len(counts))]
    return LongTailedBenchmark(
        name=key,
        preprocessing=spec.preprocessing,
        splits=splits,
        class_counts=counts,
        class_names=class_names,
        class_group_boundaries=spec.class_group_boundaries,
        imbalance_factor=factor,
        dataset_id=spec.hub_id,
    )
