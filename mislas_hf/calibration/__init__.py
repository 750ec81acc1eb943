"""Accuracy and calibration of MiSLAS (Zhong et al., CVPR 2021) classifiers, in four modules:

* :mod:`~mislas_hf.calibration.metrics`: the metrics and their binning (read its docstring for how the ECE bins
  differ from the authors' code and from torchmetrics): :func:`calibration_bins` / :class:`CalibrationBins`, the
  ECE family (top-1, maximum, classwise, adaptive), the Brier score, the NLL, top-k accuracy, the Many / Medium /
  Few :func:`class_groups`, :func:`calibration_metrics` and its ``Trainer`` callback :func:`compute_metrics`.
* :mod:`~mislas_hf.calibration.temperature`: post-hoc temperature scaling (Guo et al., ICML 2017) fit on held-out
  data, scalar (:func:`fit_temperature`, optionally with per-image weights) and class-wise
  (:func:`fit_classwise_temperatures`).
* :mod:`~mislas_hf.calibration.label_shift`: calibration under label shift (the test prior differs from the
  training and hold-out priors): source priors (:func:`effective_training_prior`, :func:`model_source_prior`), the
  hold-out weights of balanced temperature scaling (:func:`prior_weights`), logit biases (:func:`prior_correction`,
  :func:`logit_adjustment`, :func:`apply_calibration`), fits (:func:`fit_logit_adjustment`,
  :func:`fit_bias_corrected_temperature`) and the EM estimate of a test prior (:func:`estimate_target_prior`).
* :mod:`~mislas_hf.calibration.plots`: reliability diagrams as in the paper's Figs. 1 and 4
  (:func:`draw_reliability_diagram`, :func:`reliability_diagram`, :func:`combine_reliability_diagrams`).

Every public name is re-exported here, so ``from mislas_hf.calibration import X`` works for all of them;
:func:`check_class_counts` lives in :mod:`mislas_hf.class_counts`, the only other module of ``mislas_hf`` this
package depends on, and is re-exported for the code that imported it from here.
"""

from ..class_counts import check_class_counts
from .label_shift import (
    BiasCorrectedTemperature,
    LogitAdjustment,
    PriorEstimate,
    apply_calibration,
    class_prior,
    effective_training_prior,
    estimate_target_prior,
    fit_bias_corrected_temperature,
    fit_logit_adjustment,
    logit_adjustment,
    model_source_prior,
    prior_correction,
    prior_weights,
)
from .metrics import (
    CalibrationBins,
    adaptive_expected_calibration_error,
    brier_score,
    calibration_bins,
    calibration_metrics,
    class_groups,
    classwise_expected_calibration_error,
    compute_metrics,
    confidence_and_correctness,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    top_k_accuracy,
)
from .plots import combine_reliability_diagrams, draw_reliability_diagram, reliability_diagram
from .temperature import fit_classwise_temperatures, fit_temperature

__all__ = [
    # metrics
    "CalibrationBins",
    "adaptive_expected_calibration_error",
    "brier_score",
    "calibration_bins",
    "calibration_metrics",
    "class_groups",
    "classwise_expected_calibration_error",
    "compute_metrics",
    "confidence_and_correctness",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "top_k_accuracy",
    # temperature
    "fit_classwise_temperatures",
    "fit_temperature",
    # label shift
    "BiasCorrectedTemperature",
    "LogitAdjustment",
    "PriorEstimate",
    "apply_calibration",
    "class_prior",
    "effective_training_prior",
    "estimate_target_prior",
    "fit_bias_corrected_temperature",
    "fit_logit_adjustment",
    "logit_adjustment",
    "model_source_prior",
    "prior_correction",
    "prior_weights",
    # plots
    "combine_reliability_diagrams",
    "draw_reliability_diagram",
    "reliability_diagram",
    # mislas_hf.class_counts
    "check_class_counts",
]
