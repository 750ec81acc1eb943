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

Group accuracies follow the paper's Appendix A split by training-set size
(Many > 100 images, Medium 20-100, Few < 20), or the fixed index ranges of the
authors' CIFAR configs (see :func:`class_groups`).
"""

from dataclasses import dataclass

import numpy as np
import torch

def _to_numpy(values, name, dtype=None):
    """numpy array of an array-like or tensor, optionally cast to ``dtype`` (bf16/fp16 tensors go through float64)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = values.double() if values.is_floating_point() else values
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array or tensor: {error}") from error


def check_class_counts(class_counts):
    """Validate training-set class counts; returns them as a float64 array of shape ``[K]``."""
    counts = _to_numpy(class_counts, "class_counts", np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(
            f"class_counts must be a non-empty 1-D sequence (one count per class), got shape {counts.shape}"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts <= 0):
        raise ValueError("class_counts must be positive finite numbers: every class needs at least one training image")
    return counts


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
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.maximum(np.digitize(confidences, edges, right=True), 1) - 1
    counts = np.bincount(bin_index, minlength=n_bins)

    def bin_means(values):
        sums = np.bincount(bin_index, weights=values, minlength=n_bins)
        return np.divide(sums, counts, out=np.zeros(n_bins), where=counts > 0)

    return CalibrationBins(
        edges=edges,
        counts=counts,
        accuracies=bin_means(correct.astype(np.float64)),
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
    * ``ece``, ``mce`` (Sec. 2, ``n_bins`` bins), ``nll`` (mean, natural log).

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
    bins = calibration_bins(confidences, correct, n_bins)
    metrics["ece"] = bins.ece
    metrics["mce"] = bins.mce
    metrics["nll"] = negative_log_likelihood(logits, labels)
    return metrics


def compute_metrics(class_counts=None, class_group_boundaries=None, n_bins=15, many_threshold=100, few_threshold=20):
    """``Trainer(compute_metrics=...)`` callback returning :func:`calibration_metrics`.

    The returned function takes a ``transformers.EvalPrediction`` (anything
    with ``.predictions`` and ``.label_ids``); when ``predictions`` is a tuple
    (a model returning more than logits) its first element is taken as logits.
    """

    def _compute(eval_pred):
        logits = eval_pred.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
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


def draw_reliability_diagram(ax, bins, title=None):
    """Draw a reliability diagram in the style of MiSLAS Figs. 1 and 4 onto a matplotlib ``Axes``.

    Blue bars are the bin accuracies ("Outputs"), the shaded bars the gap to
    the bin's mean confidence, the dashed diagonal perfect calibration; the
    ECE is printed in percent. The first bar container on ``ax`` holds the
    accuracy bars, the second the gaps.

    Args:
        ax: a matplotlib ``Axes``.
        bins: :class:`CalibrationBins` from :func:`calibration_bins`.
        title: optional title.

    Returns:
        ``ax``.
    """
    left, width = bins.edges[:-1], np.diff(bins.edges)
    ax.bar(left, bins.accuracies, width=width, align="edge", color="#4c72b0", edgecolor="black", linewidth=0.8,
           label="Outputs")
    ax.bar(left, bins.gaps, bottom=np.minimum(bins.accuracies, bins.confidences), width=width, align="edge",
           color="#f08080", alpha=0.5, edgecolor="#c03030", hatch="//", linewidth=0.8, label="Gap")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.5)
    ax.text(0.96, 0.04, f"ECE = {100 * bins.ece:.2f}%", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=12, bbox={"facecolor": "white", "edgecolor": "lightgray", "alpha": 0.9})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    ax.legend(loc="upper left")
    if title is not None:
        ax.set_title(title)
    return ax


def reliability_diagram(confidences, correct, path, n_bins=15, title=None):
    """Save a reliability diagram (MiSLAS Figs. 1 and 4, 15 bins) of top-1 predictions as a PNG.

    Args:
        confidences: ``[N]`` top-1 confidences in ``[0, 1]``.
        correct: ``[N]`` booleans, whether the top-1 prediction is right.
        path: output file (PNG).
        n_bins: number of bins.
        title: optional title.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    bins = calibration_bins(confidences, correct, n_bins)
    figure = Figure(figsize=(5, 5), dpi=100)
    draw_reliability_diagram(figure.subplots(), bins, title=title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
