"""Tests of mislas_hf.calibration.label_shift: calibration when the held-out and test class priors differ."""

import numpy as np
import pytest

from mislas_hf.calibration import (
    apply_calibration,
    estimate_target_prior,
    fit_bias_corrected_temperature,
    fit_logit_adjustment,
    fit_temperature,
    logit_adjustment,
    prior_weights,
)

HOLDOUT_SHAPE = np.array([100, 30, 10, 3, 1])  # a long-tailed hold-out: class 0 about 70x class 4


def shifted_holdout(true_temperature, seed=0):
    """Held-out logits and labels under label shift, with no sampling noise.

    Each of 100 "images" x appears with every label y, ``c_y(x)`` times: a few copies of each class, many of one class
    per image, times ``HOLDOUT_SHAPE`` so that the hold-out's class frequencies ``pi_h`` are long-tailed. The label
    frequencies at x are the hold-out posterior; re-weighted by ``w_y = (1 / K) / pi_h(y)`` they are the posterior
    on balanced data, ``∝ c_y(x) w_y``. The logits are ``T* log(c_y(x) w_y)`` plus a shift per image, so
    ``softmax(z / T*)`` is exactly the balanced posterior and the hold-out posterior is ``softmax(z / T* - log w)``,
    which no temperature gives. Returns logits, labels and the hold-out prior ``pi_h``."""
    rng = np.random.default_rng(seed)
    num_classes = len(HOLDOUT_SHAPE)
    copies = rng.integers(1, 4, size=(100, num_classes))
    copies[np.arange(100), np.arange(100) % num_classes] *= rng.integers(5, 40, size=100)
    copies *= HOLDOUT_SHAPE
    holdout_prior = copies.sum(axis=0) / copies.sum()
    balancing = (1 / num_classes) / holdout_prior
    logits, labels = [], []
    for row in copies:
        z = true_temperature * np.log(row * balancing) + rng.normal()
        for label, count in enumerate(row):
            logits += [z] * count
            labels += [label] * count
    return np.array(logits), np.array(labels), holdout_prior


@pytest.mark.parametrize("true_temperature", [1.7, 0.7])
def test_weighted_temperature_scaling_recovers_the_temperature_where_unweighted_does_not(true_temperature):
    logits, labels, holdout_prior = shifted_holdout(true_temperature)
    assert holdout_prior[0] / holdout_prior[-1] > 50  # long-tailed hold-out, balanced target

    weights = prior_weights(labels, 5)
    np.testing.assert_allclose(weights, (1 / 5) / holdout_prior[labels], rtol=1e-12)

    assert fit_temperature(logits, labels, sample_weight=weights) == pytest.approx(true_temperature, abs=1e-3)
    # unweighted, the head classes' images dominate the NLL: the temperature is off by more than 10x the tolerance
    assert abs(fit_temperature(logits, labels) - true_temperature) > 0.01


def test_post_hoc_logit_adjustment_is_z_minus_tau_log_prior():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 5)) * 3
    counts = np.array([500, 120, 40, 9, 2])
    prior = counts / counts.sum()
    for tau in (0.5, 1.0, 1.7):
        np.testing.assert_allclose(
            apply_calibration(logits, logit_bias=logit_adjustment(prior, tau)), logits - tau * np.log(prior),
            rtol=0, atol=1e-12,
        )
    # after a temperature, the bias is added to z / T (the model's `z / T + logit_bias`)
    np.testing.assert_allclose(
        apply_calibration(logits, 1.6, logit_adjustment(prior, 1.0)), logits / 1.6 - np.log(prior), rtol=0, atol=1e-12
    )


def test_joint_fits_recover_the_temperature_and_the_prior_shift():
    """On the hold-out of `shifted_holdout`, whose posterior is softmax(z / T* - log w) = softmax(z / T* + log pi_h)
    up to a constant: post-hoc logit adjustment with the hold-out prior fits T* and tau = -1 unweighted, and tau = 0
    on the hold-out weighted to the balanced prior; BCTS fits T* and the bias log pi_h (centred)."""
    logits, labels, holdout_prior = shifted_holdout(1.7)
    unweighted = fit_logit_adjustment(logits, labels, holdout_prior)
    assert unweighted.temperature == pytest.approx(1.7, abs=1e-3) and unweighted.tau == pytest.approx(-1.0, abs=1e-3)
    balanced = fit_logit_adjustment(logits, labels, holdout_prior, sample_weight=prior_weights(labels, 5))
    assert balanced.temperature == pytest.approx(1.7, abs=1e-3) and balanced.tau == pytest.approx(0.0, abs=1e-3)

    bcts = fit_bias_corrected_temperature(logits, labels)
    log_prior = np.log(holdout_prior)
    assert bcts.temperature == pytest.approx(1.7, abs=1e-3)
    np.testing.assert_allclose(bcts.logit_bias, log_prior - log_prior.mean(), rtol=0, atol=1e-3)


def test_em_recovers_a_known_test_prior_from_a_calibrated_model():
    """A calibrated synthetic model: five 2-D Gaussian classes (unit variance), whose exact posteriors under the
    long-tailed source prior the model outputs; the test images are drawn under another prior."""
    means = 4.0 * np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]])
    source_prior = np.array([0.5, 0.25, 0.13, 0.08, 0.04])
    target_prior = np.array([0.05, 0.1, 0.2, 0.3, 0.35])
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=200_000, p=target_prior)
    points = means[labels] + rng.normal(size=(len(labels), 2))
    log_joint = -0.5 * np.sum((points[:, None, :] - means[None]) ** 2, axis=-1) + np.log(source_prior)
    posteriors = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
    posteriors /= posteriors.sum(axis=1, keepdims=True)

    estimate = estimate_target_prior(posteriors, source_prior, tolerance=1e-8)
    assert estimate.converged and 1 < estimate.iterations < 1000
    assert np.abs(estimate.prior - target_prior).sum() < 0.02
    # the model's own mean posterior (the first M step) is far from it: EM's re-weighting does the work
    assert np.abs(posteriors.mean(axis=0) - target_prior).sum() > 0.3


def test_prior_correction_turns_posteriors_under_the_source_prior_into_posteriors_under_the_target():
    """Bayes' rule written out: p_t(y|x) = p_s(y|x) pi_t(y) / pi_s(y), renormalised."""
    from mislas_hf.calibration import prior_correction

    rng = np.random.default_rng(3)
    source, target = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.2, 0.6])
    logits = rng.normal(size=(5, 3))
    p_source = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p_target = p_source * target / source
    p_target /= p_target.sum(1, keepdims=True)
    shifted = logits + prior_correction(source, target)
    np.testing.assert_allclose(np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True), p_target, atol=1e-12)
    np.testing.assert_allclose(prior_correction(source), np.log(np.full(3, 1 / 3)) - np.log(source), atol=1e-12)
