"""Convert official MiSLAS checkpoints (dvlab-research/MiSLAS, `*.pth.tar`) and torchvision ImageNet backbones into
`save_pretrained` folders.

    python -m mislas_hf.convert --checkpoint model_best.pth.tar --dataset cifar10-lt --stage 2 --output_dir DIR \
        [--imbalance_factor 100] [--train_list Places_LT_train.txt] [--push_to_hub ORG/NAME]
    python -m mislas_hf.convert --backbone_checkpoint resnet152-f82ba261.pth --dataset places-lt --output_dir DIR

The reference training scripts save a dict with `epoch`, `best_acc1`, `its_ece`, `state_dict_model` (the backbone,
keys prefixed `module.` by DataParallel / DDP), `state_dict_classifier` (`fc.weight` [K, M], `fc.bias` [K]), in
stage 2 `state_dict_lws_model` (`learned_norm` [1, K], the scale s) and for Places-LT `state_dict_block` (one
bottleneck 2048 -> 512 -> 2048 on the last feature map). Stage-2 logits are `learned_norm * fc(features)`; the
reference trains `fc.weight` directly, so it already is W + ΔW of Eq. (4): the converted head has W = fc.weight,
ΔW = 0, b = fc.bias, s = learned_norm (s = 1 in stage 1). The backbone's depth is read from the checkpoint's keys:
ImageNet-LT checkpoints may be ResNet-50, -101 or -152 (paper Table 7); Places-LT's is `resnet152_places`, ResNet-152
without `layer4.2` (the reference's `resnet152_fe`), whose place the extra block takes.

`--backbone_checkpoint` converts a torchvision ResNet state dict (`torchvision.models.resnet152(weights=...)
.state_dict()` saved with `torch.save`) into the starting point of stage 1: the backbone's weights only, without
torchvision's `fc` and without the blocks the benchmark's backbone lacks (for Places-LT: `layer4.2`, as the reference
drops it). Training from that folder (`--model_name_or_path`) initialises the classifier and the extra block itself.

Every tensor is checked (names, shapes, finiteness) and loaded in memory first; the folder (weights as safetensors,
config, code files, image processor, model card) is written into a temporary folder beside `output_dir` and moved
into place only when complete. Checkpoints are read with `torch.load(weights_only=True)` (numbers saved as numpy
scalars, as the reference's `its_ece`, are allowed; nothing else that needs unpickling code).

Class ids. CIFAR-LT keeps CIFAR's class order (class 0 has the most images). ImageNet-LT, Places-LT and iNaturalist
2018 checkpoints number classes by training count, descending, with ties ordered by numpy 1.19's (unstable)
introsort, which the reference ran; `reference_class_order` reproduces that order, so `--train_list` (the official
training list) gives each class its original id, as label `orig_<id>`. Without it labels are `class_<k>`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .configuration_mislas import BACKBONES, PRETRAINED_SOURCE, MislasConfig
from .data import BENCHMARKS, class_order_by_count, long_tailed_class_counts, make_image_processor, read_list_file
from .hub import PAPER_RESULTS, push_model_folder, write_model_card
from .modeling_mislas import MislasForImageClassification

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
class ReferenceSetting:
    """How the reference trains one benchmark: backbone, classes, and its Many / Medium / Few index split
    (`head/med/tail_class_idx` of its configs)."""

    backbones: tuple[str, ...]  # the reference's backbones for the benchmark; the first is its default
    dataset_name: str
    cifar_images_per_class: int | None = None  # CIFAR: images per class before the long-tailed cut
    class_names: tuple[str, ...] | None = None
    extra_block: bool = False
    freeze_backbone: bool = False


SETTINGS = {
    "cifar10-lt": ReferenceSetting(("resnet32",), "CIFAR-10-LT", 5000, CIFAR10_CLASSES),
    "cifar100-lt": ReferenceSetting(("resnet32",), "CIFAR-100-LT", 500, CIFAR100_CLASSES),
    "imagenet-lt": ReferenceSetting(("resnet50", "resnet101", "resnet152"), "ImageNet-LT"),
    "inat2018": ReferenceSetting(("resnet50",), "iNaturalist 2018"),
    "places-lt": ReferenceSetting(("resnet152_places",), "Places-LT", extra_block=True, freeze_backbone=True),
}
"""How the reference trains each benchmark, by the `--dataset` name; classes, Hub id and the Many/Medium/Few split
come from `mislas_hf.data.BENCHMARKS`."""
DEFAULT_CIFAR_IMBALANCE_FACTOR = 100

LWS_SECTION, BLOCK_SECTION = "state_dict_lws_model", "state_dict_block"
MODEL_SECTION, CLASSIFIER_SECTION = "state_dict_model", "state_dict_classifier"

# Our parameter name -> (checkpoint section, reference name); `\d` groups are renumbered by `_reference_name`.
# transformers' ResNet layers number convolutions from 0 (`layer.0`), torchvision's Bottleneck from 1 (`conv1`).
_KEY_RULES = (
    (r"mislas\.embedder\.(conv1|bn1)\.(.+)", MODEL_SECTION, "{0}.{1}"),  # CIFAR stem
    (r"mislas\.encoder\.(layer\d\..+)", MODEL_SECTION, "{0}"),  # CIFAR stages
    (r"mislas\.embedder\.embedder\.convolution\.(.+)", MODEL_SECTION, "conv1.{0}"),
    (r"mislas\.embedder\.embedder\.normalization\.(.+)", MODEL_SECTION, "bn1.{0}"),
    (
        r"mislas\.encoder\.resnet_encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.(.+)",
        MODEL_SECTION,
        "layer{0+1}.{1}.conv{2+1}.{3}",
    ),
    (
        r"mislas\.encoder\.resnet_encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(.+)",
        MODEL_SECTION,
        "layer{0+1}.{1}.bn{2+1}.{3}",
    ),
    (
        r"mislas\.encoder\.resnet_encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.(.+)",
        MODEL_SECTION,
        "layer{0+1}.{1}.downsample.0.{2}",
    ),
    (
        r"mislas\.encoder\.resnet_encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(.+)",
        MODEL_SECTION,
        "layer{0+1}.{1}.downsample.1.{2}",
    ),
    (r"mislas\.extra_block\.layer\.(\d+)\.convolution\.(.+)", BLOCK_SECTION, "conv{0+1}.{1}"),
    (r"mislas\.extra_block\.layer\.(\d+)\.normalization\.(.+)", BLOCK_SECTION, "bn{0+1}.{1}"),
    (r"classifier\.(weight|bias)", CLASSIFIER_SECTION, "fc.{0}"),
    (r"classifier\.scale", LWS_SECTION, "learned_norm"),
)


def _reference_name(our_key: str) -> tuple[str, str] | None:
    """(checkpoint section, reference parameter name) of one of our state-dict keys; None for `delta_weight`,
    which the reference does not have."""
    for pattern, section, template in _KEY_RULES:
        match = re.fullmatch(pattern, our_key)
        if match:
            groups = match.groups()

            def fill(field: re.Match) -> str:
                index, plus_one = int(field.group(1)), field.group(2)
                return str(int(groups[index]) + 1) if plus_one else groups[index]

            return section, re.sub(r"\{(\d)(\+1)?\}", fill, template)
    if our_key == "classifier.delta_weight":
        return None
    raise KeyError(f"no reference name for {our_key}: mislas_hf.convert does not know this parameter")


def labels_from_train_list(train_list: str | os.PathLike, num_labels: int) -> tuple[list[int], dict[int, str]]:
    """Class counts in the reference's class order and `id2label` (`orig_<original id>`) from an official training
    list (`relative/path.jpg label` per line)."""
    _, original_ids = read_list_file(Path(train_list))
    if max(original_ids) >= num_labels:
        raise ValueError(
            f"{train_list} has class id {max(original_ids)} but the benchmark has {num_labels} classes: pass the "
            f"training list of the benchmark given by --dataset"
        )
    counts = np.bincount(original_ids, minlength=num_labels)
    order = class_order_by_count(original_ids, num_labels)
    return [int(counts[original]) for original in order], {k: f"orig_{original}" for k, original in enumerate(order)}


_NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_NUMPY_DTYPES += ("float16", "float32", "float64")


def _numpy_scalar_globals() -> list:
    """What unpickling a numpy scalar (the reference's `its_ece`) needs, for `torch.serialization.safe_globals`."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype] + [type(np.dtype(t)) for t in _NUMPY_DTYPES]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """`torch.load(path, map_location="cpu", weights_only=True)`, allowing numpy scalars; `ValueError` saying
    why when the file is not a checkpoint dict or needs unpickling of arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass the .pth.tar file saved by the MiSLAS scripts")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"(Unsupported global: GLOBAL \S+|Can only build [^\n]+)", str(error))
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True): it holds pickled objects other than tensors, "
            f"numbers and dicts ({found.group(1) if found else str(error).splitlines()[0]}). mislas_hf.convert does "
            f"not unpickle arbitrary code; if you trust the file, load it yourself and re-save only its state dicts "
            f"and numbers with torch.save."
        ) from error
    except Exception as error:  # truncated / not a torch file
        raise ValueError(f"{path} is not a readable torch checkpoint: {type(error).__name__}: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not the dict the MiSLAS scripts save (with "
            f"'{MODEL_SECTION}', '{CLASSIFIER_SECTION}', ...)"
        )
    return checkpoint


def _strip_prefix(section: Mapping, section_name: str, path) -> dict:
    if not isinstance(section, Mapping):
        raise ValueError(f"{path}: '{section_name}' is a {type(section).__name__}, not a state dict")
    stripped = {}
    for key, value in section.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: '{section_name}' entry '{key}' is a {type(value).__name__}, not a tensor")
        stripped[key[len("module."):] if key.startswith("module.") else key] = value
    return stripped


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in `tensor` (a sum first, which is cheap; the exact test only when the sum is not finite)."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _fmt(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_sections(checkpoint: Mapping, extra_block: bool, stage: int, path="checkpoint") -> set[str]:
    """The `state_dict_*` sections a checkpoint must have (backbone, classifier, Places-LT block, stage-2 scale);
    `ValueError` naming any missing or extra one, with a hint at the --stage / --dataset it points to."""
    wanted = {MODEL_SECTION, CLASSIFIER_SECTION}
    if extra_block:
        wanted.add(BLOCK_SECTION)
    if stage == 2:
        wanted.add(LWS_SECTION)
    present = {key for key in checkpoint if isinstance(key, str) and key.startswith("state_dict_")}
    problems = []
    for section in sorted(wanted - present):
        hint = {
            LWS_SECTION: " (a stage-1 checkpoint? then pass --stage 1)",
            BLOCK_SECTION: " (Places-LT checkpoints have it; is this one from another benchmark?)",
        }.get(section, "")
        problems.append(f"missing section '{section}'{hint}")
    for section in sorted(present - wanted):
        hint = {
            LWS_SECTION: " (a stage-2 checkpoint: pass --stage 2)",
            BLOCK_SECTION: " (a Places-LT checkpoint: pass --dataset places-lt)",
        }.get(section, "")
        problems.append(f"unexpected section '{section}'{hint}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return wanted


def _mismatches(expected: Mapping, tensors: Mapping, ours: Mapping, ignored: set = frozenset()) -> list[str]:
    """What keeps `tensors` ({(section, name): tensor}) from filling `expected` ({(section, name): our key}), as
    report lines: missing names (BN `num_batches_tracked` may be absent), unexpected names other than `ignored`, wrong
    shapes (the reference's `learned_norm` is `[1, K]`), NaN or inf. Empty when everything matches."""

    def named(section, key):
        return f"{section}: {key}" if section else key

    missing = [
        named(section, key) for section, key in expected
        if (section, key) not in tensors and not key.endswith("num_batches_tracked")
    ]
    unexpected = [named(section, key) for section, key in sorted(set(tensors) - set(expected) - set(ignored))]
    mismatched = []
    for (section, key), our_key in expected.items():
        if (section, key) not in tensors:
            continue
        tensor, target = tensors[section, key], ours[our_key]
        wanted_shape = (1, target.shape[0]) if our_key == "classifier.scale" else tuple(target.shape)
        if tuple(tensor.shape) != wanted_shape:
            mismatched.append(f"{named(section, key)} has shape {list(tensor.shape)}, expected {list(wanted_shape)}")
        elif tensor.is_floating_point() and not _all_finite(tensor):
            mismatched.append(f"{named(section, key)} holds NaN or inf")
    report = []
    if missing:
        report.append(f"missing keys: {_fmt(missing)}")
    if unexpected:
        report.append(f"unexpected keys: {_fmt(unexpected)}")
    if mismatched:
        report.append(f"bad tensors: {_fmt(mismatched)}")
    return report


def _filled(ours: Mapping, expected: Mapping, tensors: Mapping) -> dict:
    """`ours` with every entry of `expected` that `tensors` has replaced by it (in our shape and dtype)."""
    state = dict(ours)  # entries not in the checkpoint keep the model's values; load_state_dict copies
    for name, our_key in expected.items():
        if name in tensors:
            state[our_key] = tensors[name].reshape(ours[our_key].shape).to(ours[our_key].dtype)
    return state


def reference_state_dict(model: MislasForImageClassification, checkpoint: Mapping, stage: int, path="checkpoint"):
    """
    Our state dict filled from a reference checkpoint (already loaded), after checking it completely.

    Raises `ValueError` naming every missing or unexpected key (as `section: name`) and every shape mismatch, or a
    wrong section set (a stage-2 `state_dict_lws_model` with `stage=1`, a Places-LT `state_dict_block` for another
    benchmark). BN `num_batches_tracked` may be absent (then 0). Nothing is modified.
    """
    config = model.config
    wanted = check_sections(checkpoint, config.extra_block, stage, path)
    tensors = {
        (name, key): tensor for name in wanted for key, tensor in _strip_prefix(checkpoint[name], name, path).items()
    }
    ours = model.state_dict()
    expected = {}  # (section, reference name) -> our key
    for our_key in ours:
        reference = _reference_name(our_key)
        if reference is not None and not (reference[0] == LWS_SECTION and stage == 1):
            expected[reference] = our_key
    report = _mismatches(expected, tensors, ours)
    if report:
        raise ValueError(
            f"{path} does not match a {config.backbone} MiSLAS stage-{stage} checkpoint with {config.num_labels} "
            f"classes ({'; '.join(report)}). Check --dataset and --stage."
        )
    state = _filled(ours, expected, tensors)
    state["classifier.delta_weight"] = torch.zeros_like(ours["classifier.delta_weight"])
    if stage == 1:
        state["classifier.scale"] = torch.ones_like(ours["classifier.scale"])
    return state


def checkpoint_backbone(checkpoint: Mapping, dataset: str, path="checkpoint") -> str:
    """The backbone of a reference checkpoint for `dataset`: the benchmark's only one, or (ImageNet-LT: ResNet-50,
    -101 or -152, Table 7) the one whose blocks per stage the `state_dict_model` keys (`layer<s>.<b>.`) have;
    `ValueError` naming the depths found when none has them."""
    choices = SETTINGS[dataset].backbones
    if len(choices) == 1:
        return choices[0]
    depths = {}
    for key in _strip_prefix(checkpoint[MODEL_SECTION], MODEL_SECTION, path):
        match = re.match(r"layer(\d+)\.(\d+)\.", key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    found = tuple(depths[stage] for stage in sorted(depths))
    for name in choices:
        if BACKBONES[name][2] == found:
            return name
    known = ", ".join(f"{name} {list(BACKBONES[name][2])}" for name in choices)
    raise ValueError(
        f"{path}: '{MODEL_SECTION}' has {list(found)} blocks per stage, which none of the reference's {dataset} "
        f"backbones has ({known}). Check --dataset."
    )


def _dropped_blocks(backbone: str, source: str) -> tuple[str, ...]:
    """Name prefixes (`layer<s>.<b>.`) of the blocks the network `source` has beyond `backbone`'s depths."""
    depths, source_depths = BACKBONES[backbone][2], BACKBONES[source][2]
    return tuple(
        f"layer{stage + 1}.{block}."
        for stage, (depth, source_depth) in enumerate(zip(depths, source_depths))
        for block in range(depth, source_depth)
    )


def backbone_state_dict(model: MislasForImageClassification, state_dict: Mapping, path="checkpoint") -> dict:
    """
    The backbone entries (stem and stages) of our state dict from a torchvision ResNet state dict of the network the
    backbone starts from (`PRETRAINED_SOURCE`, else the same depths), after checking it completely. torchvision's
    `fc` and the blocks the backbone lacks (`resnet152_places`: `layer4.2`) are dropped, as the reference drops them;
    BN `num_batches_tracked` may be absent (torchvision's published weights have none). `ValueError` naming every
    missing or unexpected key and every bad tensor.
    """
    backbone = model.config.backbone
    source = PRETRAINED_SOURCE.get(backbone, backbone)
    ours = model.state_dict()
    expected = {}  # ("", torchvision name) -> our key
    for our_key in ours:
        reference = _reference_name(our_key)
        if reference is not None and reference[0] == MODEL_SECTION:
            expected["", reference[1]] = our_key
    tensors = {("", key): tensor for key, tensor in _strip_prefix(state_dict, "state dict", path).items()}
    dropped = {("", "fc.weight"), ("", "fc.bias")}
    dropped |= {name for name in tensors if name[1].startswith(_dropped_blocks(backbone, source))}
    report = _mismatches(expected, tensors, ours, ignored=dropped)
    if report:
        raise ValueError(
            f"{path} is not a torchvision {source} state dict ({'; '.join(report)}). Pass the state dict of "
            f"torchvision.models.{source}, saved with torch.save(model.state_dict(), FILE)."
        )
    filled = _filled(ours, expected, tensors)
    return {our_key: filled[our_key] for our_key in expected.values()}


def _scalar(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _provenance(checkpoint: Mapping, path: Path, stage: int, labels_known: bool, dataset: str) -> str:
    epoch, best_acc1, its_ece = (_scalar(checkpoint.get(key)) for key in ("epoch", "best_acc1", "its_ece"))
    text = (
        f"Converted with `python -m mislas_hf.convert` from the official MiSLAS checkpoint `{path.name}` "
        f"(dvlab-research/MiSLAS, stage {stage}"
        + (f", epoch {epoch:g}" if epoch is not None else "")
        + "). "
    )
    if best_acc1 is not None:
        text += (
            f"The checkpoint file records best_acc1 = {best_acc1:.2f}%"
            + (f" and its_ece = {its_ece:.2f}%" if its_ece is not None else "")
            + ": numbers of the reference code on the test split, which it also used to choose the saved epoch; "
            "they are not measured by mislas_hf. "
        )
    if stage == 2:
        text += (
            "The reference trains the classifier weight directly, so its stage-2 `fc.weight` is W + ΔW of Eq. (4): "
            "it is stored as `classifier.weight` with `classifier.delta_weight` = 0, and the learned scale "
            "`learned_norm` as `classifier.scale`. "
        )
    if not dataset.startswith("cifar"):
        text += (
            "Class k is the k-th class by training images (most first, ties in the order of the reference's numpy "
            "argsort); "
            + (
                "label `orig_<id>` gives its id in the official split lists."
                if labels_known
                else "the official training list was not given, so labels are `class_<k>` and the original class "
                "ids are unknown."
            )
        )
    return text


def reference_labels(
    dataset: str, imbalance_factor: float | None = None, train_list: str | os.PathLike | None = None
) -> tuple[list[int] | None, dict[int, str]]:
    """Training counts per class (None when unknown) and `id2label` of a reference checkpoint's classes: CIFAR-LT
    from its long-tailed profile (`imbalance_factor`, default 100) and CIFAR's class names; list-file benchmarks
    from `train_list` (`labels_from_train_list`) or, without it, unknown counts and `class_<k>` labels."""
    setting = SETTINGS[dataset]
    if setting.cifar_images_per_class is not None:
        factor = DEFAULT_CIFAR_IMBALANCE_FACTOR if imbalance_factor is None else imbalance_factor
        counts = long_tailed_class_counts(setting.cifar_images_per_class, BENCHMARKS[dataset].num_classes, factor)
        return counts, dict(enumerate(setting.class_names))
    if train_list is not None:
        return labels_from_train_list(train_list, BENCHMARKS[dataset].num_classes)
    return None, {k: f"class_{k}" for k in range(BENCHMARKS[dataset].num_classes)}


def build_converted_model(
    checkpoint: Mapping, dataset: str, stage: int, labels: tuple, path="checkpoint"
) -> MislasForImageClassification:
    """The `MislasForImageClassification` (eval mode) of an official checkpoint loaded with `load_checkpoint`, with
    `labels = reference_labels(...)`; see the module docstring."""
    setting = SETTINGS[dataset]
    check_sections(checkpoint, setting.extra_block, stage, path)  # before building a large model
    counts, id2label = labels
    config = MislasConfig(
        backbone=checkpoint_backbone(checkpoint, dataset, path),
        num_labels=BENCHMARKS[dataset].num_classes,
        id2label=id2label,
        label2id={label: k for k, label in id2label.items()},
        class_counts=counts,
        class_group_boundaries=BENCHMARKS[dataset].class_group_boundaries,
        stage=stage,
        head_mode="mislas" if stage == 2 else "linear",
        extra_block=setting.extra_block,
        freeze_backbone=setting.freeze_backbone,
    )
    model = MislasForImageClassification(config)
    model.load_state_dict(reference_state_dict(model, checkpoint, stage, path=path))
    return model.eval()


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(
            f"output_dir {output_dir} already exists and is not an empty folder: choose a new folder (nothing was "
            f"written)"
        )


def _write_folder(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` on a temporary folder beside `output_dir`, then move it to `output_dir` (which must not
    exist or be empty): the folder appears only complete, and a failure leaves nothing behind."""
    _check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.converting-", dir=output_dir.parent))
    try:
        write(staging)
        _check_output_dir(output_dir)
        if output_dir.exists():
            output_dir.rmdir()  # empty
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert(
    checkpoint_path: str | os.PathLike,
    dataset: str,
    stage: int,
    output_dir: str | os.PathLike,
    imbalance_factor: float | None = None,
    train_list: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """
    Convert an official MiSLAS checkpoint into a `save_pretrained` folder `output_dir` (weights, config, code files,
    image processor, model card), optionally pushed to the Hub repo `push_to_hub` in one commit.

    Checks the arguments and the whole checkpoint before writing anything; `output_dir` must not exist or be empty
    and appears only complete. Returns `output_dir`.
    """
    if dataset not in SETTINGS:
        raise ValueError(f"dataset={dataset!r} is unknown: use one of {', '.join(SETTINGS)}")
    if stage not in (1, 2):
        raise ValueError(f"stage={stage!r} must be 1 or 2")
    setting = SETTINGS[dataset]
    is_cifar = setting.cifar_images_per_class is not None
    if imbalance_factor is not None and not is_cifar:
        raise ValueError(f"--imbalance_factor applies to CIFAR-LT only; {dataset} fixes its profile by its lists")
    if train_list is not None and is_cifar:
        raise ValueError(f"--train_list applies to ImageNet-LT, Places-LT and iNaturalist; {dataset} needs none")
    if push_to_hub is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", push_to_hub):
        raise ValueError(f"--push_to_hub {push_to_hub!r} must be a Hub repo id ORG/NAME")
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    _check_output_dir(output_dir)
    labels = reference_labels(dataset, imbalance_factor, train_list)  # checks the factor / reads the list first

    checkpoint = load_checkpoint(checkpoint_path)
    model = build_converted_model(checkpoint, dataset, stage, labels, path=checkpoint_path)
    factor = (DEFAULT_CIFAR_IMBALANCE_FACTOR if imbalance_factor is None else imbalance_factor) if is_cifar else None
    dataset_name = setting.dataset_name + (f" (imbalance factor {factor:g})" if factor is not None else "")
    paper = PAPER_RESULTS.get((dataset, factor)) if stage == 2 else None  # the paper reports stage-2 models
    card_arguments = {
        "model_config": model.config,
        "metrics": None,
        "dataset_id": BENCHMARKS[dataset].hub_id,
        "dataset_name": dataset_name,
        "model_id": push_to_hub or output_dir.name,
        "paper_metrics": paper,
        "provenance": _provenance(checkpoint, checkpoint_path, stage, train_list is not None, dataset),
    }

    spec = BENCHMARKS[dataset]

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        make_image_processor(model.config.family, mean=spec.mean, std=spec.std).save_pretrained(folder)
        write_model_card(folder, **card_arguments)

    _write_folder(output_dir, write)
    if push_to_hub is not None:
        push_model_folder(
            output_dir,
            repo_id=push_to_hub,
            commit_message=f"Convert official MiSLAS {setting.dataset_name} stage-{stage} checkpoint",
        )
    return output_dir


def convert_backbone(backbone_checkpoint: str | os.PathLike, dataset: str, output_dir: str | os.PathLike) -> Path:
    """
    Convert a torchvision ImageNet ResNet state dict into the stage-1 starting point of `dataset`: a `save_pretrained`
    folder `output_dir` with the benchmark's reference architecture (Places-LT: `resnet152_places`, extra block,
    frozen backbone), the backbone's weights only (see `backbone_state_dict`) and the benchmark's image processor.
    `recipes/train.py --model_name_or_path output_dir` then initialises the classifier and the extra block with the
    run's seed. Everything is checked before anything is written. Returns `output_dir`.
    """
    if dataset not in SETTINGS:
        raise ValueError(f"dataset={dataset!r} is unknown: use one of {', '.join(SETTINGS)}")
    setting = SETTINGS[dataset]
    if setting.cifar_images_per_class is not None:
        raise ValueError(
            f"--backbone_checkpoint converts torchvision ImageNet ResNets; the reference trains {dataset}'s ResNet-32 "
            "from scratch"
        )
    backbone_checkpoint, output_dir = Path(backbone_checkpoint), Path(output_dir)
    if not backbone_checkpoint.is_file():
        raise FileNotFoundError(
            f"backbone checkpoint {backbone_checkpoint} not found: pass a torchvision ResNet state dict saved with "
            "torch.save(model.state_dict(), FILE)"
        )
    _check_output_dir(output_dir)
    state_dict = load_checkpoint(backbone_checkpoint)
    if MODEL_SECTION in state_dict:
        raise ValueError(f"{backbone_checkpoint} is a MiSLAS checkpoint, not a torchvision state dict: pass it as --checkpoint")
    spec = BENCHMARKS[dataset]
    config = MislasConfig(
        backbone=setting.backbones[0],
        num_labels=spec.num_classes,
        class_group_boundaries=spec.class_group_boundaries,
        extra_block=setting.extra_block,
        freeze_backbone=setting.freeze_backbone,
    )
    model = MislasForImageClassification(config)
    backbone = backbone_state_dict(model, state_dict, path=backbone_checkpoint)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, state_dict=backbone)
        make_image_processor(config.family, mean=spec.mean, std=spec.std).save_pretrained(folder)

    _write_folder(output_dir, write)
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of `convert`."""
    parser = argparse.ArgumentParser(
        prog="python -m mislas_hf.convert",
        description="Convert an official MiSLAS checkpoint (.pth.tar), or a torchvision ResNet state dict into the "
        "stage-1 starting point of a benchmark.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="the .pth.tar file saved by train_stage1/2.py")
    source.add_argument(
        "--backbone_checkpoint",
        help="a torchvision ResNet state dict (e.g. resnet152 for places-lt, whose layer4.2 is dropped)",
    )
    parser.add_argument("--dataset", required=True, choices=list(SETTINGS), help="benchmark the checkpoint is for")
    parser.add_argument(
        "--stage", type=int, choices=(1, 2), help="training stage of the checkpoint (with --checkpoint, required)"
    )
    parser.add_argument("--output_dir", required=True, help="new folder for the converted model")
    parser.add_argument(
        "--imbalance_factor", type=float, default=None, help="CIFAR-LT only: N_max / N_min (default 100)"
    )
    parser.add_argument(
        "--train_list", default=None, help="ImageNet-LT / Places-LT / iNaturalist: the official training list"
    )
    parser.add_argument("--push_to_hub", default=None, metavar="ORG/NAME", help="also upload to this Hub repo")
    args = parser.parse_args(argv)
    try:
        if args.backbone_checkpoint is not None:
            unused = [flag for flag in ("stage", "imbalance_factor", "train_list", "push_to_hub") if getattr(args, flag)]
            if unused:
                raise ValueError(f"--backbone_checkpoint takes no --{', --'.join(unused)}")
            output_dir = convert_backbone(args.backbone_checkpoint, args.dataset, args.output_dir)
        else:
            if args.stage is None:
                raise ValueError("--checkpoint needs --stage 1 or 2 (the training stage that saved it)")
            output_dir = convert(
                args.checkpoint,
                args.dataset,
                args.stage,
                args.output_dir,
                imbalance_factor=args.imbalance_factor,
                train_list=args.train_list,
                push_to_hub=args.push_to_hub,
            )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"converted {args.checkpoint or args.backbone_checkpoint} -> {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
