"""Accuracy and calibration metrics of MiSLAS (Zhong et al., CVPR 2021).

The expected calibration error (ECE, Sec. 2 of the paper) groups the N top-1
predictions into B equal-width confidence bins S_b and computes::

    ECE = sum_b |S_b| / N * |acc(S_b) - conf(S_b)|

returned here as a fraction (the paper prints it times 100 %). Binning follows
the authors' ``utils/metric.py``: 15 bins closed on the right, ``(a, b]``,
found with ``np.digitize(conf, np.linspace(0, 1, B + 1), right=True)``, so a
confidence of exactly 1.0 lies in the last bin. The reference drops a
confidence of exactly 0 (index 0 matches no bin) and leaves it out of N; here
it goes into the first bin, so every prediction counts. A top-1 softmax
confidence is at least 1/K, so this never changes a number computed from
model outputs.

Other libraries bin differently and so give other ECEs on the same input:

* torchmetrics ``MulticlassCalibrationError`` uses bins ``[a, b)`` (and casts
  the confidences to float32), and gives a confidence of exactly 1.0 a slot
  of its own. Over-confident models whose float32 softmax saturates at 1.0
  then get a different ECE; away from bin edges the two agree.
* netcal's ``ECE`` defaults to 10 bins.

Beyond the paper, the metrics the long-tailed calibration literature reports: classwise ECE (Kull et al.,
NeurIPS 2019), adaptive equal-mass ECE (Nixon et al., CVPR-W 2019), the Brier score, and the top-1 ECE within
each Many / Medium / Few group; and post-hoc temperature scaling (Guo et al., ICML 2017), scalar and class-wise,
fit on held-out data (:func:`fit_temperature`, :func:`fit_classwise_temperatures`).

Group accuracies follow the paper's Appendix A split by training-set size
(Many > 100 images, Medium 20-100, Few < 20), or the fixed index ranges of the
authors' CIFAR configs (see :func:`class_groups`).
"""

from dataclasses import dataclass

import numpy as np

from ..class_counts import _to_numpy, check_class_counts


def _check_scores_and_labels(scores, labels, name):
    """float64 ``[N, K]`` scores and int64 ``[N]`` labels in ``[0, K)``, validated."""
    scores = _to_numpy(scores, name, np.float64)
    labels = _to_numpy(labels, "labels")
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, K] with N, K >= 1, got shape {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must have shape [{scores.shape[0]}] to match {name}, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} must be finite; found NaN or inf")
    return scores, labels.astype(np.int64)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def confidence_and_correctness(probabilities, labels):
    """Top-1 confidence ``max_i p_i`` and correctness ``argmax_i p_i == label`` per sample.

    Args:
        probabilities: ``[N, K]`` class probabilities (array or tensor).
        labels: ``[N]`` integer labels.

    Returns:
        ``(confidences, correct)``: float64 and bool arrays of shape ``[N]``;
        ties go to the lowest class index.
    """
    probabilities, labels = _check_scores_and_labels(probabilities, labels, "probabilities")
    predictions = probabilities.argmax(axis=1)
    return probabilities.max(axis=1), predictions == labels


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics of top-1 predictions (inputs of the ECE, Sec. 2).

    Attributes:
        edges: ``[B + 1]`` bin edges ``linspace(0, 1, B + 1)``; bin ``b`` is ``(edges[b], edges[b + 1]]``.
        counts: ``[B]`` number of predictions per bin.
        accuracies: ``[B]`` fraction correct per bin (0 for empty bins).
        confidences: ``[B]`` mean confidence per bin (0 for empty bins).
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracies: np.ndarray
    confidences: np.ndarray

    @property
    def gaps(self):
        """``|acc(S_b) - conf(S_b)|`` per bin (0 for empty bins)."""
        return np.abs(self.accuracies - self.confidences)

    @property
    def ece(self):
        """Expected calibration error ``sum_b |S_b| / N * gap_b``, a fraction."""
        return float(np.sum(self.counts * self.gaps) / self.counts.sum())

    @property
    def mce(self):
        """Maximum calibration error, the largest gap over non-empty bins, a fraction."""
        return float(self.gaps[self.counts > 0].max())


def _bin_index(values, edges):
    """0-based index of the equal-width bin ``(edges[b], edges[b + 1]]`` holding each value; 0 goes into bin 0."""
    return np.maximum(np.digitize(values, edges, right=True), 1) - 1


def _check_confidences_and_correct(confidences, correct, n_bins):
    """float64 confidences in ``[0, 1]`` and float64 0/1 correctness, both ``[N]``, validated with ``n_bins``."""
    confidences = _to_numpy(confidences, "confidences", np.float64)
    correct = _to_numpy(correct, "correct")
    if confidences.ndim != 1 or confidences.size == 0:
        raise ValueError(f"confidences must be a non-empty 1-D array, got shape {confidences.shape}")
    if correct.shape != confidences.shape:
        raise ValueError(f"correct must have shape {confidences.shape} to match confidences, got {correct.shape}")
    if not np.all((confidences >= 0.0) & (confidences <= 1.0)):
        raise ValueError("confidences must lie in [0, 1]: pass softmax probabilities, not logits")
    if not np.all((correct == 0) | (correct == 1)):
        raise ValueError("correct must hold booleans or 0/1 values")
    _check_n_bins(n_bins)
    return confidences, correct.astype(np.float64)


def _check_n_bins(n_bins):
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def calibration_bins(confidences, correct, n_bins=15):
    """Bin top-1 predictions by confidence as the MiSLAS reference does (Sec. 2, ECE).

    Equal-width bins closed on the right, ``(a, b]``: a confidence of exactly
    1.0 is in the last bin and one of exactly 0 in the first (the reference
    drops it; see the module docstring).

    Args:
        confidences: ``[N]`` top-1 confidences in ``[0, 1]``.
        correct: ``[N]`` booleans (or 0/1), whether the top-1 prediction is right.
        n_bins: number of bins ``B`` (the paper uses 15).

    Returns:
        :class:`CalibrationBins`.
    """
    confidences, correct = _check_confidences_and_correct(confidences, correct, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = _bin_index(confidences, edges)
    counts = np.bincount(bin_index, minlength=n_bins)

    def bin_means(values):
        sums = np.bincount(bin_index, weights=values, minlength=n_bins)
        return np.divide(sums, counts, out=np.zeros(n_bins), where=counts > 0)

    return CalibrationBins(
        edges=edges,
        counts=counts,
        accuracies=bin_means(correct),
        confidences=bin_means(confidences),
    )


def expected_calibration_error(confidences, correct, n_bins=15):
    """Expected calibration error (Sec. 2 of the paper) as a fraction in ``[0, 1]``.

    ``ECE = sum_b |S_b| / N * |acc(S_b) - conf(S_b)|`` over the bins of
    :func:`calibration_bins` (the paper reports it times 100 %).
    """
    return calibration_bins(confidences, correct, n_bins).ece


def maximum_calibration_error(confidences, correct, n_bins=15):
    """Maximum calibration error: the largest ``|acc(S_b) - conf(S_b)|`` over non-empty bins, a fraction."""
    return calibration_bins(confidences, correct, n_bins).mce


def _check_probabilities(probabilities, labels):
    """Validated float64 ``[N, K]`` probabilities (rows in ``[0, 1]`` summing to 1) and int64 ``[N]`` labels."""
    probabilities, labels = _check_scores_and_labels(probabilities, labels, "probabilities")
    if np.any(probabilities < 0.0) or np.any(probabilities > 1.0) or np.any(
        np.abs(probabilities.sum(axis=1) - 1.0) > 1e-3
    ):
        raise ValueError("probabilities must be rows of softmax outputs (in [0, 1], summing to 1), not logits")
    return probabilities, labels


def classwise_expected_calibration_error(probabilities, labels, n_bins=15):
    """Classwise ECE (Kull et al., NeurIPS 2019) as a fraction: the mean over all K classes of the ECE of
    ``p_k`` against ``1[y = k]`` over all N samples.

    For class k the N probabilities ``p_k`` go into ``n_bins`` equal-width bins ``(a, b]`` (as the top-1 ECE of
    :func:`calibration_bins`, a probability of exactly 0 in the first bin) and
    ``ECE_k = sum_b |S_b| / N * |mean_{S_b} 1[y = k] - mean_{S_b} p_k|``. A class absent from ``labels`` counts
    too: every bin's frequency is 0, so its ECE is the mean of its ``p_k``.

    Args:
        probabilities: ``[N, K]`` softmax outputs.
        labels: ``[N]`` integer labels.
        n_bins: number of bins per class.
    """
    probabilities, labels = _check_probabilities(probabilities, labels)
    _check_n_bins(n_bins)
    num_samples, num_classes = probabilities.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for first in range(0, num_classes, 64):  # blocks of classes bound the memory at N x 64 per array
        block = probabilities[:, first : first + 64]
        classes = np.arange(first, first + block.shape[1])
        slot = (_bin_index(block, edges) + n_bins * np.arange(block.shape[1])).ravel()  # (class, bin) pairs
        size = n_bins * block.shape[1]
        targets = (labels[:, None] == classes[None, :]).astype(np.float64).ravel()
        # |S_b| / N * |acc - conf| = |sum_{S_b} 1[y = k] - sum_{S_b} p_k| / N
        gaps = np.bincount(slot, weights=targets, minlength=size) - np.bincount(slot, weights=block.ravel(),
                                                                                 minlength=size)
        total += np.abs(gaps).sum() / num_samples
    return float(total / num_classes)


def adaptive_expected_calibration_error(confidences, correct, n_bins=15):
    """Adaptive (equal-mass) ECE of top-1 predictions (Nixon et al., CVPR Workshops 2019) as a fraction.

    The N predictions are sorted by confidence (a stable sort, so ties keep their input order) and cut into
    ``n_bins`` contiguous groups whose sizes differ by at most one, the larger groups first (``numpy.array_split``);
    ``ECE = sum_g |S_g| / N * |acc(S_g) - conf(S_g)|``. With fewer samples than bins the empty groups count 0.
    """
    confidences, correct = _check_confidences_and_correct(confidences, correct, n_bins)
    order = np.argsort(confidences, kind="stable")
    total = sum(abs(correct[group].sum() - confidences[group].sum()) for group in np.array_split(order, n_bins))
    return float(total / len(confidences))


def brier_score(probabilities, labels):
    """Multi-class Brier score (Brier 1950): the mean over samples of ``sum_k (p_k - 1[y = k])^2``, in ``[0, 2]``."""
    probabilities, labels = _check_probabilities(probabilities, labels)
    squared_errors = np.square(probabilities)
    rows = np.arange(len(labels))
    squared_errors[rows, labels] = np.square(1.0 - probabilities[rows, labels])
    return float(squared_errors.sum(axis=1).mean())


def negative_log_likelihood(logits, labels):
    """Mean negative log-likelihood ``-log softmax(logits)_y`` (cross-entropy), in float64."""
    logits, labels = _check_scores_and_labels(logits, labels, "logits")
    return float(-_log_softmax(logits)[np.arange(len(labels)), labels].mean())


def top_k_accuracy(scores, labels, k):
    """Fraction of samples whose label is among the ``k`` highest scores (logits or probabilities).

    Ties are broken towards the lower class index, so ``k=1`` agrees with
    ``argmax``. ``k`` must lie in ``[1, K]``.
    """
    scores, labels = _check_scores_and_labels(scores, labels, "scores")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be an integer in [1, {scores.shape[1]}] (the number of classes), got {k!r}")
    label_scores = scores[np.arange(len(labels)), labels][:, None]
    class_index = np.arange(scores.shape[1])[None, :]
    rank = np.sum(scores > label_scores, axis=1) + np.sum(
        (scores == label_scores) & (class_index < labels[:, None]), axis=1
    )
    return float(np.mean(rank < k))


def class_groups(class_counts, many_threshold=100, few_threshold=20, boundaries=None):
    """Split classes into Many / Medium / Few shot groups.

    By default the paper's Appendix A rule on training-set sizes: Many
    ``N > many_threshold`` (100), Few ``N < few_threshold`` (20), Medium the
    rest (20 to 100 images). With ``boundaries=(a, b)`` the index split of the
    authors' CIFAR configs is used instead (``head/med/tail_class_idx``, e.g.
    ``(36, 71)`` for CIFAR-100-LT): Many ``[0, a)``, Medium ``[a, b)``, Few
    ``[b, K)``; the thresholds are then ignored. The two differ: on
    CIFAR-100-LT IF 100 the thresholds give 35 / 35 / 30 classes, the
    boundaries 36 / 35 / 29.

    Args:
        class_counts: training images per class, ``K`` positive numbers.
        many_threshold: Many means strictly more images than this.
        few_threshold: Few means strictly fewer images than this.
        boundaries: optional ``(a, b)`` with ``0 <= a <= b <= K``.

    Returns:
        ``{"many": [...], "medium": [...], "few": [...]}`` lists of class indices.
    """
    counts = check_class_counts(class_counts)
    num_classes = len(counts)
    if boundaries is not None:
        if len(boundaries) != 2 or not all(isinstance(x, (int, np.integer)) for x in boundaries):
            raise ValueError(f"boundaries must be two integers (a, b), got {boundaries!r}")
        a, b = boundaries
        if not 0 <= a <= b <= num_classes:
            raise ValueError(f"boundaries={boundaries!r} must satisfy 0 <= a <= b <= {num_classes} (number of classes)")
        index = list(range(num_classes))
        return {"many": index[:a], "medium": index[a:b], "few": index[b:]}
    if not few_threshold <= many_threshold:
        raise ValueError(f"few_threshold={few_threshold} must not exceed many_threshold={many_threshold}")
    return {
        "many": np.flatnonzero(counts > many_threshold).tolist(),
        "medium": np.flatnonzero((counts >= few_threshold) & (counts <= many_threshold)).tolist(),
        "few": np.flatnonzero(counts < few_threshold).tolist(),
    }


def calibration_metrics(
    logits, labels, class_counts=None, class_group_boundaries=None, n_bins=15, many_threshold=100, few_threshold=20
):
    """Accuracy and calibration of a classifier's outputs, all as fractions.

    Softmax is taken in float64. Keys:

    * ``accuracy``, ``top5_accuracy`` (top-``min(5, K)``);
    * ``many_accuracy``, ``medium_accuracy``, ``few_accuracy`` when
      ``class_counts`` is given (groups of :func:`class_groups`, with
      ``class_group_boundaries`` as its ``boundaries``, else the count
      thresholds ``many_threshold`` / ``few_threshold``): the accuracy over the
      test samples whose label is in the group. On the balanced test sets of
      the long-tailed benchmarks this equals the reference's mean of
      per-class accuracies. A group without test samples (e.g. no class with
      more than 100 training images) has no key, rather than a 0 accuracy;
    * ``ece``, ``mce`` (Sec. 2, ``n_bins`` bins), ``nll`` (mean, natural log);
    * ``classwise_ece`` (:func:`classwise_expected_calibration_error`), ``adaptive_ece``
      (:func:`adaptive_expected_calibration_error`), ``brier`` (:func:`brier_score`), all with ``n_bins`` bins;
    * ``many_ece``, ``medium_ece``, ``few_ece`` when ``class_counts`` is given: the top-1 ECE over the test
      samples whose label is in the group (absent like the group accuracies when the group has no test sample).

    Args:
        logits: ``[N, K]`` float logits (array or tensor).
        labels: ``[N]`` integer labels.
        class_counts: optional training images per class (``K`` numbers).
        class_group_boundaries: optional ``(a, b)`` index split; needs ``class_counts``.
        n_bins: number of calibration bins.
        many_threshold, few_threshold: the count thresholds of :func:`class_groups`.
    """
    logits, labels = _check_scores_and_labels(logits, labels, "logits")
    num_classes = logits.shape[1]
    if class_group_boundaries is not None and class_counts is None:
        raise ValueError("class_group_boundaries needs class_counts too (one training count per class)")
    probabilities = np.exp(_log_softmax(logits))
    confidences, correct = confidence_and_correctness(probabilities, labels)
    metrics = {
        "accuracy": float(correct.mean()),
        "top5_accuracy": top_k_accuracy(probabilities, labels, min(5, num_classes)),
    }
    if class_counts is not None:
        counts = check_class_counts(class_counts)
        if len(counts) != num_classes:
            raise ValueError(f"class_counts has {len(counts)} entries but logits have {num_classes} classes")
        groups = class_groups(counts, many_threshold, few_threshold, boundaries=class_group_boundaries)
        for name, members in groups.items():
            in_group = np.isin(labels, members)
            if in_group.any():
                metrics[f"{name}_accuracy"] = float(correct[in_group].mean())
                metrics[f"{name}_ece"] = expected_calibration_error(confidences[in_group], correct[in_group], n_bins)
    bins = calibration_bins(confidences, correct, n_bins)
    metrics["ece"] = bins.ece
    metrics["mce"] = bins.mce
    metrics["nll"] = negative_log_likelihood(logits, labels)
    metrics["classwise_ece"] = classwise_expected_calibration_error(probabilities, labels, n_bins)
    metrics["adaptive_ece"] = adaptive_expected_calibration_error(confidences, correct, n_bins)
    metrics["brier"] = brier_score(probabilities, labels)
    return metrics


def compute_metrics(class_counts=None, class_group_boundaries=None, n_bins=15, many_threshold=100, few_threshold=20):
    """``Trainer(compute_metrics=...)`` callback returning :func:`calibration_metrics`.

    The returned function takes a ``transformers.EvalPrediction`` (anything
    with ``.predictions`` and ``.label_ids``); when ``predictions`` is a tuple
    (a model returning more than logits) its first element is taken as logits.
    Logits that are NaN or infinite mean the model diverged: it raises
    ``FloatingPointError`` saying so, with how many images it concerns.
    """

    def _compute(eval_pred):
        logits = eval_pred.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        not_finite = ~np.isfinite(np.asarray(logits, dtype=np.float64)).all(axis=1)
        if not_finite.any():
            raise FloatingPointError(
                f"the model's logits are NaN or infinite for {int(not_finite.sum())} of {len(not_finite)} evaluation "
                "images: its training diverged (the logged training loss shows where; saved weights are kept). "
                "Train longer (a few --max_steps of stage 1 give stage 2 an unusable start) or with a lower "
                "--learning_rate."
            )
        return calibration_metrics(
            logits,
            eval_pred.label_ids,
            class_counts=class_counts,
            class_group_boundaries=class_group_boundaries,
            n_bins=n_bins,
            many_threshold=many_threshold,
            few_threshold=few_threshold,
        )

    return _compute
