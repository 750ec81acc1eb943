"""Calibration under label shift: the class prior of the test data differs from the prior the model was trained for
and from the held-out split's.

A classifier trained by cross-entropy on a stream with class prior ``pi_s`` (the *source* prior) estimates
``p_s(y|x) ∝ p(x|y) pi_s(y)``. On data with prior ``pi_t`` and the same class-conditionals ``p(x|y)``, Bayes' rule
gives (Saerens, Latinne & Decaestecker, Neural Computation 2002)::

    p_t(y|x) ∝ p_s(y|x) pi_t(y) / pi_s(y),     i.e. the logits  z / T + log pi_t - log pi_s

once ``softmax(z / T)`` is a calibrated ``p_s(y|x)``. The temperature comes first, the prior correction after it:
that is the order :class:`~mislas_hf.MislasForImageClassification` applies, ``logits = z / T + b`` with
``T = config.temperature`` (one number, or one per class) and ``b = config.logit_bias`` (one number per class, or
None for none); :func:`apply_calibration` is the same formula for logits saved to disk.

What is here:

* Priors: :func:`class_prior` (counts to a prior), :func:`effective_training_prior` (the ``pi_s`` a loss and a
  sampler train the logits for; the trainer records it as ``config.source_prior``), :func:`model_source_prior`
  (``pi_s`` of a saved model, also of folders saved before ``source_prior`` was recorded).
* Held-out weights: :func:`prior_weights`, ``w_i = pi_target(y_i) / pi_holdout(y_i)``, for
  :func:`~mislas_hf.calibration.fit_temperature` ``(..., sample_weight=w)``: balanced temperature scaling.
* Logit biases: :func:`prior_correction` (``log pi_t - log pi_s``), :func:`logit_adjustment` (post-hoc logit
  adjustment of Menon et al., ICLR 2021, ``-tau log pi``).
* Fits on held-out logits: :func:`fit_logit_adjustment` (T and tau jointly, or tau alone) and
  :func:`fit_bias_corrected_temperature` (BCTS, Alexandari et al., ICML 2020: T and one bias per class).
* :func:`estimate_target_prior`: the EM of Saerens et al. (2002) for an unknown test prior.

Recipes (``z_h``, ``y_h``: held-out logits and labels; ``K`` classes; ``pi_s = model_source_prior(config)``):

1. Known test prior ``pi_t`` (None: uniform, a balanced test set). Weight the hold-out to the prior the logits are
   for, fit T, then correct the prior::

       T = fit_temperature(z_h, y_h, sample_weight=prior_weights(y_h, K, target_prior=pi_s))
       config.temperature, config.logit_bias = T, prior_correction(pi_s, pi_t).tolist()

   For MiSLAS (stage 2, class-aware sampler: ``pi_s`` uniform) and a balanced test set the bias is 0 and this is
   balanced temperature scaling, ``prior_weights(y_h, K)``: unweighted on a long-tailed hold-out, temperature
   scaling fits the head classes' T (docs/calibration.md: ECE 2.62 % -> 7.26 %). For a stage-1 model trained by
   cross-entropy ``pi_s`` is the training prior, which a stratified hold-out shares: the weights are ~1.
2. Post-hoc logit adjustment (Menon et al. 2021): ``b = logit_adjustment(pi_train, tau)``, tau = 1 by Bayes' rule
   for a stage-1 cross-entropy model and a balanced test set, or T and tau fit together on the hold-out weighted to
   the test prior: ``fit_logit_adjustment(z_h, y_h, pi_train, sample_weight=prior_weights(y_h, K))``.
3. Unknown test prior: calibrate on the hold-out, e.g. BCTS ``cal = fit_bias_corrected_temperature(z_h, y_h)``,
   whose probabilities are calibrated for the hold-out's prior ``pi_h = class_prior(np.bincount(y_h, minlength=K))``;
   estimate the test prior from the test probabilities, ``est = estimate_target_prior(softmax(z_test / cal.temperature
   + cal.logit_bias), pi_h)``; then ``config.temperature = cal.temperature`` and ``config.logit_bias =
   (cal.logit_bias + prior_correction(pi_h, est.prior)).tolist()``.

Every prior argument is a sequence of K positive numbers, normalised to sum 1 (class counts are accepted).
"""

from typing import NamedTuple

import numpy as np
import torch

from ..class_counts import _to_numpy, check_class_counts
from .metrics import _check_scores_and_labels
from .temperature import _check_sample_weight, _minimise, _weighted_nll


class LogitAdjustment(NamedTuple):
    """What :func:`fit_logit_adjustment` fit: logits ``z / temperature - tau * log(prior)``."""

    temperature: float
    tau: float


class BiasCorrectedTemperature(NamedTuple):
    """What :func:`fit_bias_corrected_temperature` fit: logits ``z / temperature + logit_bias``."""

    temperature: float
    logit_bias: np.ndarray


class PriorEstimate(NamedTuple):
    """What :func:`estimate_target_prior` found: the estimated class prior ``[K]``, the EM iterations it took,
    and whether the L1 change of the last iteration fell below the tolerance."""

    prior: np.ndarray
    iterations: int
    converged: bool


def class_prior(class_counts):
    """The class prior ``pi(y) = N_y / sum_j N_j`` of per-class counts (all positive), float64 ``[K]``."""
    counts = check_class_counts(class_counts)
    return counts / counts.sum()


def _checked_prior(prior, name, num_classes=None):
    """``prior`` as a float64 ``[K]`` array normalised to sum 1; None means uniform (then ``num_classes`` is K)."""
    if prior is None:
        return np.full(num_classes, 1.0 / num_classes)
    values = _to_numpy(prior, name, np.float64)
    if values.ndim != 1 or (num_classes is not None and values.shape[0] != num_classes):
        expected = "K" if num_classes is None else num_classes
        raise ValueError(f"{name} must hold one number per class ({expected}), got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"{name} must be positive and finite for every class (its log enters the logits): give a class with "
            "no images a small positive prior instead of 0"
        )
    return values / values.sum()


def effective_training_prior(class_counts, class_balanced_stream=False, logit_adjustment_tau=0.0, class_weights=None):
    """The source prior ``pi_s`` that training makes the logits ``z`` stand for: ``softmax(z)(y) ∝ p(x|y) pi_s(y)``.

    The minimiser of the expected loss ``E_stream[w_y CE(z + tau log pi_train, y)]`` is
    ``softmax(z + tau log pi_train)(y) ∝ w_y pi_stream(y) p(x|y)``, so::

        pi_s(y) ∝ pi_stream(y) * w_y * pi_train(y) ** (-tau)

    with ``pi_train`` the training counts' prior, ``pi_stream`` the prior of the batches (``pi_train`` for the
    instance sampling of stage 1, uniform for the class-aware sampler of stage 2), ``w_y`` the class weights of a
    weighted cross-entropy (CB-CE; 1 otherwise) and ``tau`` the logit adjustment of the training loss (Menon et al.,
    ICLR 2021; 0 otherwise). So a stage-1 model trained with cross-entropy has ``pi_s = pi_train``, with the
    logit-adjusted loss at tau = 1 (Balanced Softmax) ``pi_s`` uniform; a stage-2 model on the class-aware stream
    ``pi_s`` uniform, and with the logit-adjusted loss there ``pi_s ∝ pi_train ** -tau`` (the adjustment balances a
    stream that is balanced already). Mixup keeps the stream's label frequencies; label-aware smoothing is counted as
    cross-entropy (it softens the targets, it does not reweight the classes).

    Args:
        class_counts: training images per class ``[K]``.
        class_balanced_stream: whether batches come from a class-balanced sampler (stage 2).
        logit_adjustment_tau: tau of the logit-adjusted loss (0: plain cross-entropy).
        class_weights: optional ``[K]`` positive per-class loss weights.

    Returns:
        float64 ``[K]`` prior, summing to 1.
    """
    train_prior = class_prior(class_counts)
    log_prior = (0.0 if class_balanced_stream else np.log(train_prior)) - logit_adjustment_tau * np.log(train_prior)
    if class_weights is not None:
        log_prior = log_prior + np.log(_checked_prior(class_weights, "class_weights", len(train_prior)))
    prior = np.exp(log_prior - log_prior.max())
    return prior / prior.sum()


def model_source_prior(config):
    """The source prior ``pi_s`` of a saved MiSLAS model from its config (``MislasConfig``).

    ``config.source_prior`` when recorded (the trainer records :func:`effective_training_prior` of its stage and
    loss). Folders saved before it was recorded: stage 1 (instance sampling, cross-entropy) ->
    ``class_prior(config.class_counts)``; stage 2 (class-aware sampler) -> uniform.

    Returns:
        float64 ``[K]`` prior, summing to 1.
    """
    if config.source_prior is not None:
        return _checked_prior(config.source_prior, "config.source_prior", config.num_labels)
    if config.stage >= 2:
        return np.full(config.num_labels, 1.0 / config.num_labels)
    if config.class_counts is None:
        raise ValueError(
            "the model's config records neither source_prior nor class_counts, so the class prior its stage-1 "
            "logits were trained for is unknown: set config.source_prior (e.g. class_prior(training counts))"
        )
    return class_prior(config.class_counts)


def prior_weights(labels, num_classes, target_prior=None):
    """Per-image weights ``w_i = pi_target(y_i) / pi_holdout(y_i)`` that make a held-out split with class
    frequencies ``pi_holdout`` stand for data with class prior ``pi_target`` (importance weights under label shift):
    the weighted mean of a per-image loss estimates its mean under ``pi_target``. Pass them as ``sample_weight``.

    A class with no held-out image gets no weight (there is no image to carry it): the weighted data then stand for
    ``pi_target`` renormalised over the classes present.

    Args:
        labels: ``[N]`` integer held-out labels in ``[0, num_classes)``.
        num_classes: K.
        target_prior: ``[K]`` prior to stand for; None: uniform (a balanced test set).

    Returns:
        float64 ``[N]`` weights.
    """
    labels = _to_numpy(labels, "labels")
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty 1-D array of integer class indices, got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    target = _checked_prior(target_prior, "target_prior", num_classes)
    holdout = np.bincount(labels, minlength=num_classes) / len(labels)
    return target[labels] / holdout[labels]


def prior_correction(source_prior, target_prior=None):
    """The logit bias ``log pi_target - log pi_source`` that turns calibrated posteriors under ``pi_source`` into
    posteriors under ``pi_target`` (Bayes' rule; Saerens et al. 2002). Add it after the temperature:
    ``z / T + bias``.

    Args:
        source_prior: ``[K]`` prior the (temperature-scaled) logits are calibrated for (:func:`model_source_prior`).
        target_prior: ``[K]`` prior of the test data; None: uniform.

    Returns:
        float64 ``[K]`` bias.
    """
    source = _checked_prior(source_prior, "source_prior")
    return np.log(_checked_prior(target_prior, "target_prior", len(source))) - np.log(source)


def logit_adjustment(prior, tau=1.0):
    """Post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021): the
    logit bias ``-tau * log(prior)``, so that ``argmax_y z_y - tau log pi_train(y)`` is the balanced-error Bayes
    classifier at tau = 1. Equals ``prior_correction(prior)`` up to a constant at tau = 1.

    Args:
        prior: ``[K]`` training prior ``pi_train`` (or its counts).
        tau: scaling of the adjustment (1: Bayes-optimal for a balanced test set, 0: none; a fit may give any
            finite value).

    Returns:
        float64 ``[K]`` bias.
    """
    if not np.isfinite(tau):
        raise ValueError(f"tau={tau} must be a finite number (1: the Bayes-optimal adjustment, 0: none)")
    return -tau * np.log(_checked_prior(prior, "prior"))


def apply_calibration(logits, temperature=1.0, logit_bias=None):
    """The calibrated logits ``z / T + b`` that :class:`~mislas_hf.MislasForImageClassification` returns for
    ``config.temperature = T`` and ``config.logit_bias = b``, for logits ``z`` computed without them.

    Args:
        logits: ``[N, K]`` logits.
        temperature: T > 0, one number or ``[K]`` (T_k divides the logit of class k).
        logit_bias: optional ``[K]`` bias added after the temperature.

    Returns:
        float64 ``[N, K]`` array.
    """
    logits = _to_numpy(logits, "logits", np.float64)
    temperature = _to_numpy(temperature, "temperature", np.float64)
    if logits.ndim != 2 or temperature.shape not in ((), (logits.shape[1],)):
        raise ValueError(
            f"logits must be [N, K] and temperature one number or one per class; got logits {logits.shape}, "
            f"temperature {temperature.shape}"
        )
    if not np.all(np.isfinite(temperature)) or np.any(temperature <= 0):
        raise ValueError(f"temperature={temperature.tolist()} must be positive and finite")
    scaled = logits / temperature
    if logit_bias is None:
        return scaled
    bias = _to_numpy(logit_bias, "logit_bias", np.float64)
    if bias.shape != (logits.shape[1],) or not np.all(np.isfinite(bias)):
        raise ValueError(f"logit_bias must hold {logits.shape[1]} finite numbers (one per class), got {bias.shape}")
    return scaled + bias


def _fit_affine(logits, labels, weights, parameters, calibrated_logits, inverse_temperature):
    """Minimise the (weighted) held-out NLL of ``softmax(calibrated_logits(z))`` over ``parameters`` (float64 leaf
    tensors, changed in place). When the ``[1]`` tensor ``inverse_temperature`` (1 / T) is among them, check that a
    step of 1 % in it raises the NLL: ``ValueError`` when there is no minimum at a finite positive temperature."""
    z, y = torch.from_numpy(logits), torch.from_numpy(labels)

    def objective():
        return _weighted_nll(calibrated_logits(z), y, weights)

    _minimise(objective, parameters)
    if not inverse_temperature.requires_grad:
        return
    with torch.no_grad():
        at_minimum = objective().item()
        neighbours = []
        for factor in (0.99, 1.01):
            inverse_temperature.mul_(factor)
            neighbours.append(objective().item())
            inverse_temperature.div_(factor)
    if not (inverse_temperature.item() > 0 and np.isfinite(at_minimum) and min(neighbours) > at_minimum):
        raise ValueError(
            "the held-out NLL has no minimum at a finite positive temperature (1 / T = "
            f"{inverse_temperature.item():.3g}) on these {len(labels)} held-out images (top-1 accuracy "
            f"{100 * (logits.argmax(axis=1) == labels).mean():.1f}%): their predictions are all correct and separable "
            "(T -> 0), or the logits rank the true class no better than chance on them (T -> infinity); more "
            "held-out images, or a better-trained model, would help"
        )


def fit_logit_adjustment(logits, labels, prior, sample_weight=None, temperature=None):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021) fit on held-out data: the tau, and the temperature T
    unless given, minimising the (weighted) mean NLL of ``softmax(z / T - tau * log(prior))``.

    T and tau are fit jointly (the NLL is convex in ``(1 / T, tau)``: every local minimum is global), not one after
    the other: a temperature fit first would absorb part of the prior shift. With ``temperature`` given (e.g. 1.0, or
    a T fit before) only tau is fit. Weight the hold-out to the test prior (``sample_weight=prior_weights(labels, K,
    target_prior)``): unweighted, the fit is for the hold-out's own prior (tau ~ 0 for a stage-1 cross-entropy model
    on a stratified hold-out). Store the result as
    ``config.temperature = fit.temperature``, ``config.logit_bias = logit_adjustment(prior, fit.tau).tolist()``.

    Args:
        logits: ``[N, K]`` held-out logits of the uncalibrated model.
        labels: ``[N]`` integer labels.
        prior: ``[K]`` training prior ``pi_train`` (or the training counts).
        sample_weight: optional ``[N]`` non-negative weights, one per held-out image.
        temperature: a fixed T > 0; None: fit T too.

    Returns:
        :class:`LogitAdjustment` ``(temperature, tau)``.
    """
    logits, labels = _check_scores_and_labels(logits, labels, "logits")
    weights = _check_sample_weight(sample_weight, len(labels))
    log_prior = torch.from_numpy(np.log(_checked_prior(prior, "prior", logits.shape[1])))
    if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature} must be a positive number, or None to fit it")
    inverse_temperature = torch.tensor([1.0 if temperature is None else 1.0 / temperature], dtype=torch.float64,
                                       requires_grad=temperature is None)
    tau = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    parameters = [inverse_temperature, tau] if temperature is None else [tau]
    _fit_affine(
        logits, labels, weights, parameters, lambda z: z * inverse_temperature - tau * log_prior, inverse_temperature
    )
    return LogitAdjustment(1.0 / inverse_temperature.item(), tau.item())


def fit_bias_corrected_temperature(logits, labels, sample_weight=None):
    """Bias-corrected temperature scaling (BCTS; Alexandari, Kundaje & Shrikumar, "Maximum likelihood with
    bias-corrected calibration is hard-to-beat at label shift adaptation", ICML 2020): a temperature T and
    one bias per class, minimising the (weighted) mean held-out NLL of ``softmax(z / T + b)``. Convex in
    ``(1 / T, b)``; b is returned centred (mean 0), the softmax being blind to a common shift.

    The probabilities ``softmax(z / T + b)`` are calibrated for the hold-out's class prior (with ``sample_weight``,
    for the prior the weights stand for): that is the source prior to give :func:`estimate_target_prior`.

    Args:
        logits: ``[N, K]`` held-out logits of the uncalibrated model.
        labels: ``[N]`` integer labels; every class needs held-out images of positive weight (a class without
            any would get a bias of -infinity).
        sample_weight: optional ``[N]`` non-negative weights, one per held-out image.

    Returns:
        :class:`BiasCorrectedTemperature` ``(temperature, logit_bias)``, the bias a float64 ``[K]`` array.
    """
    logits, labels = _check_scores_and_labels(logits, labels, "logits")
    weights = _check_sample_weight(sample_weight, len(labels))
    num_classes = logits.shape[1]
    class_weight = np.bincount(labels, weights=None if weights is None else weights.numpy(), minlength=num_classes)
    if np.any(class_weight <= 0):
        missing = np.flatnonzero(class_weight <= 0)
        raise ValueError(
            f"class {missing[0]} ({len(missing)} class(es) in all) has no held-out image of positive weight: BCTS "
            "fits one bias per class from its images; use a larger held-out split, or fit_temperature"
        )
    inverse_temperature = torch.ones(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    _fit_affine(
        logits, labels, weights, [inverse_temperature, bias], lambda z: z * inverse_temperature + bias,
        inverse_temperature,
    )
    centred = bias.detach().numpy()
    return BiasCorrectedTemperature(1.0 / inverse_temperature.item(), centred - centred.mean())


def estimate_target_prior(probabilities, source_prior, tolerance=1e-6, max_iterations=1000):
    """The class prior of unlabelled test data by expectation-maximisation (Saerens, Latinne & Decaestecker,
    "Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 2002).

    From ``pi^(0) = pi_s``, each iteration re-weights the calibrated posteriors (E step) and averages them (M step)::

        p^(k)(y|x_i) = p_s(y|x_i) pi^(k)(y) / pi_s(y) / sum_j p_s(j|x_i) pi^(k)(j) / pi_s(j)
        pi^(k+1)(y)  = mean_i p^(k)(y|x_i)

    until the L1 change ``sum_y |pi^(k+1)(y) - pi^(k)(y)|`` is below ``tolerance``. Each step raises the likelihood
    of the test data; the fixed point is its maximum-likelihood prior, if ``probabilities`` are calibrated.

    Args:
        probabilities: ``[N, K]`` calibrated posteriors ``p_s(y|x)`` of the test images (rows sum to 1), e.g. the
            softmax of BCTS-calibrated logits (:func:`fit_bias_corrected_temperature`).
        source_prior: ``[K]`` prior the probabilities are calibrated for (the hold-out's, for a calibrator fit on
            the unweighted hold-out; :func:`model_source_prior` for the model's own probabilities).
        tolerance: L1 change at which to stop (> 0).
        max_iterations: most EM iterations (>= 1).

    Returns:
        :class:`PriorEstimate` ``(prior, iterations, converged)``.
    """
    probabilities = _to_numpy(probabilities, "probabilities", np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(f"probabilities must have shape [N, K] with N >= 1, got shape {probabilities.shape}")
    if (not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0)
            or not np.allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-6)):
        raise ValueError(
            "probabilities must be non-negative rows that sum to 1: pass the softmax of the calibrated logits, "
            "not the logits"
        )
    source = _checked_prior(source_prior, "source_prior", probabilities.shape[1])
    if not tolerance > 0 or int(max_iterations) != max_iterations or max_iterations < 1:
        raise ValueError(
            f"tolerance={tolerance} must be > 0 and max_iterations={max_iterations} an integer >= 1"
        )
    prior = source
    for iteration in range(1, int(max_iterations) + 1):
        adjusted = probabilities * (prior / source)
        adjusted /= adjusted.sum(axis=1, keepdims=True)
        updated = adjusted.mean(axis=0)
        change = np.abs(updated - prior).sum()
        prior = updated
        if change < tolerance:
            return PriorEstimate(prior, iteration, True)
    return PriorEstimate(prior, int(max_iterations), False)
