"""The prose of a MiSLAS model card's sections, from the model's config and the run that trained it: the model
description (backbone, weights, classes, frozen backbone), the temperature and logit bias and how they were fit
(`temperature_description`), the note on label names, the training set's class-count profile
(`class_count_profile`) and the length of training (`TrainingLength`: the one the Trainer ran, not the
configuration's epochs). `mislas_hf.modelcard` puts them into the card template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .calibration import class_groups
from .configuration_mislas import POOLED_FEATURES

PLACEHOLDER_LABEL = re.compile(r"^(LABEL|class)_\d+$")
STEMS = {"cifar": "CIFAR stem", "imagenet": "ImageNet stem"}
HEADS = {
    "mislas": "the MiSLAS classifier of Eq. (4), s, ΔW and b trained",
    "crt": "cRT, the classifier re-trained (ΔW and b, r = 0), not the MiSLAS classifier",
    "lws": "LWS, only the scale s trained, not the MiSLAS classifier",
    "linear": "the stage-1 linear classifier trained again, not the MiSLAS classifier",
}
"""A stage-2 card's words for each `head_mode` (`configuration_mislas.HEAD_MODES`)."""


def class_count_profile(model_config) -> dict | None:
    """K, total, largest / smallest class, imbalance factor and Many / Medium / Few sizes of `config.class_counts`
    (None when the config has no counts). The groups are those of `mislas_hf.calibration.class_groups`."""
    counts = model_config.class_counts
    if not counts:
        return None
    boundaries = model_config.class_group_boundaries
    many, few = model_config.many_shot_threshold, model_config.few_shot_threshold
    groups = class_groups(counts, many, few, boundaries=tuple(boundaries) if boundaries is not None else None)
    if boundaries is not None:
        first, second = boundaries
        rule = (
            f"class-index ranges of the reference implementation, Many = [0, {first}), "
            f"Medium = [{first}, {second}), Few = [{second}, {len(counts)})"
        )
    else:
        rule = f"thresholds on training images per class, Many > {many}, Medium {few}-{many}, Few < {few}" + (
            " (the paper's, Appendix A)" if (many, few) == (100, 20) else ""
        )
    return {
        "num_classes": len(counts),
        "total": sum(counts),
        "max_count": max(counts),
        "min_count": min(counts),
        "imbalance_factor": f"{max(counts) / min(counts):.2f}",
        "many": len(groups["many"]),
        "medium": len(groups["medium"]),
        "few": len(groups["few"]),
        "rule": rule,
    }


def model_description(model_config) -> list[str]:
    """The lines of the card's model description: backbone, weights (stage and head), classes, a frozen backbone,
    the post-hoc calibration."""
    if model_config.stage == 2:
        what = (
            f"stage 2 (classifier learning on a class-balanced stream; head mode `{model_config.head_mode}`, retention "
            f"factor r = {model_config.retention_factor:g}, shifted batch-norm statistics "
            f"{'on' if model_config.shift_bn else 'off'}): {HEADS[model_config.head_mode]}"
        )
    else:
        what = (
            "stage 1 (representation learning on the long-tailed training set, plain linear classifier; the "
            "configuration below gives its loss and mixup): not the MiSLAS classifier"
        )
    lines = [
        _backbone_description(model_config),
        f"**Weights:** {what}.",
        f"**Classes:** {model_config.num_labels}.",
    ]
    if model_config.freeze_backbone:
        lines.append("**Frozen backbone:** the pretrained backbone was kept fixed in both stages.")
    calibration = temperature_description(model_config)
    if calibration:
        lines.append(f"**Post-hoc calibration:** {calibration}")
    return lines


def _backbone_description(model_config) -> str:
    """The card's backbone line: a built-in ResNet with its stem and feature size, or a transformers / timm model
    with how its features are pooled; and the checkpoint its weights started from."""
    if model_config.backbone_spec is not None:
        line = (
            f"**Backbone:** {model_config.backbone} ({STEMS[model_config.backbone_spec.stem]}), feature size "
            f"{model_config.hidden_sizes[-1]}"
            + (", plus one extra bottleneck block on the last feature map (Places-LT)" if model_config.extra_block else "")
        )
    else:
        line = (
            f"**Backbone:** {model_config.backbone_name} (transformers `{type(model_config.backbone_config).__name__}`), "
            f"features: {POOLED_FEATURES[model_config.backbone_pooling]}"
        )
    checkpoint = getattr(model_config, "backbone_checkpoint", None)
    return line + (f"; pretrained weights from `{checkpoint}`" if checkpoint else "")


def temperature_description(model_config) -> str | None:
    """One sentence on the temperature and logit bias of `model_config` and how they were fit (None for an
    uncalibrated model)."""
    temperature = getattr(model_config, "temperature", 1.0)
    calibration = getattr(model_config, "calibration", None)
    logit_bias = getattr(model_config, "logit_bias", None)
    if calibration is None and temperature == 1.0 and logit_bias is None:
        return None
    if isinstance(temperature, list):
        shown = (f"class-wise temperatures T_k from {min(temperature):.4g} to {max(temperature):.4g} "
                 f"(`config.temperature`, one per class)")
    else:
        shown = f"temperature T = {temperature:.4g} (`config.temperature`)"
    text = f"the model divides its logits by a {shown}"
    if logit_bias is not None:
        text += f" and adds a bias per class (`config.logit_bias`, from {min(logit_bias):.4g} to {max(logit_bias):.4g})"
    text += ", so the probabilities it returns are the calibrated ones."
    if calibration is not None:
        text += " " + _calibration_fit_description(calibration)
    return text


def _calibration_fit_description(calibration: dict) -> str:
    """How `config.calibration` says the temperature (and logit bias) were fit, on what and for which test prior."""
    method = calibration["method"]
    balancing = "each held-out image weighted by (1 / K) / pi_holdout(y)"
    if method == "classwise_temperature":
        what = ("class-wise temperature scaling (one T per class, log T_k pulled towards the scalar T with a "
                f"weight of {calibration['regularization']:g} held-out images)")
    elif method == "balanced_temperature":
        what = ("balanced temperature scaling (T minimising the held-out NLL with each image weighted by "
                "pi_source(y) / pi_holdout(y), pi_source the class prior the logits were trained for, "
                "`config.source_prior`; then the Bayes prior correction log pi_target - log pi_source)")
    elif method == "logit_adjustment":
        fit = f"fit by the held-out NLL with {balancing}" if calibration["tau_fit"] else "given"
        what = (f"post-hoc logit adjustment (Menon et al., 2021: z - tau log pi_train, tau = "
                f"{calibration['tau']:.4g} {fit})")
    elif method == "logit_adjustment_temperature":
        what = (f"post-hoc logit adjustment with a temperature (z / T - tau log pi_train, tau = "
                f"{calibration['tau']:.4g}; T and tau fit jointly by the held-out NLL with {balancing})")
    else:
        what = "temperature scaling (Guo et al., 2017)"
    nll = (f"held-out NLL {calibration['held_out_nll_before']:.4f} before, {calibration['held_out_nll_after']:.4f} "
           "after")
    if "target_prior" not in calibration:
        text = f"Fit by {what}, minimising the NLL on {calibration['fit_on']}, never on the test split; {nll}."
    else:
        name = calibration["target_prior_name"]
        target = {"uniform": "a uniform (balanced)", "train": "the training"}.get(name, f"the `{name}`")
        text = (
            f"Fit by {what} for {target} test prior, on {calibration['fit_on']}, never on the test split; {nll}; "
            f"reweighted to the target prior, {calibration['held_out_target_nll_before']:.4f} before, "
            f"{calibration['held_out_target_nll_after']:.4f} after."
        )
    return text + f" Uncalibrated model: `{calibration['uncalibrated_model']}`."


def labels_note(model_config) -> str:
    """What the card says of the label names: the class names `config.id2label` holds, or that they are
    placeholders."""
    names = [model_config.id2label[index] for index in sorted(model_config.id2label)]
    if all(PLACEHOLDER_LABEL.match(str(name)) for name in names):
        return (
            f"the label names are placeholders (`{names[0]}` ... `{names[-1]}`): the class names were not known when "
            f"this model was saved; class index k is the k-th class of the training label order."
        )
    return f"`config.id2label` holds the class names (`{names[0]}`, `{names[1] if len(names) > 1 else ''}`, ...)."


@dataclass(frozen=True)
class TrainingLength:
    """How long the weights of a card were trained, from the Trainer that trained them: `TrainerState.global_step`,
    `.epoch` and `.max_steps`, the images per optimizer step, and the run's `num_train_epochs` and `max_steps`
    arguments (a positive `max_steps` sets the length instead of the epochs)."""

    steps: int
    epochs: float
    planned_steps: int
    images_per_step: int
    configured_epochs: float
    max_steps: int = -1

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(
                f"TrainingLength.steps = {self.steps}: a model that trained no step has no length of training; pass "
                "training=None for a model that was only evaluated, calibrated or converted."
            )

    def description(self) -> str:
        """One sentence for the card: the steps and epochs trained, and what decided them."""
        text = (
            f"{self.steps} optimizer steps of {self.images_per_step} images, {self.epochs:.4g} epochs of the "
            "training set"
        )
        if self.max_steps > 0:
            return (
                f"{text}: `--max_steps {self.max_steps}` set the length, in place of the {self.configured_epochs:g} "
                "epochs of the configuration."
            )
        if self.steps < self.planned_steps:
            return f"{text}: stopped before the {self.planned_steps} steps ({self.configured_epochs:g} epochs) planned."
        return f"{text}, as configured."


__all__ = [
    "TrainingLength",
    "class_count_profile",
    "labels_note",
    "model_description",
    "temperature_description",
]
