"""The `evaluate` modules in mislas_hf/metrics (ece, lt_calibration) load offline and match independent
computations (loops over bins, classes and examples written here, not the functions the modules wrap)."""

from pathlib import Path

import evaluate
import numpy as np
import pytest

METRICS_DIR = Path(__file__).resolve().parents[1] / "mislas_hf" / "metrics"


@pytest.fixture(scope="module")
def ece_metric():
    return evaluate.load(str(METRICS_DIR / "ece"))


@pytest.fixture(scope="module")
def lt_calibration_metric():
    return evaluate.load(str(METRICS_DIR / "lt_calibration"))


def random_probabilities(seed, n=500, k=10):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 3
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True), rng.integers(0, k, n)


def bin_ece(values, hits, n_bins):
    """sum_b |S_b| / N |mean hits - mean values| over equal-width bins (a, b] (0 in the first), by a loop."""
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        members = [i for i, v in enumerate(values) if edges[b] < v <= edges[b + 1] or (b == 0 and v == 0)]
        if members:
            total += len(members) * abs(np.mean(hits[members]) - np.mean(values[members]))
    return total / len(values)


def independent(probabilities, labels, n_bins=15):
    confidences = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)
    n, k = probabilities.shape
    order = sorted(range(n), key=lambda i: (confidences[i], i))
    sizes = [n // n_bins + (1 if g < n % n_bins else 0) for g in range(n_bins)]
    starts = np.cumsum([0] + sizes)
    adaptive = sum(
        abs(correct[order[a:b]].sum() - confidences[order[a:b]].sum()) for a, b in zip(starts[:-1], starts[1:])
    ) / n
    one_hot = np.eye(k)[labels]
    return {
        "ece": bin_ece(confidences, correct, n_bins),
        "classwise_ece": np.mean([bin_ece(probabilities[:, c], one_hot[:, c], n_bins) for c in range(k)]),
        "adaptive_ece": adaptive,
        "brier": np.mean([np.sum((probabilities[i] - one_hot[i]) ** 2) for i in range(n)]),
    }


def test_ece_matches_an_independent_computation(ece_metric):
    probabilities, labels = random_probabilities(0)
    result = ece_metric.compute(predictions=probabilities.tolist(), references=labels.tolist())
    assert set(result) == {"ece"}
    assert result["ece"] == pytest.approx(independent(probabilities, labels)["ece"], abs=1e-9)
    assert 0.0 < result["ece"] < 1.0


def test_ece_float32_array_and_batches(ece_metric):
    probabilities, labels = random_probabilities(1)
    probabilities = probabilities.astype(np.float32)
    expected = independent(probabilities.astype(np.float64), labels, n_bins=10)["ece"]
    for start in range(0, 500, 128):
        ece_metric.add_batch(predictions=probabilities[start:start + 128], references=labels[start:start + 128])
    assert ece_metric.compute(n_bins=10)["ece"] == pytest.approx(expected, abs=1e-9)


def test_ece_hand_values(ece_metric):
    # 15 bins: confidences 0.9 (right) and 0.8 (predicts class 1, wrong): (0.1 + 0.8) / 2.
    assert ece_metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])["ece"] == pytest.approx(0.45)
    # 4 bins, (a, b]: 0.5 right | 0.75 wrong, 0.6 wrong | 1.0 right, 1.0 wrong, 0.9 right -> 2.75 / 6.
    predictions = [[0.5, 0.3, 0.2], [0.75, 0.2, 0.05], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.9, 0.05, 0.05],
                   [0.6, 0.3, 0.1]]
    result = ece_metric.compute(predictions=predictions, references=[0, 1, 0, 2, 0, 1], n_bins=4)
    assert result["ece"] == pytest.approx(2.75 / 6, abs=1e-12)


def test_ece_rejects_logits(ece_metric):
    with pytest.raises(ValueError, match="logits"):
        ece_metric.compute(predictions=[[3.0, -1.0]], references=[0])


def test_lt_calibration_matches_independent_computations(lt_calibration_metric):
    probabilities, labels = random_probabilities(2, n=400, k=8)
    labels[labels == 7] = 6  # class 7 absent from the references
    probabilities[:50] = np.round(probabilities[:50], 1)  # ties and values on bin edges
    probabilities[:50] /= probabilities[:50].sum(axis=1, keepdims=True)
    for n_bins in (15, 7):
        result = lt_calibration_metric.compute(predictions=probabilities, references=labels, n_bins=n_bins)
        expected = independent(probabilities, labels, n_bins)
        assert set(result) == set(expected)
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, abs=1e-9), key


def test_lt_calibration_hand_values(lt_calibration_metric):
    # Class 0: p = 0.9 and 0.2 against hits 1, 1 -> (0.1 + 0.8) / 2; class 1: 0.1 and 0.8 against 0, 0 -> same.
    # Brier: (0.01 + 0.01 + 0.64 + 0.64) / 2. Two examples in 15 equal-mass groups: mean |correct - confidence|.
    result = lt_calibration_metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])
    assert result == pytest.approx({"ece": 0.45, "classwise_ece": 0.45, "adaptive_ece": 0.45, "brier": 0.65})
