"""Helpers shared by the tests of mislas_hf.calibration, as fixtures that return the helper function."""

import numpy as np
import pytest
import torch


def softmax64(logits):
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def random_predictions(seed, n=2000, k=10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n // 2), labels[: n // 2]] += 4.0  # half the samples lean towards the right class
    return logits, labels


@pytest.fixture(name="softmax64")
def softmax64_fixture():
    """``softmax64(logits)``: float64 softmax over the classes, by torch."""
    return softmax64


@pytest.fixture(name="random_predictions")
def random_predictions_fixture():
    """``random_predictions(seed, n=2000, k=10)``: ``[n, k]`` logits and ``[n]`` labels, half leaning right."""
    return random_predictions
