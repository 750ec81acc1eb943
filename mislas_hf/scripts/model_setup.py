"""Which model a job trains or reads: the backbone options reconciled with the checkpoint of
`--model_name_or_path` before any data is loaded (`plan_model`), the stage-1 model built from that plan
(`build_model`), and saved models checked against the data (`load_saved_model`, `load_stage1_model`)."""

import logging
from dataclasses import dataclass

from transformers import AutoImageProcessor, PreTrainedConfig, ResNetModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..configuration_mislas import (
    BACKBONES,
    TIMM_MODEL_TYPE,
    MislasConfig,
    backbone_of_resnet_config,
    check_timm_available,
)
from ..data import Preprocessing
from ..modeling_mislas import MislasForImageClassification
from ..modeling_resnet_backbones import load_resnet_backbone
from ..modeling_vision_backbones import load_pretrained_backbone, vision_backbone_config
from .arguments import DataArguments, ModelArguments
from .saved_model_arguments import checkpoint_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPlan:
    """What `build_model` builds: from `source` ("new"; "mislas": a MiSLAS checkpoint; "resnet": a transformers
    ResNet checkpoint of one of the built-in `BACKBONES`; "pretrained": any other transformers image classifier or
    vision encoder, or a timm folder), the backbone and its options after `ModelArguments` and the checkpoint's
    config are reconciled, and the preprocessing of the checkpoint's image processor (None: no pretrained one).
    `backbone` names a built-in ResNet; `backbone_config` is the vision model of a "pretrained" checkpoint (and of a
    "mislas" one built on such a backbone), None for the built-ins."""

    source: str
    backbone: str | None
    extra_block: bool
    freeze_backbone: bool
    pretrained_preprocessing: Preprocessing | None = None
    backbone_config: PreTrainedConfig | None = None

    @property
    def default_preprocessing(self) -> Preprocessing:
        """How your own images are preprocessed for this model: as its checkpoint's image processor says, else the
        reference's preprocessing for a new network of its stem (`cifar` for the CIFAR ResNet, else `imagenet`)."""
        if self.pretrained_preprocessing is not None:
            return self.pretrained_preprocessing
        cifar = self.backbone is not None and BACKBONES[self.backbone].stem == "cifar"
        return Preprocessing.reference("cifar" if cifar else "imagenet")


def _pretrained_preprocessing(path: str, augmentation: str = "imagenet") -> Preprocessing | None:
    """The preprocessing the checkpoint's image processor describes (a timm folder's is its `pretrained_cfg`),
    trained with the reference's `augmentation`; None when it has no image processor."""
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        logger.warning(f"{path} has no image processor: preprocessing as the reference does for {augmentation}")
        return None
    return Preprocessing.from_image_processor(processor, augmentation=augmentation)


def _checkpoint_backbone_config(path: str, config: dict) -> PreTrainedConfig:
    """The vision model of a transformers checkpoint's `config` (`vision_backbone_config`); `ValueError` naming the
    model type when it is none, `ImportError` when it is a timm architecture and timm is missing."""
    model_type = config.get("model_type")
    if model_type == TIMM_MODEL_TYPE:
        check_timm_available(config.get("architecture"))
    backbone_config = None
    if model_type in CONFIG_MAPPING:
        backbone_config = vision_backbone_config(CONFIG_MAPPING[model_type].from_dict(config))
    if backbone_config is None:
        raise ValueError(
            f"--model_name_or_path {path} is a model of type '{model_type}', not a vision model transformers can "
            "load: pass a MiSLAS model, or an image classifier or vision encoder (e.g. microsoft/resnet-50, "
            "google/vit-base-patch16-224, facebook/dinov2-small, openai/clip-vit-base-patch32, a timm folder)"
        )
    return backbone_config


def _truncates(checkpoint_backbone: str, backbone: str) -> bool:
    """Whether `backbone` is `checkpoint_backbone` with fewer blocks in some stages (`load_resnet_backbone`)."""
    theirs, ours = BACKBONES[checkpoint_backbone], BACKBONES[backbone]
    same_layers = (theirs.stem, theirs.layer_type, theirs.hidden_sizes) == (ours.stem, ours.layer_type, ours.hidden_sizes)
    return same_layers and all(our_depth <= their_depth for our_depth, their_depth in zip(ours.depths, theirs.depths))


def plan_model(model_args: ModelArguments, stage: str = "1") -> ModelPlan:
    """Reconcile the backbone options with the checkpoint of `model_name_or_path`, before any data or model is
    loaded. A new model takes `backbone` (resnet32 by default); `freeze_backbone` without pretrained weights is
    refused. A MiSLAS checkpoint keeps its backbone (another `backbone` is refused, naming both) and its image
    processor's preprocessing; `extra_block` and `freeze_backbone` given here override the checkpoint's, with a
    warning naming both values. A transformers ResNet (`model_type: resnet`) of a built-in architecture gives that
    backbone (`backbone_of_resnet_config`); any other image classifier or vision encoder gives its vision model as
    `backbone_config` (`vision_backbone_config`; `extra_block` and `backbone` are refused for it); both give their
    image processor's preprocessing and are refused for stage 2. Other model types are refused naming them."""
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
    config = checkpoint_config(path)
    model_type = config.get("model_type")
    if model_type == MislasConfig.model_type:
        saved = MislasConfig.from_dict(config)
        if model_args.backbone is not None and model_args.backbone != saved.backbone:
            raise ValueError(
                f"--backbone {model_args.backbone} conflicts with {path}, a {saved.backbone_name} model: leave "
                "backbone unset" + (f" or set it to {saved.backbone}" if saved.backbone else "")
            )
        for name, value in (("extra_block", extra_block), ("freeze_backbone", freeze_backbone)):
            if value is not None and value != config.get(name, False):
                logger.warning(f"{name}={value} (given) overrides {name}={config.get(name, False)} of {path}")
        extra_block = config.get("extra_block", False) if extra_block is None else extra_block
        freeze_backbone = config.get("freeze_backbone", False) if freeze_backbone is None else freeze_backbone
        augmentation = "cifar" if saved.backbone_spec is not None and saved.backbone_spec.stem == "cifar" else "imagenet"
        return ModelPlan(
            "mislas", saved.backbone, extra_block, freeze_backbone, _pretrained_preprocessing(path, augmentation),
            saved.backbone_config,
        )
    if stage == "2":
        raise ValueError(
            f"--stage 2 starts from a MiSLAS stage-1 model, and {path} is a transformers '{model_type}' model: run "
            "stage 1 from it first (--stage 1 or both)"
        )
    backbone = backbone_of_resnet_config(config) if model_type == "resnet" else None
    if backbone is None:
        backbone_config = _checkpoint_backbone_config(path, config)
        for name, value in (("--backbone", model_args.backbone), ("--extra_block", extra_block)):
            if value:
                raise ValueError(
                    f"{name} {value} is for the built-in ResNets, and {path} is a {backbone_config.model_type} model: "
                    f"leave {name} unset"
                )
        return ModelPlan(
            "pretrained", None, False, bool(freeze_backbone), _pretrained_preprocessing(path), backbone_config
        )
    if model_args.backbone is not None and model_args.backbone != backbone:
        if not _truncates(backbone, model_args.backbone):
            raise ValueError(
                f"--backbone {model_args.backbone} conflicts with {path}, a {backbone}: leave backbone unset or set "
                f"it to {backbone}"
            )
        backbone = model_args.backbone
    return ModelPlan("resnet", backbone, bool(extra_block), bool(freeze_backbone), _pretrained_preprocessing(path))


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
    or a new model whose backbone is a transformers checkpoint's, its classifier replaced by the MiSLAS head for
    these classes: a built-in ResNet's (`load_resnet_backbone`) or any vision model's (`load_pretrained_backbone`).
    The checkpoint is recorded as `backbone_checkpoint`."""
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
    if plan.source == "pretrained":
        model = MislasForImageClassification(
            MislasConfig(
                backbone_config=plan.backbone_config, backbone_checkpoint=model_args.model_name_or_path, **config_kwargs
            )
        )
        load_pretrained_backbone(model.mislas, model_args.model_name_or_path)
        return model
    model = MislasForImageClassification(MislasConfig(backbone=plan.backbone, **config_kwargs))
    if plan.source == "resnet":
        model.config.backbone_checkpoint = model_args.model_name_or_path
        resnet = ResNetModel.from_pretrained(model_args.model_name_or_path)
        left_out = load_resnet_backbone(model.mislas, resnet)
        if left_out:
            logger.warning(
                f"{plan.backbone} has fewer blocks than {model_args.model_name_or_path}: "
                f"{len(left_out)} tensors of the checkpoint are not used, e.g. resnet.{left_out[0]}"
            )
    return model


def check_model_classes(model: MislasForImageClassification, path: str, benchmark, what_to_do: str) -> None:
    """Refuse, before any compute, a model (loaded from `path`) whose classes are not the benchmark's; `what_to_do`
    ends the refusal."""
    if model.config.num_labels != len(benchmark.class_names):
        raise ValueError(
            f"{path} has {model.config.num_labels} classes but {benchmark.name} has {len(benchmark.class_names)}: "
            f"{what_to_do}"
        )


def load_saved_model(path: str, benchmark, what_to_do: str) -> MislasForImageClassification:
    """A saved MiSLAS model (folder or Hub id) for `benchmark` (`check_model_classes`)."""
    model = MislasForImageClassification.from_pretrained(path)
    check_model_classes(model, path, benchmark, what_to_do)
    return model


def load_stage1_model(path: str, benchmark, counts: list[int], data_args: DataArguments) -> MislasForImageClassification:
    """The stage-1 model stage 2 starts from, checked against the data before any compute is spent."""
    model = load_saved_model(
        path, benchmark, "pass a stage-1 model trained on this data (--model_name_or_path)."
    )
    model.config.class_counts = counts
    for name, value in group_options(data_args, benchmark).items():
        setattr(model.config, name, value)
    return model
