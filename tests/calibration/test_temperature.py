"""Tests of mislas_hf.calibration.temperature: temperature scaling recovers known temperatures and minimises the NLL."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mislas_hf.calibration.temperature import fit_classwise_temperatures, fit_temperature


def overconfident_logits(true_temperature, seed=0):
    """Logits whose label frequencies match softmax(z) exactly (rows repeated with labels in the proportions of
    their probabilities), then multiplied by `true_temperature`: the NLL of softmax(z' / T) is minimal at exactly
    T = true_temperature, with no sampling noise."""
    rng = np.random.default_rng(seed)
    logits, labels = [], []
    for _ in range(60):
        label_counts = rng.integers(1, 6, size=5)  # 5 classes, each seen 1-5 times among this row's copies
        base = np.log(label_counts / label_counts.sum()) + rng.normal()
        for label, count in enumerate(label_counts):
            logits += [base * true_temperature] * count
            labels += [label] * count
    return np.array(logits), np.array(labels)


def nll_at(logits, labels, temperature):
    return F.cross_entropy(torch.as_tensor(logits / temperature), torch.as_tensor(labels)).item()


@pytest.mark.parametrize("true_temperature", [2.5, 0.7])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
    logits, labels = overconfident_logits(true_temperature)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(true_temperature, abs=1e-3)
    fitted_nll = nll_at(logits, labels, temperature)
    assert fitted_nll < nll_at(logits, labels, temperature * 1.1)
    assert fitted_nll < nll_at(logits, labels, temperature / 1.1)


def test_fit_temperature_minimises_nll_on_random_logits(random_predictions):
    logits, labels = random_predictions(30, n=500, k=10)
    logits = logits * 3  # over-confident
    temperature = fit_temperature(torch.as_tensor(logits).float(), torch.as_tensor(labels))
    grid = np.exp(np.linspace(np.log(temperature) - 0.05, np.log(temperature) + 0.05, 101))
    assert grid[np.argmin([nll_at(logits, labels, t) for t in grid])] == pytest.approx(temperature, rel=1e-3)
    assert temperature > 1


def test_fit_classwise_temperatures_recovers_known_temperatures_and_regularises_absent_classes():
    rng = np.random.default_rng(3)
    true_temperatures = np.array([0.8, 1.5, 2.0, 3.0, 1.2])
    logits, labels = overconfident_logits(1.0, seed=1)
    logits = logits * true_temperatures  # class k's logit over-confident by T_k
    temperatures = fit_classwise_temperatures(logits, labels, regularization=1e-6)  # a negligible prior
    np.testing.assert_allclose(temperatures, true_temperatures, atol=1e-3)
    # With the prior the log T_k sit closer to log T (scalar fit) in sum of squares, and the held-out NLL still beats
    # the scalar T's (both follow from the regularised objective's minimality).
    scalar = fit_temperature(logits, labels)
    regularised = fit_classwise_temperatures(logits, labels, regularization=50.0)
    assert np.sum(np.log(regularised / scalar) ** 2) < np.sum(np.log(temperatures / scalar) ** 2)
    assert nll_at(logits, labels, regularised) < nll_at(logits, labels, scalar)
    # A sixth class with no held-out image (its logit the lowest of every row): the data alone push T_6 towards 0;
    # the prior keeps it finite, and the stronger the prior the closer to the scalar T.
    absent = logits.min(axis=1, keepdims=True) - 2 + rng.normal(0, 0.5, size=(len(labels), 1))
    with_absent = np.concatenate([logits, absent], axis=1)
    scalar = fit_temperature(with_absent, labels)
    distances = []
    for regularization in (0.5, 5.0, 50.0):
        fitted = fit_classwise_temperatures(with_absent, labels, regularization)
        assert fitted.shape == (6,) and np.all(np.isfinite(fitted) & (fitted > 0))
        distances.append(abs(np.log(fitted[5] / scalar)))
    assert distances[0] > distances[1] > distances[2]


def test_fit_temperature_rejects_separable_held_out_data_and_bad_regularization():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    with pytest.raises(ValueError, match="no minimum at a finite positive temperature"):
        fit_temperature(logits, [0, 1])  # all correct, separable: the NLL falls towards 0 as T -> 0
    with pytest.raises(ValueError, match="no minimum at a finite positive temperature"):
        fit_temperature(np.zeros((4, 3)), [0, 1, 2, 0])  # flat NLL
    for regularization in (0.0, -1.0):
        with pytest.raises(ValueError, match="regularization must be a positive number"):
            fit_classwise_temperatures(logits, [0, 0], regularization=regularization)
