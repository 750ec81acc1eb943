"""Model cards and Hub uploads for MiSLAS models.

`build_model_card` renders the card template shipped in `mislas_hf/templates/model_card.md` with
`huggingface_hub.ModelCard.from_template`: YAML metadata (library, tags, datasets, license, pipeline tag and a
`model-index` with the measured test-split results), how to load the model, the training recipe, the results in
percent, the reliability diagram, the training set's class-count profile, limitations and the paper's BibTeX.
Numbers measured by this package and numbers reported by the paper go into separate tables and only the measured
ones into the `model-index`. The caller gives the preprocessing sentence and the paper's numbers (the benchmark's
`Preprocessing.description()` and `paper_results` in `mislas_hf.data.BENCHMARKS`); this module knows no benchmark.

`push_model_folder` uploads a `save_pretrained` folder (weights, config, code files, image processor, card, diagram)
to the Hub with `HfApi.upload_folder`.

Metrics are fractions in code (as `mislas_hf.calibration.calibration_metrics` returns them); the card shows
accuracies and the ECE family in percent rounded to 2 decimals (`card_metric_value`), NLL in nats and the Brier
score rounded to 4. A second table holds the long-tailed calibration metrics (classwise and adaptive ECE, ECE
per Many / Medium / Few group, Brier score); the card of a temperature-scaled model says how and on what its
temperature was fit.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token

from .calibration import class_groups

CARD_FILENAME = "README.md"
TAGS = ["image-classification", "long-tailed-recognition", "calibration", "mislas"]

BIBTEX = """@inproceedings{zhong2021mislas,
  title     = {Improving Calibration for Long-Tailed Recognition},
  author    = {Zhong, Zhisheng and Cui, Jiequan and Liu, Shu and Jia, Jiaya},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""


@dataclass(frozen=True)
class CardMetric:
    """One metric of the card: its key in a metrics dict, its `model-index` type, and how it is shown."""

    key: str
    name: str  # shown in tables and as `metric_name`; "{n_bins}" is filled in
    metric_type: str
    percent: bool  # shown as 100 * fraction; otherwise as is (NLL in nats, Brier score), 4 decimals
    in_model_index: bool
    table: str = "main"  # "main": the paper's metrics; "calibration": the long-tailed calibration metrics


CARD_METRICS = (
    CardMetric("accuracy", "Top-1 accuracy (%)", "accuracy", True, True),
    CardMetric("top5_accuracy", "Top-5 accuracy (%)", "top_5_accuracy", True, False),
    CardMetric("many_accuracy", "Many-shot accuracy (%)", "accuracy", True, True),
    CardMetric("medium_accuracy", "Medium-shot accuracy (%)", "accuracy", True, True),
    CardMetric("few_accuracy", "Few-shot accuracy (%)", "accuracy", True, True),
    CardMetric("ece", "ECE ({n_bins} bins, %)", "ece", True, True),
    CardMetric("mce", "MCE ({n_bins} bins, %)", "mce", True, True),
    CardMetric("nll", "NLL (nats)", "nll", False, True),
    CardMetric("classwise_ece", "Classwise ECE ({n_bins} bins, %)", "classwise_ece", True, True, "calibration"),
    CardMetric("adaptive_ece", "Adaptive ECE ({n_bins} equal-mass bins, %)", "adaptive_ece", True, True, "calibration"),
    CardMetric("many_ece", "Many-shot ECE ({n_bins} bins, %)", "ece", True, True, "calibration"),
    CardMetric("medium_ece", "Medium-shot ECE ({n_bins} bins, %)", "ece", True, True, "calibration"),
    CardMetric("few_ece", "Few-shot ECE ({n_bins} bins, %)", "ece", True, True, "calibration"),
    CardMetric("brier", "Brier score", "brier", False, True, "calibration"),
)
"""Metrics a card can show, in table order. Accuracy, ECE, MCE and NLL are required; the others are optional (the
calibration table of models evaluated before it existed stays empty)."""

REQUIRED_METRICS = ("accuracy", "ece", "mce", "nll")
METRIC_PREFIXES = ("eval_", "test_")

PLACEHOLDER_LABEL = re.compile(r"^(LABEL|class)_\d+$")
TOKEN_SETTING = re.compile(r"^(\s*[\w.-]*token\s*:)(?![ \t]*(?:null|~|None|''|\"\")?[ \t]*$)[ \t]*(.+)$", re.I | re.M)
HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
REDACTED = "<redacted>"
STEMS = {"cifar": "CIFAR stem", "imagenet": "ImageNet stem"}
NOT_UPLOADED = (".*", "*/.*")
"""`ignore_patterns` of the upload: hidden files and folders (`.cache`, `.git`, ...) stay local."""


def card_metric_value(key: str, fraction: float) -> float:
    """The value a card shows for metric `key`: percent rounded to 2 decimals, or NLL (nats) and Brier score
    rounded to 4."""
    metric = _card_metric(key)
    return round(100 * fraction, 2) if metric.percent else round(fraction, 4)


def _card_metric(key: str) -> CardMetric:
    for metric in CARD_METRICS:
        if metric.key == key:
            return metric
    raise KeyError(f"{key!r} is not a card metric: use one of {[m.key for m in CARD_METRICS]}")


def normalize_metrics(metrics: Mapping[str, object], required=REQUIRED_METRICS, what: str = "metrics") -> dict:
    """
    The card metrics of `metrics` as `{key: fraction}`.

    Keys may carry the `eval_` / `test_` prefix that `Trainer` writes; other keys (loss, runtime, epoch, a
    `source` string) are ignored, and so are `None` values. Raises `ValueError` naming the key when a required
    metric is missing, when a value is not a finite number, when an accuracy, ECE or MCE is outside [0, 1] (percent
    passed instead of a fraction), when NLL is negative, or when two spellings of one key disagree.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{what} must be a dict of metric name -> fraction, got {type(metrics).__name__}")
    known = {metric.key for metric in CARD_METRICS}
    values, spelled = {}, {}
    for name, value in metrics.items():
        key = next((name[len(prefix):] for prefix in METRIC_PREFIXES if name.startswith(prefix)), name)
        if key not in known or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{what}[{name!r}] = {value!r} is not a finite number")
        value = float(value)
        if _card_metric(key).percent and not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{what}[{name!r}] = {value} is not a fraction in [0, 1]: pass fractions as "
                f"mislas_hf.calibration.calibration_metrics returns them (the card converts to percent)"
            )
        if key == "nll" and value < 0:
            raise ValueError(f"{what}[{name!r}] = {value} is negative: NLL is a mean negative log-likelihood")
        if key == "brier" and not 0.0 <= value <= 2.0:
            raise ValueError(f"{what}[{name!r}] = {value} is outside [0, 2], the range of the multi-class Brier score")
        if key in values and values[key] != value:
            raise ValueError(f"{what} has {spelled[key]!r} = {values[key]} and {name!r} = {value}: keep one of them")
        values[key], spelled[key] = value, name
    missing = [key for key in required if key not in values]
    if missing:
        raise ValueError(
            f"{what} lack {', '.join(missing)} (with or without the eval_ prefix); got keys {sorted(metrics)}. "
            f"Pass the dict of mislas_hf.calibration.calibration_metrics or of Trainer.evaluate."
        )
    return values


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


def _metric_rows(values: dict, n_bins: int, table: str = "main") -> list[tuple[str, str]]:
    rows = []
    for metric in CARD_METRICS:
        if metric.key in values and metric.table == table:
            shown = card_metric_value(metric.key, values[metric.key])
            rows.append((metric.name.format(n_bins=n_bins), f"{shown:.2f}" if metric.percent else f"{shown:.4f}"))
    return rows


def _model_description(model_config) -> list[str]:
    stage = model_config.stage
    if stage == 2:
        what = (
            f"stage 2 (classifier learning; head mode `{model_config.head_mode}`, retention factor "
            f"r = {model_config.retention_factor:g}): the calibrated MiSLAS classifier"
        )
    else:
        what = "stage 1 (representation learning with mixup, plain linear classifier): not yet the MiSLAS classifier"
    lines = [
        f"**Backbone:** {model_config.backbone} ({STEMS[model_config.backbone_spec.stem]}), feature size "
        f"{model_config.hidden_sizes[-1]}"
        + (", plus one extra bottleneck block on the last feature map (Places-LT)" if model_config.extra_block else ""),
        f"**Weights:** {what}.",
        f"**Classes:** {model_config.num_labels}.",
    ]
    if model_config.freeze_backbone:
        lines.append("**Frozen backbone:** the ImageNet-pretrained backbone was kept fixed in both stages.")
    calibration = temperature_description(model_config)
    if calibration:
        lines.append(f"**Post-hoc calibration:** {calibration}")
    return lines


def temperature_description(model_config) -> str | None:
    """One sentence on the temperature of `model_config` and how it was fit (None for an uncalibrated model)."""
    temperature = getattr(model_config, "temperature", 1.0)
    calibration = getattr(model_config, "calibration", None)
    if calibration is None and temperature == 1.0:
        return None
    if isinstance(temperature, list):
        shown = (f"class-wise temperatures T_k from {min(temperature):.4g} to {max(temperature):.4g} "
                 f"(`config.temperature`, one per class)")
    else:
        shown = f"temperature T = {temperature:.4g} (`config.temperature`)"
    text = f"the model divides its logits by a {shown}, so the probabilities it returns are the calibrated ones."
    if calibration is not None:
        method = ("class-wise temperature scaling (one T per class, log T_k pulled towards the scalar T with a "
                  f"weight of {calibration['regularization']:g} held-out images)"
                  if calibration["method"] == "classwise_temperature" else "temperature scaling (Guo et al., 2017)")
        text += (
            f" Fit by {method}, minimising the NLL on {calibration['fit_on']}, never on the test split; held-out "
            f"NLL {calibration['held_out_nll_before']:.4f} before, {calibration['held_out_nll_after']:.4f} after. "
            f"Uncalibrated model: `{calibration['uncalibrated_model']}`."
        )
    return text


def _labels_note(model_config) -> str:
    names = [model_config.id2label[index] for index in sorted(model_config.id2label)]
    if all(PLACEHOLDER_LABEL.match(str(name)) for name in names):
        return (
            f"the label names are placeholders (`{names[0]}` ... `{names[-1]}`): the class names were not known when "
            f"this model was saved; class index k is the k-th class of the training label order."
        )
    return f"`config.id2label` holds the class names (`{names[0]}`, `{names[1] if len(names) > 1 else ''}`, ...)."


def redact_tokens(text: str) -> str:
    """`text` with access tokens replaced by `<redacted>`: values of YAML settings named like `*token*`, strings
    shaped like Hugging Face tokens (`hf_...`), and the token of the current login, wherever it occurs."""
    text = TOKEN_SETTING.sub(lambda match: f"{match.group(1)} {REDACTED}", text)
    text = HF_TOKEN_PATTERN.sub(REDACTED, text)
    token = get_token()
    return text.replace(token, REDACTED) if token and len(token) >= 8 else text


def _check_relative_filename(diagram_filename: str) -> None:
    path = PurePosixPath(diagram_filename)
    if path.is_absolute() or ".." in path.parts or "\\" in diagram_filename or not path.name:
        raise ValueError(
            f"diagram_filename={diagram_filename!r} must be a relative path inside the model folder (e.g. "
            f"'reliability_diagram.png'): the card links it relatively and it is uploaded beside the card"
        )


def build_model_card(
    model_config,
    metrics: Mapping[str, object] | None,
    dataset_id: str | None,
    dataset_name: str,
    model_id: str,
    preprocessing: str,
    training_config_yaml: str | None = None,
    diagram_filename: str | None = None,
    paper_metrics: Mapping[str, object] | None = None,
    provenance: str = "",
    base_model: str | list[str] | None = None,
    license: str = "apache-2.0",
    n_bins: int = 15,
) -> ModelCard:
    """
    Render the model card of a MiSLAS model.

    Args:
        model_config: the model's `MislasConfig` (backbone, stage, labels, `class_counts`, group boundaries).
        metrics: measured test-split metrics as fractions (`calibration_metrics` or `Trainer.evaluate` output, with
            or without the `eval_` prefix): `accuracy`, `ece`, `mce`, `nll` required, `top5_accuracy`,
            `many_accuracy`, `medium_accuracy`, `few_accuracy` optional. `None` for a model not evaluated by this
            package (e.g. a converted checkpoint): no `model-index` then.
        dataset_id: Hub id of the dataset (`datasets` metadata and `model-index` dataset type), or None.
        dataset_name: readable benchmark name, e.g. "CIFAR-10-LT (imbalance factor 100)".
        model_id: Hub repo id ("org/name") used in the loading snippets and as `model-index` name.
        preprocessing: what the saved image processor does to an image, one sentence (e.g.
            `BENCHMARKS["cifar10-lt"].preprocessing.description()`).
        training_config_yaml: the YAML config the model was trained with, shown verbatim.
        diagram_filename: reliability diagram PNG beside the card (relative path), linked from the card.
        paper_metrics: numbers reported by the paper for the same setting, as fractions, with an optional `"source"`
            (`BENCHMARKS[name].paper_results[factor]`); shown in their own table, never in the `model-index`.
        provenance: how the weights were obtained (training run, conversion), one paragraph.
        base_model: Hub id(s) of the model this one starts from, if any.
        license: license of the weights.
        n_bins: number of confidence bins of ECE / MCE.

    Returns:
        a `huggingface_hub.ModelCard`; `card.save(path)` writes it.
    """
    measured = normalize_metrics(metrics) if metrics is not None else {}
    paper = {}
    paper_source = "Zhong et al. (CVPR 2021)"
    if paper_metrics is not None:
        paper = normalize_metrics(paper_metrics, required=(), what="paper_metrics")
        if not paper:
            raise ValueError(f"paper_metrics has none of the card metrics {[m.key for m in CARD_METRICS]}")
        paper_source = str(paper_metrics.get("source", paper_source))
    if diagram_filename is not None:
        _check_relative_filename(diagram_filename)
    if measured and not dataset_id:
        raise ValueError("metrics need dataset_id: the model-index names the dataset each result was measured on")
    if not provenance.strip():
        raise ValueError("provenance is empty: say how the weights were obtained (training run or conversion)")
    if not preprocessing.strip():
        raise ValueError("preprocessing is empty: pass the Preprocessing.description() of the saved image processor")

    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=metric.metric_type,
            metric_name=metric.name.format(n_bins=n_bins),
            metric_value=card_metric_value(metric.key, measured[metric.key]),
        )
        for metric in CARD_METRICS
        if metric.in_model_index and metric.key in measured
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=list(TAGS),
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        model_name=model_id if eval_results else None,
        eval_results=eval_results or None,
    )
    template = resources.files("mislas_hf").joinpath("templates", "model_card.md").read_text(encoding="utf-8")
    summary = (
        f"A MiSLAS image classifier ({model_config.backbone}, stage {model_config.stage}) for {dataset_name}, "
        f"a long-tailed benchmark; the model is trained to give calibrated confidences, and its expected "
        f"calibration error is reported with its accuracy."
    )
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        title=model_id.split("/")[-1],
        summary=summary,
        description=_model_description(model_config),
        labels_note=_labels_note(model_config),
        model_id=model_id,
        preprocessing=preprocessing.strip().rstrip("."),
        provenance=provenance.strip(),
        training_config_yaml=training_config_yaml.strip() if training_config_yaml else None,
        dataset_name=dataset_name,
        measured_rows=_metric_rows(measured, n_bins),
        calibration_rows=_metric_rows(measured, n_bins, table="calibration"),
        paper_rows=_metric_rows(paper, n_bins),
        paper_source=f"Source: {paper_source}. Reported for the same benchmark and backbone; not a measurement "
        f"of the weights in this repository.",
        diagram_filename=diagram_filename,
        n_bins=n_bins,
        profile=class_count_profile(model_config),
        bibtex=BIBTEX,
    )
    return ModelCard(redact_tokens(card.content))


def write_model_card(output_dir: str | os.PathLike, **card_arguments) -> Path:
    """
    Build the card (`build_model_card(**card_arguments)`) and write it as `output_dir/README.md`.

    The reliability diagram named by `diagram_filename` must already be in `output_dir` (the card links it
    relatively): `FileNotFoundError` otherwise, before anything is written. Returns the card's path.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {output_dir} does not exist: save the model there first")
    diagram = card_arguments.get("diagram_filename")
    if diagram is not None:
        _check_relative_filename(diagram)
        if not (output_dir / diagram).is_file():
            raise FileNotFoundError(
                f"the card links {diagram} but {output_dir / diagram} does not exist: write the reliability "
                f"diagram (mislas_hf.calibration.reliability_diagram) into the model folder first"
            )
    card = build_model_card(**card_arguments)
    path = output_dir / CARD_FILENAME
    card.save(path)
    return path


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
):
    """
    Upload a `save_pretrained` folder to the Hub model repo `repo_id`.

    Checks before any request that the folder holds `config.json`, the weights and the `README.md` card, then creates
    the repo if needed (`HfApi.create_repo(exist_ok=True)`) and, for a `revision` other than `main`, the branch, and
    uploads every file of `folder` but hidden ones (`NOT_UPLOADED`: `.cache`, `.git`, ...) with
    `HfApi.upload_folder`: one commit for a model folder (huggingface_hub splits only uploads of hundreds of files
    or over 100 MB of small files into several). `token=None` uses the usual login (`HF_TOKEN` or `hf auth login`);
    the token is only sent as an HTTP header, never written or printed. Returns the `CommitInfo`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist: save the model with save_pretrained first")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: save the model with save_pretrained first")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise FileNotFoundError(f"{folder} has no model.safetensors: save the model with save_pretrained first")
    if not (folder / CARD_FILENAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CARD_FILENAME}: write the card with write_model_card first")
    if not commit_message.strip():
        raise ValueError("commit_message is empty: say what this upload is")

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True, token=token)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, commit_message=commit_message, repo_type="model", revision=revision,
        ignore_patterns=list(NOT_UPLOADED), token=token,  # a new list: upload_folder appends its own patterns to it
    )


__all__ = [
    "BIBTEX",
    "CARD_METRICS",
    "build_model_card",
    "card_metric_value",
    "class_count_profile",
    "normalize_metrics",
    "push_model_folder",
    "redact_tokens",
    "write_model_card",
]
