"""Post-hoc temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017), fit on
held-out data by the NLL: one scalar temperature (:func:`fit_temperature`), or one per class regularised towards
it (:func:`fit_classwise_temperatures`).
"""

import math
import numbers

import torch

from .metrics import _check_scores_and_labels


def _scaled_nll(logits, labels, log_temperatures):
    """Mean NLL of ``softmax(logits / exp(log_temperatures))`` (float64 tensors)."""
    return torch.nn.functional.cross_entropy(logits / log_temperatures.exp(), labels)


def _fit_log_temperatures(logits, labels, num_temperatures, penalty=None):
    """log T minimising the mean NLL of ``softmax(z / T)`` (plus ``penalty(log_T)``), by L-BFGS in float64.

    ``num_temperatures`` is 1 (one T for all logits) or K (``T_k`` divides the logit of class k). Optimising
    log T keeps every T positive."""
    logits_tensor, labels_tensor = torch.from_numpy(logits), torch.from_numpy(labels)
    log_temperatures = torch.zeros(num_temperatures, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_temperatures], lr=1.0, max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = _scaled_nll(logits_tensor, labels_tensor, log_temperatures)
        if penalty is not None:
            loss = loss + penalty(log_temperatures)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_temperatures.detach()


def fit_temperature(logits, labels):
    """Temperature scaling (Guo et al., ICML 2017): the scalar T > 0 minimising the mean NLL of
    ``softmax(logits / T)`` on held-out data, never on the test set.

    The NLL is convex in 1 / T, so a minimum is unique; it is found by L-BFGS on log T (strong-Wolfe line
    search, float64, gradient tolerance 1e-12). Raises ``ValueError`` when there is no minimum at a finite
    positive T: held-out predictions all correct with separable logits (the NLL falls towards 0 as T -> 0), or
    logits that rank the true class no better than chance on the held-out data (the NLL is flat, or falls towards
    log K as T -> infinity).

    Args:
        logits: ``[N, K]`` held-out logits of the uncalibrated model.
        labels: ``[N]`` integer labels.

    Returns:
        T as a float (T > 1 softens over-confident predictions).
    """
    logits, labels = _check_scores_and_labels(logits, labels, "logits")
    log_temperature = _fit_log_temperatures(logits, labels, 1)
    logits_tensor, labels_tensor = torch.from_numpy(logits), torch.from_numpy(labels)
    at_minimum, below, above = (
        _scaled_nll(logits_tensor, labels_tensor, log_temperature + step).item() for step in (0.0, -0.01, 0.01)
    )
    if not (below > at_minimum < above and math.isfinite(at_minimum)):
        raise ValueError(
            f"the held-out NLL has no minimum at a finite positive temperature (it still falls or is flat at "
            f"T = {math.exp(log_temperature.item()):.3g}): the held-out predictions are all correct and separable "
            "(T -> 0), or the logits rank the true class no better than chance on the held-out images (T -> infinity, "
            "uniform probabilities); check the model, or fit on a larger held-out split"
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
