"""Post-hoc temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017), fit on
held-out data by the NLL: one scalar temperature (:func:`fit_temperature`), or one per class regularised towards
it (:func:`fit_classwise_temperatures`).
"""

import math
import numbers

import numpy as np
import torch

from ..class_counts import _to_numpy
from .metrics import _check_scores_and_labels


def _check_sample_weight(sample_weight, num_samples):
    """float64 ``[N]`` tensor of per-image weights (finite, >= 0, not all 0), or None for equal weights."""
    if sample_weight is None:
        return None
    weights = _to_numpy(sample_weight, "sample_weight", np.float64)
    if weights.shape != (num_samples,):
        raise ValueError(
            f"sample_weight must have shape [{num_samples}] (one weight per held-out image), got shape {weights.shape}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(
            "sample_weight must be finite and non-negative with a positive sum (e.g. "
            "mislas_hf.calibration.prior_weights(labels, num_classes)); found a negative, NaN or infinite weight, "
            "or all zeros"
        )
    return torch.from_numpy(weights)


def _weighted_nll(logits, labels, weights=None):
    """Mean NLL of ``softmax(logits)`` (float64 tensors); with ``weights`` ``[N]``, ``sum_i w_i nll_i / sum_i w_i``."""
    if weights is None:
        return torch.nn.functional.cross_entropy(logits, labels)
    return torch.sum(weights * torch.nn.functional.cross_entropy(logits, labels, reduction="none")) / weights.sum()


def _scaled_nll(logits, labels, log_temperatures, weights=None):
    """(Weighted) mean NLL of ``softmax(logits / exp(log_temperatures))`` (float64 tensors)."""
    return _weighted_nll(logits / log_temperatures.exp(), labels, weights)


def _minimise(objective, parameters):
    """Minimise ``objective()`` over the float64 leaf tensors ``parameters`` in place, by L-BFGS (strong-Wolfe line
    search, at most 1000 iterations, gradient tolerance 1e-12)."""
    optimizer = torch.optim.LBFGS(
        parameters, lr=1.0, max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)


def _fit_log_temperatures(logits, labels, num_temperatures, penalty=None, weights=None):
    """log T minimising the (weighted) mean NLL of ``softmax(z / T)`` (plus ``penalty(log_T)``), by L-BFGS in
    float64.

    ``num_temperatures`` is 1 (one T for all logits) or K (``T_k`` divides the logit of class k). Optimising
    log T keeps every T positive."""
    logits_tensor, labels_tensor = torch.from_numpy(logits), torch.from_numpy(labels)
    log_temperatures = torch.zeros(num_temperatures, dtype=torch.float64, requires_grad=True)

    def objective():
        loss = _scaled_nll(logits_tensor, labels_tensor, log_temperatures, weights)
        return loss if penalty is None else loss + penalty(log_temperatures)

    _minimise(objective, [log_temperatures])
    return log_temperatures.detach()


def fit_temperature(logits, labels, sample_weight=None):
    """Temperature scaling (Guo et al., ICML 2017): the scalar T > 0 minimising the mean NLL of
    ``softmax(logits / T)`` on held-out data, never on the test set.

    With ``sample_weight`` the NLL is the weighted mean ``sum_i w_i nll_i / sum_i w_i``. Weights
    ``w_i = pi_target(y_i) / pi_holdout(y_i)`` (:func:`~mislas_hf.calibration.prior_weights`) make a long-tailed
    hold-out stand for a test set with class prior ``pi_target`` (balanced temperature scaling, see
    :mod:`~mislas_hf.calibration.label_shift`): the unweighted T is the head classes' T.

    The NLL is convex in 1 / T, so a minimum is unique; it is found by L-BFGS on log T (strong-Wolfe line
    search, float64, gradient tolerance 1e-12). Raises ``ValueError`` when there is no minimum at a finite
    positive T: held-out predictions all correct with separable logits (the NLL falls towards 0 as T -> 0), or
    logits that rank the true class no better than chance on the held-out data (the NLL is flat, or falls towards
    log K as T -> infinity).

    Args:
        logits: ``[N, K]`` held-out logits of the uncalibrated model.
        labels: ``[N]`` integer labels.
        sample_weight: optional ``[N]`` non-negative weights, one per held-out image.

    Returns:
        T as a float (T > 1 softens over-confident predictions).
    """
    logits, labels = _check_scores_and_labels(logits, labels, "logits")
    weights = _check_sample_weight(sample_weight, len(labels))
    log_temperature = _fit_log_temperatures(logits, labels, 1, weights=weights)
    logits_tensor, labels_tensor = torch.from_numpy(logits), torch.from_numpy(labels)
    at_minimum, below, above = (
        _scaled_nll(logits_tensor, labels_tensor, log_temperature + step, weights).item()
        for step in (0.0, -0.01, 0.01)
    )
    if not (below > at_minimum < above and math.isfinite(at_minimum)):
        raise ValueError(
            f"the held-out NLL has no minimum at a finite positive temperature (it still falls or is flat at "
            f"T = {math.exp(log_temperature.item()):.3g}) on these {len(labels)} held-out images (top-1 accuracy "
            f"{100 * (logits.argmax(axis=1) == labels).mean():.1f}%): their predictions are all correct and separable "
            "(T -> 0), or the logits rank the true class no better than chance on them (T -> infinity, uniform "
            "probabilities); more held-out images, or a better-trained model, would help"
        )
    return math.exp(log_temperature.item())


def fit_classwise_temperatures(logits, labels, regularization=5.0):
    """Class-wise temperature scaling: one ``T_k > 0`` per class, the logit of class k divided by ``T_k``, all K
    fit jointly by the NLL of ``softmax(z / T)`` on held-out data.

    On long-tailed data the held-out split is long-tailed too, so tail classes have a handful of images (or none).
    Their temperatures are regularised towards the scalar temperature ``T`` of :func:`fit_temperature`: the
    objective is ``mean NLL + regularization / N * sum_k (log T_k - log T)^2``, i.e. a Gaussian prior on
    ``log T_k`` centred on ``log T`` that weighs like ``regularization`` held-out images (default 5). A class
    with many held-out images moves away from ``T`` as its data say; for a class with none, the data (its logit
    in every softmax denominator) alone would drive ``T_k`` to 0 (or infinity), and the prior keeps it finite.
    ``regularization`` must therefore be positive.

    Args:
        logits: ``[N, K]`` held-out logits of the uncalibrated model.
        labels: ``[N]`` integer labels.
        regularization: weight of the pull of ``log T_k`` towards ``log T``, in held-out images (> 0).

    Returns:
        ``[K]`` float64 array of temperatures.
    """
    logits, labels = _check_scores_and_labels(logits, labels, "logits")
    if isinstance(regularization, bool) or not isinstance(regularization, numbers.Real) or not regularization > 0:
        raise ValueError(
            f"regularization must be a positive number (held-out images of prior weight), got {regularization!r}: "
            "without the prior the temperature of a class with no held-out image runs off to 0 or infinity"
        )
    scalar_log_temperature = math.log(fit_temperature(logits, labels))
    weight = float(regularization) / len(labels)

    def penalty(log_temperatures):
        return weight * torch.sum(torch.square(log_temperatures - scalar_log_temperature))

    return _fit_log_temperatures(logits, labels, logits.shape[1], penalty).exp().numpy()
