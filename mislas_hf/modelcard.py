"""Model cards for MiSLAS models.

`build_model_card` renders the card template shipped in `mislas_hf/templates/model_card.md` with
`huggingface_hub.ModelCard.from_template`: YAML metadata (library, tags, datasets, license, pipeline tag and a
`model-index` with the measured test-split results), how to load the model, the training recipe, the results in
percent, the reliability diagram, the training set's class-count profile, limitations and the paper's BibTeX.
Numbers measured by this package and numbers reported by the paper go into separate tables and only the measured
ones into the `model-index`. The caller gives the preprocessing sentence and the paper's numbers (the benchmark's
`Preprocessing.description()` and `paper_results` in `mislas_hf.data.BENCHMARKS`); this module knows no benchmark.
The card's sections are written by `mislas_hf.modelcard_sections`, its metrics read and shown by
`mislas_hf.modelcard_metrics`; `mislas_hf.hub_upload` uploads the folder with its card.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path, PurePosixPath

from huggingface_hub import EvalResult, ModelCard, ModelCardData, get_token

from .modelcard_metrics import CARD_METRICS, card_metric_value, metric_rows, normalize_metrics
from .modelcard_sections import TrainingLength, class_count_profile, labels_note, model_description

CARD_FILENAME = "README.md"
TAGS = ["image-classification", "long-tailed-recognition", "calibration", "mislas"]

BIBTEX = """@inproceedings{zhong2021mislas,
  title     = {Improving Calibration for Long-Tailed Recognition},
  author    = {Zhong, Zhisheng and Cui, Jiequan and Liu, Shu and Jia, Jiaya},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""

TOKEN_SETTING = re.compile(r"^(\s*[\w.-]*token\s*:)(?![ \t]*(?:null|~|None|''|\"\")?[ \t]*$)[ \t]*(.+)$", re.I | re.M)
HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
REDACTED = "<redacted>"


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
    training: TrainingLength | None = None,
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
        training: how long the weights were trained, stated above the configuration (whose epochs `--max_steps`
            may have overridden); None for weights not trained by the job that writes the card (evaluated,
            calibrated or converted): the card then states no length of training.

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
        f"A MiSLAS image classifier ({model_config.backbone_name}, stage {model_config.stage}) for {dataset_name}, "
        f"a long-tailed benchmark; the model is trained to give calibrated confidences, and its expected "
        f"calibration error is reported with its accuracy."
    )
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        title=model_id.split("/")[-1],
        summary=summary,
        description=model_description(model_config),
        labels_note=labels_note(model_config),
        model_id=model_id,
        preprocessing=preprocessing.strip().rstrip("."),
        provenance=provenance.strip(),
        training_config_yaml=training_config_yaml.strip() if training_config_yaml else None,
        training_length=training.description() if training is not None else None,
        dataset_name=dataset_name,
        measured_rows=metric_rows(measured, n_bins),
        calibration_rows=metric_rows(measured, n_bins, table="calibration"),
        paper_rows=metric_rows(paper, n_bins),
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


__all__ = [
    "BIBTEX",
    "CARD_FILENAME",
    "build_model_card",
    "redact_tokens",
    "write_model_card",
]
