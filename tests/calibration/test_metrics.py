"""Tests of mislas_hf.calibration.metrics against hand computations, the authors' algorithm and torchmetrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from mislas_hf.calibration.metrics import (
    adaptive_expected_calibration_error,
    brier_score,
    calibration_bins,
    classwise_expected_calibration_error,
    calibration_metrics,
    class_groups,
    compute_metrics,
    confidence_and_correctness,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
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


def test_agrees_with_torchmetrics_away_from_bin_edges(random_predictions, softmax64):
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


def test_negative_log_likelihood(random_predictions):
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


def test_top_k_accuracy_by_hand_and_torchmetrics(random_predictions):
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
                            "ece", "mce", "nll", "classwise_ece", "adaptive_ece", "brier", "many_ece", "medium_ece",
                            "few_ece"}


def test_calibration_metrics_group_accuracy_equals_per_class_mean_on_balanced_test_set(softmax64):
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


def test_calibration_metrics_omits_empty_group_and_has_no_groups_without_counts(random_predictions):
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


def loop_bin_members(values, n_bins):
    """Members of each equal-width bin (a, b] (0 in the first bin), by explicit comparisons."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return [[i for i, v in enumerate(values) if edges[b] < v <= edges[b + 1] or (b == 0 and v == 0.0)]
            for b in range(n_bins)]


def loop_ece(confidences, correct, n_bins=15):
    """Top-1 ECE by a loop over bins."""
    total = 0.0
    for members in loop_bin_members(confidences, n_bins):
        if members:
            total += len(members) * abs(np.mean([correct[i] for i in members]) -
                                        np.mean([confidences[i] for i in members]))
    return total / len(confidences)


def loop_classwise_ece(probabilities, labels, n_bins=15):
    """Kull et al. (2019): mean over classes k of the ECE of p_k against 1[y = k], by loops over classes and bins."""
    n, k = probabilities.shape
    per_class = []
    for c in range(k):
        column, hits = probabilities[:, c], [1.0 if label == c else 0.0 for label in labels]
        total = 0.0
        for members in loop_bin_members(column, n_bins):
            if members:
                total += len(members) / n * abs(sum(hits[i] for i in members) / len(members)
                                                - sum(column[i] for i in members) / len(members))
        per_class.append(total)
    return sum(per_class) / k


def loop_adaptive_ece(confidences, correct, n_bins=15):
    """Nixon et al. (2019): sorted by (confidence, input position), cut into groups of sizes n // B + 1 (the first
    n % B groups) and n // B, each weighted by its share."""
    n = len(confidences)
    order = [i for _, i in sorted((confidences[i], i) for i in range(n))]
    sizes = [n // n_bins + 1] * (n % n_bins) + [n // n_bins] * (n_bins - n % n_bins)
    total, start = 0.0, 0
    for size in sizes:
        group = order[start : start + size]
        start += size
        if group:
            total += size / n * abs(np.mean([correct[i] for i in group]) - np.mean([confidences[i] for i in group]))
    return total


def loop_brier(probabilities, labels):
    n, k = probabilities.shape
    return sum(sum((probabilities[i, c] - (1.0 if labels[i] == c else 0.0)) ** 2 for c in range(k))
               for i in range(n)) / n


def test_new_metrics_match_loops_on_random_logits(random_predictions, softmax64):
    for seed, (n, k) in enumerate([(700, 10), (301, 7), (40, 100)]):
        logits, labels = random_predictions(10 + seed, n=n, k=k)
        probabilities = softmax64(logits)
        confidences, correct = probabilities.max(1), probabilities.argmax(1) == labels
        assert classwise_expected_calibration_error(probabilities, labels) == pytest.approx(
            loop_classwise_ece(probabilities, labels), abs=1e-9)
        assert adaptive_expected_calibration_error(confidences, correct) == pytest.approx(
            loop_adaptive_ece(confidences, correct), abs=1e-9)
        assert brier_score(probabilities, labels) == pytest.approx(loop_brier(probabilities, labels), abs=1e-9)
        assert 0 < loop_classwise_ece(probabilities, labels) < 1 and 0 < loop_brier(probabilities, labels) < 2


def test_adaptive_ece_ties_keep_input_order_and_few_samples_leave_empty_groups():
    # Ten equal confidences, correctness alternating in blocks: which samples share a group decides the value.
    confidences = np.array([0.6] * 10 + [0.9, 0.9])
    correct = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0])
    # 4 groups of 3 in input order: [1,1,1] [0,0,0] [1,1,0] at 0.6, then [1 (0.6), 1 (0.9), 0 (0.9)] at mean 0.8.
    by_hand = (abs(1 - 0.6) + abs(0 - 0.6) + abs(2 / 3 - 0.6) + abs(2 / 3 - 0.8)) * 3 / 12
    assert adaptive_expected_calibration_error(confidences, correct, n_bins=4) == pytest.approx(by_hand, abs=1e-12)
    assert loop_adaptive_ece(confidences, correct, 4) == pytest.approx(by_hand, abs=1e-12)
    shuffled = adaptive_expected_calibration_error(confidences[::-1].copy(), correct[::-1].copy(), n_bins=4)
    assert shuffled != pytest.approx(by_hand)  # ties in another input order give other groups
    # 12 samples in 15 groups: sizes 1 (x12) then 3 empty groups; equals the mean |correct - confidence|.
    assert adaptive_expected_calibration_error(confidences, correct) == pytest.approx(
        np.mean(np.abs(correct - confidences)), abs=1e-12)
    assert loop_adaptive_ece(confidences, correct) == pytest.approx(np.mean(np.abs(correct - confidences)), abs=1e-12)


def test_classwise_ece_and_brier_edge_cases_by_hand():
    # K = 3, class 2 absent from the labels; probabilities on bin edges (0, 1/3, 0.5, 1) and empty bins.
    probabilities = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    labels = np.array([0, 1, 0, 1])
    # 2 bins (0, .5], (.5, 1], 0 in the first. Class 0: {0.5, 0.5, 1/3} vs hits {0, 1, 0}: |1 - 4/3| / 4;
    # {1.0} vs {1}: 0. Class 1: {0, .5, .25, 1/3} vs {0, 1, 0, 1}: |2 - 13/12| / 4. Class 2 (absent): sum p / 4.
    class0, class1, class2 = (1 / 3) / 4, (11 / 12) / 4, (0.25 + 1 / 3) / 4
    expected = (class0 + class1 + class2) / 3
    assert classwise_expected_calibration_error(probabilities, labels, n_bins=2) == pytest.approx(expected, abs=1e-12)
    assert loop_classwise_ece(probabilities, labels, 2) == pytest.approx(expected, abs=1e-12)
    assert classwise_expected_calibration_error(probabilities, labels) == pytest.approx(
        loop_classwise_ece(probabilities, labels), abs=1e-12)  # 15 bins, most empty
    # Brier: (0) + (.25 + .25) + (.25 + .0625 + .0625) + (1/9 + 4/9 + 1/9), over 4.
    assert brier_score(probabilities, labels) == pytest.approx((0.5 + 0.375 + 2 / 3) / 4, abs=1e-12)
    assert brier_score(np.eye(3), [0, 1, 2]) == 0.0 and brier_score(np.eye(3), [1, 2, 0]) == pytest.approx(2.0)


@pytest.mark.parametrize("function", [classwise_expected_calibration_error, brier_score])
def test_probability_metrics_reject_logits(function):
    with pytest.raises(ValueError, match="not logits"):
        function(np.array([[2.0, -1.0]]), np.array([0]))


def test_group_eces_are_the_ece_of_each_groups_test_samples(random_predictions, softmax64):
    logits, labels = random_predictions(20, n=900, k=10)
    counts = [500, 400, 300, 200, 150, 90, 60, 30, 15, 5]  # many {0..4}, medium {5, 6, 7}, few {8, 9}
    metrics = calibration_metrics(logits, labels, class_counts=counts)
    probabilities = softmax64(logits)
    for name, members in {"many": [0, 1, 2, 3, 4], "medium": [5, 6, 7], "few": [8, 9]}.items():
        rows = [i for i in range(900) if labels[i] in members]
        expected = loop_ece(probabilities[rows].max(1), probabilities[rows].argmax(1) == labels[rows])
        assert metrics[f"{name}_ece"] == pytest.approx(expected, abs=1e-9)
    metrics = calibration_metrics(logits, labels % 5, class_counts=counts)  # no test sample of a medium/few class
    assert "many_ece" in metrics and "medium_ece" not in metrics and "few_ece" not in metrics


def independent_metrics(logits, labels, groups):
    """Every key of calibration_metrics, computed without mislas_hf: torch softmax / cross-entropy and loops."""
    logits_tensor = torch.as_tensor(logits, dtype=torch.float64)
    probabilities = logits_tensor.softmax(1).numpy()
    confidences, predictions = probabilities.max(1), probabilities.argmax(1)
    correct = predictions == labels
    top5 = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]
    metrics = {
        "accuracy": correct.mean(),
        "top5_accuracy": np.mean([labels[i] in top5[i] for i in range(len(labels))]),
        "ece": loop_ece(confidences, correct),
        "mce": reference_calibration(confidences, correct)["mce"],
        "nll": F.cross_entropy(logits_tensor, torch.as_tensor(labels)).item(),
        "classwise_ece": loop_classwise_ece(probabilities, labels),
        "adaptive_ece": loop_adaptive_ece(confidences, correct),
        "brier": loop_brier(probabilities, labels),
    }
    for name, members in groups.items():
        rows = np.isin(labels, members)
        metrics[f"{name}_accuracy"] = correct[rows].mean()
        metrics[f"{name}_ece"] = loop_ece(confidences[rows], correct[rows])
    return metrics


def test_compute_metrics_for_trainer(random_predictions):
    from transformers import EvalPrediction

    logits, labels = random_predictions(6, n=200, k=10)
    counts = [500, 400, 300, 200, 150, 90, 60, 30, 15, 5]
    expected = independent_metrics(logits, labels, {"many": [0, 1, 2, 3, 4], "medium": [5, 6, 7], "few": [8, 9]})
    callback = compute_metrics(class_counts=counts)
    for predictions in (logits, (logits, np.zeros((200, 3)))):  # a tuple: logits first
        metrics = callback(EvalPrediction(predictions=predictions, label_ids=labels))
        assert set(metrics) == set(expected)
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_compute_metrics_says_the_model_diverged_on_non_finite_logits(random_predictions):
    from transformers import EvalPrediction

    logits, labels = random_predictions(7, n=50, k=10)
    logits[[3, 17], 4] = [np.nan, np.inf]
    with pytest.raises(FloatingPointError, match=r"NaN or infinite for 2 of 50 evaluation images: its training diverged"):
        compute_metrics()(EvalPrediction(predictions=logits, label_ids=labels))
