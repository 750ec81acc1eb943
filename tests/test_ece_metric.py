"""The `evaluate` ECE module in mislas_hf/metrics/ece loads offline and matches mislas_hf.calibration."""

from pathlib import Path

import evaluate
import numpy as np
import pytest

from mislas_hf.calibration import confidence_and_correctness, expected_calibration_error

METRIC_DIR = Path(__file__).resolve().parents[1] / "mislas_hf" / "metrics" / "ece"


@pytest.fixture(scope="module")
def ece_metric():
    return evaluate.load(str(METRIC_DIR))


def random_probabilities(seed, n=500, k=10):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 3
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True), rng.integers(0, k, n)


def test_matches_expected_calibration_error(ece_metric):
    probabilities, labels = random_probabilities(0)
    expected = expected_calibration_error(*confidence_and_correctness(probabilities, labels))
    result = ece_metric.compute(predictions=probabilities.tolist(), references=labels.tolist())
    assert set(result) == {"ece"}
    assert result["ece"] == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected < 1.0


def test_float32_array_and_batches(ece_metric):
    probabilities, labels = random_probabilities(1)
    probabilities = probabilities.astype(np.float32)
    expected = expected_calibration_error(*confidence_and_correctness(probabilities, labels), n_bins=10)
    for start in range(0, 500, 128):
        ece_metric.add_batch(predictions=probabilities[start:start + 128], references=labels[start:start + 128])
    assert ece_metric.compute(n_bins=10)["ece"] == pytest.approx(expected, abs=1e-9)


def test_hand_values(ece_metric):
    # 15 bins: confidences 0.9 (right) and 0.8 (predicts class 1, wrong): (0.1 + 0.8) / 2.
    assert ece_metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])["ece"] == pytest.approx(0.45)
    # 4 bins, (a, b]: 0.5 right | 0.75 wrong, 0.6 wrong | 1.0 right, 1.0 wrong, 0.9 right -> 2.75 / 6.
    predictions = [[0.5, 0.3, 0.2], [0.75, 0.2, 0.05], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.9, 0.05, 0.05],
                   [0.6, 0.3, 0.1]]
    result = ece_metric.compute(predictions=predictions, references=[0, 1, 0, 2, 0, 1], n_bins=4)
    assert result["ece"] == pytest.approx(2.75 / 6, abs=1e-12)


def test_rejects_logits(ece_metric):
    with pytest.raises(ValueError, match="logits"):
        ece_metric.compute(predictions=[[3.0, -1.0]], references=[0])
