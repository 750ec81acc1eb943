"""Tests of mislas_hf.calibration against hand computations, the authors' algorithm and torchmetrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from mislas_hf.calibration import (
    calibration_bins,
    calibration_metrics,
    class_groups,
    compute_metrics,
    confidence_and_correctness,
    draw_reliability_diagram,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
    top_k_accuracy,
)

CIFAR100_LT_COUNTS = [int(500 * 0.01 ** (i / 99)) for i in range(100)]


def reference_calibration(confidences, correct, num_bins=15):
    """The binning of the authors' utils/metric.py, re-implemented: (a, b] bins, index 0 dropped."""
    bins = np.linspace(0.0, 1.0, num_bins + 1)
    indices = np.digitize(confidences, bins, right=True)
    accuracies, mean_confidences, counts = np.zeros(num_bins), np.zeros(num_bins), np.zeros(num_bins, dtype=int)
    for b in range(num_bins):
        selected = np.where(indices == b + 1)[0]
        if len(selected) > 0:
            accuracies[b] = np.mean(correct[selected])
            mean_confidences[b] = np.mean(confidences[selected])
            counts[b] = len(selected)
    gaps = np.abs(accuracies - mean_confidences)
    return {"accuracies": accuracies, "confidences": mean_confidences, "counts": counts,
            "ece": np.sum(gaps * counts) / np.sum(counts), "mce": np.max(gaps)}


def softmax64(logits):
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


def random_predictions(seed, n=2000, k=10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n // 2), labels[: n // 2]] += 4.0  # half the samples lean towards the right class
    return logits, labels


def test_bins_and_ece_match_reference_algorithm():
    rng = np.random.default_rng(0)
    confidences = np.concatenate([rng.uniform(0.05, 1.0, 997), [1.0, 1.0, 2 / 15]])  # 1.0 and an edge
    correct = rng.uniform(size=1000) < confidences
    bins = calibration_bins(confidences, correct)
    ref = reference_calibration(confidences, correct)
    np.testing.assert_array_equal(bins.counts, ref["counts"])
    np.testing.assert_allclose(bins.accuracies, ref["accuracies"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(bins.confidences, ref["confidences"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(bins.edges, np.linspace(0, 1, 16))
    assert expected_calibration_error(confidences, correct) == pytest.approx(ref["ece"], abs=1e-12)
    assert maximum_calibration_error(confidences, correct) == pytest.approx(ref["mce"], abs=1e-12)
    assert bins.counts[-1] >= 2  # the two confidences of exactly 1.0 are in the last bin


def test_ece_by_hand():
    # 15 bins; 0.9 is in (13/15, 14/15], 0.8 in (11/15, 12/15]; gaps |1 - 0.9| and |0 - 0.8|.
    assert expected_calibration_error([0.9, 0.8], [True, False]) == pytest.approx(0.45, abs=1e-12)
    assert maximum_calibration_error([0.9, 0.8], [True, False]) == pytest.approx(0.8, abs=1e-12)
    # Same bin (0.8, 0.8667]: mean confidence 0.84, accuracy 0.5.
    assert expected_calibration_error([0.82, 0.86], [1, 0]) == pytest.approx(0.34, abs=1e-12)


def test_agrees_with_torchmetrics_away_from_bin_edges():
    logits, labels = random_predictions(1)
    probabilities = softmax64(logits)
    confidences, correct = confidence_and_correctness(probabilities, labels)
    edges = np.linspace(0, 1, 16)
    # Guard: no confidence within float32 rounding of an edge, so both binnings coincide.
    assert np.min(np.abs(confidences[:, None] - edges[None, :])) > 1e-6
    metric = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    expected = metric(torch.from_numpy(probabilities), torch.from_numpy(labels)).item()
    assert expected_calibration_error(confidences, correct) == pytest.approx(expected, abs=1e-6)
    max_metric = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="max")
    expected_mce = max_metric(torch.from_numpy(probabilities), torch.from_numpy(labels)).item()
    assert maximum_calibration_error(confidences, correct) == pytest.approx(expected_mce, abs=1e-6)


def test_differs_from_torchmetrics_on_bin_edges_and_at_one():
    # 4 bins, K = 3. Top-1 confidences 0.5, 0.75 (edges), 1.0, 1.0, 0.9, 0.6.
    probabilities = np.array([
        [0.5, 0.3, 0.2],
        [0.75, 0.2, 0.05],
        [1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.9, 0.05, 0.05],
        [0.6, 0.3, 0.1],
    ])
    labels = np.array([0, 1, 0, 2, 0, 1])  # correct: 1, 0, 1, 0, 1, 0
    confidences, correct = confidence_and_correctness(probabilities, labels)
    np.testing.assert_array_equal(correct, [True, False, True, False, True, False])
    # (a, b]: (.25,.5] = {0.5: right} gap 0.5; (.5,.75] = {0.75: wrong, 0.6: wrong} gap 0.675;
    # (.75,1] = {1.0: right, 1.0: wrong, 0.9: right} gap |2/3 - 2.9/3| = 0.3.
    ours = (1 * 0.5 + 2 * 0.675 + 3 * 0.3) / 6
    # [a, b) plus a slot for 1.0: [.5,.75) = {0.5, 0.6} gap |0.5 - 0.55| = 0.05; [.75,1) = {0.75, 0.9}
    # gap |0.5 - 0.825| = 0.325; {1.0} = {right, wrong} gap |0.5 - 1| = 0.5.
    theirs = (2 * 0.05 + 2 * 0.325 + 2 * 0.5) / 6
    assert expected_calibration_error(confidences, correct, n_bins=4) == pytest.approx(ours, abs=1e-12)
    assert ours == pytest.approx(2.75 / 6) and theirs == pytest.approx(1.75 / 6)
    assert reference_calibration(confidences, correct, 4)["ece"] == pytest.approx(ours, abs=1e-12)
    metric = MulticlassCalibrationError(num_classes=3, n_bins=4, norm="l1")
    assert metric(torch.from_numpy(probabilities), torch.from_numpy(labels)).item() == pytest.approx(theirs, abs=1e-6)
    assert maximum_calibration_error(confidences, correct, n_bins=4) == pytest.approx(0.675, abs=1e-12)


def test_confidence_zero_goes_to_first_bin_unlike_reference():
    # Two bins (0, .5] and (.5, 1]. Ours: both samples in bin 0, accuracy 1/2, confidence 1/4 -> ECE 1/4.
    # Reference: 0.0 gets index 0 and is dropped -> only (0.5, right) -> ECE 1/2.
    bins = calibration_bins([0.0, 0.5], [0, 1], n_bins=2)
    np.testing.assert_array_equal(bins.counts, [2, 0])
    assert bins.ece == pytest.approx(0.25)
    assert reference_calibration(np.array([0.0, 0.5]), np.array([0, 1]), 2)["ece"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "confidences,correct,n_bins,match",
    [
        ([0.5, 1.2], [1, 0], 15, "logits"),
        ([0.5, -0.1], [1, 0], 15, "confidences"),
        ([0.5, 0.7], [1], 15, "correct"),
        ([0.5, 0.7], [1, 2], 15, "correct"),
        ([], [], 15, "confidences"),
        ([0.5], [1], 0, "n_bins"),
        ([0.5], [1], 2.5, "n_bins"),
    ],
)
def test_calibration_bins_reject_bad_input(confidences, correct, n_bins, match):
    with pytest.raises(ValueError, match=match):
        calibration_bins(np.array(confidences, dtype=float), np.array(correct), n_bins)


def test_negative_log_likelihood():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = np.array([0, 1])
    expected = (math.log(math.exp(2) + 1 + math.exp(-1)) - 2 + math.log(2 * math.exp(0.5) + math.exp(3)) - 0.5) / 2
    assert negative_log_likelihood(logits, labels) == pytest.approx(expected, rel=1e-12)
    logits, labels = random_predictions(2, n=300, k=7)
    torch_nll = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert negative_log_likelihood(torch.from_numpy(logits).float(), torch.from_numpy(labels)) == pytest.approx(
        torch_nll, rel=1e-6
    )
    # Stable for large logits: -log softmax = log(1 + e^-1000) ~ 0 and 1000.
    assert negative_log_likelihood([[1000.0, 0.0]], [0]) == pytest.approx(0.0, abs=1e-300)
    assert negative_log_likelihood([[1000.0, 0.0]], [1]) == pytest.approx(1000.0)


def test_top_k_accuracy_by_hand_and_torchmetrics():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([2, 1, 0, 1])
    # Ranks of the label (ties towards the lower index): 1, 2, 0, 2.
    assert top_k_accuracy(scores, labels, 1) == pytest.approx(0.25)
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(0.5)
    assert top_k_accuracy(scores, labels, 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k must"):
        top_k_accuracy(scores, labels, 4)
    logits, labels = random_predictions(3, n=500, k=20)
    for k in (1, 5):
        metric = MulticlassAccuracy(num_classes=20, top_k=k, average="micro")
        assert top_k_accuracy(logits, labels, k) == pytest.approx(
            metric(torch.from_numpy(logits), torch.from_numpy(labels)).item(), abs=1e-6
        )


def test_class_groups_paper_thresholds():
    groups = class_groups([150, 100, 20, 19, 101])
    assert groups == {"many": [0, 4], "medium": [1, 2], "few": [3]}
    # CIFAR-100-LT IF 100: 102 images at class 34, 98 at 35, 20 at 69, 19 at 70.
    groups = class_groups(CIFAR100_LT_COUNTS)
    assert groups["many"] == list(range(35))
    assert groups["medium"] == list(range(35, 70))
    assert groups["few"] == list(range(70, 100))


def test_class_groups_reference_boundaries():
    groups = class_groups(CIFAR100_LT_COUNTS, boundaries=(36, 71))
    assert [len(groups[name]) for name in ("many", "medium", "few")] == [36, 35, 29]
    assert groups["medium"][0] == 36 and groups["few"][0] == 71 and groups["few"][-1] == 99


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"boundaries": (71, 36)}, "boundaries"),
        ({"boundaries": (10, 101)}, "boundaries"),
        ({"boundaries": (10,)}, "boundaries"),
        ({"boundaries": (1.5, 3)}, "boundaries"),
        ({"many_threshold": 10, "few_threshold": 20}, "few_threshold"),
        ({"class_counts": [5, -1]}, "class_counts"),
    ],
)
def test_class_groups_reject_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_groups(**{"class_counts": CIFAR100_LT_COUNTS, **kwargs})


def test_calibration_metrics_by_hand():
    # K = 3; class counts give groups many = {0}, medium = {1}, few = {2}.
    logits = np.log(np.array([
        [0.7, 0.2, 0.1],  # label 0: right, confidence 0.7
        [0.2, 0.6, 0.2],  # label 1: right, confidence 0.6
        [0.5, 0.1, 0.4],  # label 2: wrong, confidence 0.5
        [0.1, 0.1, 0.8],  # label 0: wrong, confidence 0.8
    ]))
    labels = np.array([0, 1, 2, 0])
    metrics = calibration_metrics(logits, labels, class_counts=[200, 50, 5], n_bins=10)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["top5_accuracy"] == pytest.approx(1.0)  # top-min(5, K) = top-3
    assert metrics["many_accuracy"] == pytest.approx(0.5)
    assert metrics["medium_accuracy"] == pytest.approx(1.0)
    assert metrics["few_accuracy"] == pytest.approx(0.0)
    # 10 bins: 0.5 in (.4,.5], 0.6 in (.5,.6], 0.7 in (.6,.7], 0.8 in (.7,.8]: gaps .5, .4, .3, .8.
    assert metrics["ece"] == pytest.approx((0.5 + 0.4 + 0.3 + 0.8) / 4, abs=1e-12)
    assert metrics["mce"] == pytest.approx(0.8, abs=1e-12)
    assert metrics["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.4) + math.log(0.1)) / 4)
    assert set(metrics) == {"accuracy", "top5_accuracy", "many_accuracy", "medium_accuracy", "few_accuracy",
                            "ece", "mce", "nll"}


def test_calibration_metrics_group_accuracy_equals_per_class_mean_on_balanced_test_set():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(100), 20)
    logits = rng.normal(size=(2000, 100)) * 2
    logits[np.arange(0, 2000, 2), labels[::2]] += 5
    metrics = calibration_metrics(torch.from_numpy(logits).float(), torch.from_numpy(labels),
                                  class_counts=CIFAR100_LT_COUNTS, class_group_boundaries=(36, 71))
    correct = logits.argmax(1) == labels
    per_class = np.array([correct[labels == c].mean() for c in range(100)])
    assert metrics["many_accuracy"] == pytest.approx(per_class[:36].mean(), abs=1e-12)
    assert metrics["medium_accuracy"] == pytest.approx(per_class[36:71].mean(), abs=1e-12)
    assert metrics["few_accuracy"] == pytest.approx(per_class[71:].mean(), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(correct.mean())
    reference = reference_calibration(softmax64(logits.astype(np.float32)).max(1), correct)
    assert metrics["ece"] == pytest.approx(reference["ece"], abs=1e-12)


def test_calibration_metrics_omits_empty_group_and_has_no_groups_without_counts():
    logits, labels = random_predictions(5, n=50, k=4)
    labels = labels % 2  # only classes 0 and 1 appear
    metrics = calibration_metrics(logits, labels, class_counts=[500, 50, 30, 10])  # many {0}, medium {1}, few {2, 3}
    assert "many_accuracy" in metrics and "medium_accuracy" in metrics and "few_accuracy" not in metrics
    assert not any(key.endswith("_accuracy") and key not in ("accuracy", "top5_accuracy")
                   for key in calibration_metrics(logits, labels))
    assert all(math.isfinite(value) for value in metrics.values())


@pytest.mark.parametrize(
    "logits,labels,kwargs,match",
    [
        (np.zeros((3, 4)), np.array([0, 1]), {}, "labels"),
        (np.zeros(4), np.array([0]), {}, "logits"),
        (np.zeros((2, 4)), np.array([0, 4]), {}, "labels"),
        (np.zeros((2, 4)), np.array([0.0, 1.0]), {}, "labels"),
        (np.array([[0.0, np.nan]]), np.array([0]), {}, "logits"),
        (np.zeros((2, 4)), np.array([0, 1]), {"class_counts": [1, 2, 3]}, "class_counts"),
        (np.zeros((2, 4)), np.array([0, 1]), {"class_group_boundaries": (1, 2)}, "class_counts"),
    ],
)
def test_calibration_metrics_reject_bad_input(logits, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibration_metrics(logits, labels, **kwargs)


def test_compute_metrics_for_trainer():
    from transformers import EvalPrediction

    logits, labels = random_predictions(6, n=200, k=10)
    counts = [500, 400, 300, 200, 150, 90, 60, 30, 15, 5]
    expected = calibration_metrics(logits, labels, class_counts=counts)
    callback = compute_metrics(class_counts=counts)
    assert callback(EvalPrediction(predictions=logits, label_ids=labels)) == expected
    hidden = np.zeros((200, 3))
    assert callback(EvalPrediction(predictions=(logits, hidden), label_ids=labels)) == expected
    assert expected["ece"] == pytest.approx(
        expected_calibration_error(*confidence_and_correctness(softmax64(logits), labels)), abs=1e-15
    )


def test_reliability_diagram_png_and_bar_heights(tmp_path):
    from matplotlib.figure import Figure

    logits, labels = random_predictions(7)
    confidences, correct = confidence_and_correctness(softmax64(logits), labels)
    path = reliability_diagram(confidences, correct, tmp_path / "diagram.png", title="test")
    assert path == tmp_path / "diagram.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000

    bins = calibration_bins(confidences, correct)
    ax = draw_reliability_diagram(Figure().subplots(), bins)
    accuracy_bars, gap_bars = ax.containers
    heights = np.array([patch.get_height() for patch in accuracy_bars])
    np.testing.assert_allclose(heights, bins.accuracies, rtol=0, atol=1e-12)
    np.testing.assert_allclose([patch.get_x() for patch in accuracy_bars], np.arange(15) / 15, atol=1e-12)
    gap_heights = np.array([patch.get_height() for patch in gap_bars])
    gap_bottoms = np.array([patch.get_y() for patch in gap_bars])
    np.testing.assert_allclose(gap_heights, np.abs(bins.accuracies - bins.confidences), atol=1e-12)
    np.testing.assert_allclose(gap_bottoms, np.minimum(bins.accuracies, bins.confidences), atol=1e-12)
    assert bins.counts[0] == 0 and heights[0] == 0.0 and gap_heights[0] == 0.0  # empty bins draw nothing
    assert f"ECE = {100 * bins.ece:.2f}%" in [text.get_text() for text in ax.texts]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Confidence", "Accuracy")
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (0.0, 1.0)
