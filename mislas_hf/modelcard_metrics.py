"""The metrics a MiSLAS model card shows (`CARD_METRICS`), read from a metrics dict and shown the way people read them.

Metrics are fractions in code (as `mislas_hf.calibration.calibration_metrics` returns them, or `Trainer.evaluate`
with its `eval_` prefix); `normalize_metrics` checks and collects them, and the card shows accuracies and the ECE
family in percent rounded to 2 decimals (`card_metric_value`), NLL in nats and the Brier score rounded to 4, in two
tables (`metric_rows`): the paper's metrics, and the long-tailed calibration metrics (classwise and adaptive ECE,
ECE per Many / Medium / Few group, Brier score).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass


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


def metric_rows(values: dict, n_bins: int, table: str = "main") -> list[tuple[str, str]]:
    """The rows (name, shown value) of the card's `table` ("main" or "calibration") for the card metrics
    in `values` (fractions, as `normalize_metrics` returns them), in `CARD_METRICS` order."""
    rows = []
    for metric in CARD_METRICS:
        if metric.key in values and metric.table == table:
            shown = card_metric_value(metric.key, values[metric.key])
            rows.append((metric.name.format(n_bins=n_bins), f"{shown:.2f}" if metric.percent else f"{shown:.4f}"))
    return rows


__all__ = [
    "CARD_METRICS",
    "REQUIRED_METRICS",
    "CardMetric",
    "card_metric_value",
    "metric_rows",
    "normalize_metrics",
]
