"""Convert official MiSLAS checkpoints (dvlab-research/MiSLAS, `*.pth.tar`), torchvision ImageNet backbones and timm
state dicts into folders that `from_pretrained` and `--model_name_or_path` load.

    python -m mislas_hf.convert --checkpoint model_best.pth.tar --dataset cifar10-lt --stage 2 --output_dir DIR \
        [--imbalance_factor 100] [--train_list Places_LT_train.txt] [--push_to_hub ORG/NAME]
    python -m mislas_hf.convert --backbone_checkpoint resnet152-f82ba261.pth --dataset places-lt --output_dir DIR
    python -m mislas_hf.convert --timm_checkpoint efficientnet-lite0-57934424.pth \
        --architecture tf_efficientnet_lite0 --output_dir DIR

What the checkpoints hold, how their tensors map onto our state dict, and the class order of list-file benchmarks:
`mislas_hf.reference_checkpoints`. The benchmark's reference setting (backbones, Places-LT's extra block and frozen
backbone, CIFAR's class names and profile, preprocessing, the paper's numbers) comes from `mislas_hf.data.BENCHMARKS`.

`--backbone_checkpoint` converts a torchvision ResNet state dict into the starting point of stage 1: the backbone's
weights only; training from that folder (`--model_name_or_path`) initialises the classifier and the extra block itself.

`--timm_checkpoint` converts a state dict of a timm architecture (timm's names, or another implementation's in timm's
order: `reference_checkpoints.timm_state_dict`) into the Hub layout of timm models (`config.json` with `architecture`
and `pretrained_cfg`, `model.safetensors`, written by timm's `save_for_hf`), which `TimmWrapperModel.from_pretrained`,
`AutoImageProcessor` and `--model_name_or_path` load as they load a `timm/...` repo. It needs timm.

Every tensor is checked and loaded in memory first; the folder (weights as safetensors, config, code files, image
processor, model card) is written into a temporary folder beside `output_dir` and moved into place only when
complete.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .configuration_mislas import MislasConfig, check_timm_available
from .data import BENCHMARKS
from .hub_upload import push_model_folder
from .modelcard import write_model_card
from .modeling_mislas import MislasForImageClassification
from .reference_checkpoints import (
    DEFAULT_CIFAR_IMBALANCE_FACTOR,
    MODEL_SECTION,
    backbone_state_dict,
    check_sections,
    checkpoint_backbone,
    load_checkpoint,
    reference_labels,
    reference_state_dict,
    timm_state_dict,
)


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


def build_converted_model(
    checkpoint: Mapping, dataset: str, stage: int, labels: tuple, path="checkpoint"
) -> MislasForImageClassification:
    """The `MislasForImageClassification` (eval mode) of an official checkpoint loaded with `load_checkpoint`, with
    `labels = reference_labels(...)`; see the module docstring."""
    spec = BENCHMARKS[dataset]
    check_sections(checkpoint, spec.extra_block, stage, path)  # before building a large model
    counts, id2label = labels
    config = MislasConfig(
        backbone=checkpoint_backbone(checkpoint, dataset, path),
        num_labels=spec.num_classes,
        id2label=id2label,
        label2id={label: k for k, label in id2label.items()},
        class_counts=counts,
        class_group_boundaries=spec.class_group_boundaries,
        stage=stage,
        head_mode="mislas" if stage == 2 else "linear",
        extra_block=spec.extra_block,
        freeze_backbone=spec.freeze_backbone,
    )
    model = MislasForImageClassification(config)
    model.load_state_dict(reference_state_dict(model, checkpoint, stage, path=path))
    return model.eval()


def _state_dict_file(path: str | os.PathLike, option: str, what: str) -> Path:
    """`path` as a Path, refused naming `option` when no such file exists (`what`: the state dict it should hold)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{option} {path} not found: pass {what} saved with torch.save(model.state_dict(), FILE)"
        )
    return path


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
    if dataset not in BENCHMARKS:
        raise ValueError(f"dataset={dataset!r} is unknown: use one of {', '.join(BENCHMARKS)}")
    if stage not in (1, 2):
        raise ValueError(f"stage={stage!r} must be 1 or 2")
    spec = BENCHMARKS[dataset]
    is_cifar = spec.cifar_images_per_class is not None
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
    dataset_name = spec.display_name + (f" (imbalance factor {factor:g})" if factor is not None else "")
    paper = spec.paper_results.get(factor) if stage == 2 else None  # the paper reports stage-2 models
    card_arguments = {
        "model_config": model.config,
        "metrics": None,
        "dataset_id": spec.hub_id,
        "dataset_name": dataset_name,
        "model_id": push_to_hub or output_dir.name,
        "preprocessing": spec.preprocessing.description(),
        "paper_metrics": paper,
        "provenance": _provenance(checkpoint, checkpoint_path, stage, train_list is not None, dataset),
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        spec.preprocessing.image_processor().save_pretrained(folder)
        write_model_card(folder, **card_arguments)

    _write_folder(output_dir, write)
    if push_to_hub is not None:
        push_model_folder(
            output_dir,
            repo_id=push_to_hub,
            commit_message=f"Convert official MiSLAS {spec.display_name} stage-{stage} checkpoint",
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
    if dataset not in BENCHMARKS:
        raise ValueError(f"dataset={dataset!r} is unknown: use one of {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[dataset]
    if spec.cifar_images_per_class is not None:
        raise ValueError(
            f"--backbone_checkpoint converts torchvision ImageNet ResNets; the reference trains {dataset}'s ResNet-32 "
            "from scratch"
        )
    backbone_checkpoint = _state_dict_file(
        backbone_checkpoint, "backbone checkpoint", "a torchvision ResNet state dict"
    )
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    state_dict = load_checkpoint(backbone_checkpoint)
    if MODEL_SECTION in state_dict:
        raise ValueError(
            f"{backbone_checkpoint} is a MiSLAS checkpoint, not a torchvision state dict: pass it as --checkpoint"
        )
    config = MislasConfig(
        backbone=spec.reference_backbones[0],
        num_labels=spec.num_classes,
        class_group_boundaries=spec.class_group_boundaries,
        extra_block=spec.extra_block,
        freeze_backbone=spec.freeze_backbone,
    )
    model = MislasForImageClassification(config)
    backbone = backbone_state_dict(model, state_dict, path=backbone_checkpoint)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, state_dict=backbone)
        spec.preprocessing.image_processor().save_pretrained(folder)

    _write_folder(output_dir, write)
    return output_dir


def convert_timm(timm_checkpoint: str | os.PathLike, architecture: str, output_dir: str | os.PathLike) -> Path:
    """
    Convert a state dict of the timm architecture `architecture` (`torch.load(weights_only=True)`; timm's tensor names,
    or another implementation's one to one in timm's order) into a timm Hub-layout folder `output_dir`:
    `config.json` (`architecture`, `num_classes`, `num_features`, timm's `pretrained_cfg` for the architecture, whose
    input size, crop, interpolation and mean/std the image processor reads) and `model.safetensors`, written by
    timm's `save_for_hf`. Every tensor is checked (`timm_state_dict`) before anything is written. Returns
    `output_dir`.
    """
    check_timm_available(architecture)
    import timm

    timm_checkpoint = _state_dict_file(timm_checkpoint, "timm checkpoint", "a state dict")
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    if not timm.is_model(architecture):
        raise ValueError(
            f"--architecture {architecture!r} is not a timm {timm.__version__} architecture: see timm.list_models()"
        )
    state_dict = load_checkpoint(timm_checkpoint)
    model = timm.create_model(architecture, pretrained=False)
    model.load_state_dict(timm_state_dict(state_dict, model.state_dict(), architecture, path=timm_checkpoint))

    def write(folder: Path) -> None:
        timm.models.save_for_hf(model.eval(), str(folder), safe_serialization=True)
        # transformers' TimmWrapperModel passes num_classes itself (0, or num_labels): a `model_args.num_classes`
        # recorded beside it (newer timm's save_for_hf writes one) would be given twice
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        config.get("model_args", {}).pop("num_classes", None)
        config_path.write_text(json.dumps(config, indent=2) + "\n")

    _write_folder(output_dir, write)
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of `convert`."""
    parser = argparse.ArgumentParser(
        prog="python -m mislas_hf.convert",
        description="Convert an official MiSLAS checkpoint (.pth.tar), a torchvision ResNet state dict into the "
        "stage-1 starting point of a benchmark, or a timm state dict into a timm Hub-layout folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="the .pth.tar file saved by train_stage1/2.py")
    source.add_argument(
        "--backbone_checkpoint",
        help="a torchvision ResNet state dict (e.g. resnet152 for places-lt, whose layer4.2 is dropped)",
    )
    source.add_argument(
        "--timm_checkpoint",
        help="a state dict of the timm --architecture (timm's names, or another implementation's in timm's order)",
    )
    parser.add_argument("--architecture", help="with --timm_checkpoint: the timm architecture, e.g. tf_efficientnet_lite0")
    parser.add_argument(
        "--dataset", choices=list(BENCHMARKS), help="benchmark the checkpoint is for (--checkpoint, --backbone_checkpoint)"
    )
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
        if args.timm_checkpoint is not None:
            unused = [flag for flag in ("dataset", "stage", "imbalance_factor", "train_list", "push_to_hub") if getattr(args, flag)]
            if unused or not args.architecture:
                raise ValueError(
                    "--timm_checkpoint needs --architecture (the timm architecture of the state dict)"
                    + (f" and takes no --{', --'.join(unused)}" if unused else "")
                )
            output_dir = convert_timm(args.timm_checkpoint, args.architecture, args.output_dir)
        elif args.dataset is None:
            raise ValueError("--checkpoint and --backbone_checkpoint need --dataset (the benchmark they are for)")
        elif args.architecture is not None:
            raise ValueError("--architecture is for --timm_checkpoint")
        elif args.backbone_checkpoint is not None:
            flags = ("stage", "imbalance_factor", "train_list", "push_to_hub")
            unused = [flag for flag in flags if getattr(args, flag)]
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
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"converted {args.checkpoint or args.backbone_checkpoint or args.timm_checkpoint} -> {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
