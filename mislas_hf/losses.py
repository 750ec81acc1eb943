"""Stage-2 losses of MiSLAS (Zhong et al., CVPR 2021), the mixup used in Stage-1, and two baselines.

* Label-aware smoothing (LAS), Sec. 3.2, Eqs. (1)-(3) and Appendix B, Eq. (7).
* Mixup (Zhang et al., ICLR 2018), applied in Stage-1 (Sec. 3.1).
* Class-balanced cross-entropy (CB-CE, Cui et al., CVPR 2019), the Stage-2
  re-weighting baseline of Table 2.
* Logit-adjusted cross-entropy (Menon et al., ICLR 2021; Balanced Softmax,
  Ren et al., NeurIPS 2020, at tau = 1), a one-stage long-tail baseline.

Every loss returns the mean over the batch and is computed in float32, also
when the logits come out of a bf16/fp16 autocast region.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .class_counts import check_class_counts

SMOOTHING_SHAPES = ("concave", "linear", "convex", "exp")


def label_aware_smoothing_factors(class_counts, smooth_head, smooth_tail, shape="concave", power=None):
    """Per-class smoothing factors ``epsilon_y = f(N_y)`` of label-aware smoothing.

    With ``t_y = (N_y - N_K) / (N_1 - N_K)``, where ``N_1`` is the largest and
    ``N_K`` the smallest class count (the classes need not be sorted), and
    ``e1 = smooth_head``, ``eK = smooth_tail``:

    * ``"concave"`` (Eq. 3.a, the paper's default): ``eK + (e1 - eK) sin(pi t / 2)``
    * ``"linear"`` (Eq. 3.b): ``eK + (e1 - eK) t``
    * ``"convex"`` (Eq. 3.c): ``e1 + (e1 - eK) sin(3 pi / 2 + pi t / 2)``
    * ``"exp"`` (Appendix B, Eq. 7): ``eK + (e1 - eK) t ** power``

    so the most frequent class gets ``e1`` and the rarest ``eK``. When every
    class has the same count, ``t`` is undefined (0 / 0); every class is then
    a head class (``N_y = N_1``) and gets ``smooth_head``, i.e. plain label
    smoothing with ``smooth_head``.

    Args:
        class_counts: training images per class, ``K`` positive numbers.
        smooth_head: ``epsilon_1``, factor of the most frequent class.
        smooth_tail: ``epsilon_K``, factor of the rarest class. The paper
            (Sec. 4.2) requires ``0 <= smooth_tail <= smooth_head <= 0.5``.
        shape: one of ``"concave"``, ``"linear"``, ``"convex"``, ``"exp"``.
        power: the exponent ``p > 0`` of Eq. (7); only for ``shape="exp"``.

    Returns:
        float32 tensor of shape ``[K]``.
    """
    counts = check_class_counts(class_counts)
    if not 0.0 <= smooth_tail <= smooth_head <= 0.5:
        raise ValueError(
            f"smooth_tail={smooth_tail} and smooth_head={smooth_head} must satisfy "
            "0 <= smooth_tail <= smooth_head <= 0.5 (MiSLAS Sec. 4.2); pass smaller factors"
        )
    if shape not in SMOOTHING_SHAPES:
        raise ValueError(f"shape={shape!r} is unknown; use one of {SMOOTHING_SHAPES}")
    if shape == "exp":
        if power is None or not power > 0:
            raise ValueError(f"shape='exp' needs a positive power (Eq. 7), got power={power}")
    elif power is not None:
        raise ValueError(f"power={power} is only used by shape='exp'; leave power=None for shape={shape!r}")

    n_head, n_tail = counts.max(), counts.min()
    if n_head == n_tail:
        return torch.full((len(counts),), smooth_head, dtype=torch.float32)
    t = (counts - n_tail) / (n_head - n_tail)
    span = smooth_head - smooth_tail
    if shape == "concave":
        factors = smooth_tail + span * np.sin(math.pi * t / 2)
    elif shape == "linear":
        factors = smooth_tail + span * t
    elif shape == "convex":
        factors = smooth_head + span * np.sin(1.5 * math.pi + math.pi * t / 2)
    else:
        factors = smooth_tail + span * np.power(t, power)
    return torch.from_numpy(factors).float()


def _check_logits_and_labels(logits, labels, num_classes):
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape [batch, {num_classes}], got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape [{logits.shape[0]}] to match logits, got {tuple(labels.shape)}")
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        raise ValueError(
            f"label {labels[outside][0].item()} is outside [0, {num_classes}): labels must be class ids of the "
            f"{num_classes} classes that class_counts describes; check the dataset's label column"
        )


class LabelAwareSmoothingLoss(nn.Module):
    """Label-aware smoothing loss (LAS), MiSLAS Sec. 3.2, Eqs. (1)-(3).

    For a sample of class ``y`` with factor ``eps_y`` (from
    :func:`label_aware_smoothing_factors`) and ``p = softmax(logits)``::

        loss = (1 - eps_y) * (-log p_y) + eps_y * mean_i(-log p_i)

    averaged over the batch. This is the form of the authors' code
    (``methods.LabelAwareSmoothing``), kept so that losses match the published
    checkpoints. It spreads ``eps_y / K`` over *all* classes, ``y`` included:
    the target is ``q_y = 1 - eps_y + eps_y / K`` and ``q_i = eps_y / K``,
    whereas Eq. (1) writes ``q_y = 1 - eps_y`` and ``q_i = eps_y / (K - 1)``.
    The two coincide after rescaling: this loss with ``eps_y`` equals Eq. (1)
    with ``eps_y * (K - 1) / K``. Its minimiser (Appendix E, Eqs. 10-12) is
    ``softmax(logits) = q``, i.e. a logit gap of
    ``log((1 - eps_y + eps_y / K) / (eps_y / K))`` between class ``y`` and the
    others, instead of Eq. (12)'s ``log((K - 1)(1 - eps_y) / eps_y)``.

    The factors live in the non-persistent buffer ``smoothing`` (shape ``[K]``),
    so they follow ``.to(device)`` and stay out of the state dict.
    """

    def __init__(self, class_counts, smooth_head, smooth_tail, shape="concave", power=None):
        super().__init__()
        smoothing = label_aware_smoothing_factors(class_counts, smooth_head, smooth_tail, shape, power)
        self.register_buffer("smoothing", smoothing, persistent=False)

    def forward(self, logits, labels):
        """Mean LAS loss of ``logits`` ``[N, K]`` against integer ``labels`` ``[N]``, in float32."""
        _check_logits_and_labels(logits, labels, len(self.smoothing))
        log_probs = F.log_softmax(logits.float(), dim=-1)
        nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
        uniform = -log_probs.mean(dim=-1)
        eps = self.smoothing[labels]
        return ((1.0 - eps) * nll + eps * uniform).mean()


class ClassBalancedCrossEntropy(nn.Module):
    """Class-balanced cross-entropy (CB-CE, Cui et al., CVPR 2019), the baseline of MiSLAS Table 2.

    Class ``c`` with ``N_c`` training images is weighted by the inverse
    effective number ``(1 - beta) / (1 - beta ** N_c)``; the weights are
    rescaled to sum to ``K`` (as in Cui et al.'s code) and kept in the
    non-persistent buffer ``weight``. The loss is the weighted mean of
    ``F.cross_entropy(..., weight=weight)``:
    ``sum_n w_{y_n} nll_n / sum_n w_{y_n}``. ``beta=0`` gives plain cross-entropy.
    """

    def __init__(self, class_counts, beta=0.9999):
        super().__init__()
        counts = check_class_counts(class_counts)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta={beta} must lie in [0, 1); Cui et al. use 0.9, 0.99, 0.999 or 0.9999")
        weight = (1.0 - beta) / (1.0 - np.power(beta, counts))
        weight = weight / weight.sum() * len(counts)
        self.register_buffer("weight", torch.from_numpy(weight).float(), persistent=False)

    def forward(self, logits, labels):
        """Weighted mean cross-entropy of ``logits`` ``[N, K]`` against integer ``labels`` ``[N]``, in float32."""
        _check_logits_and_labels(logits, labels, len(self.weight))
        return F.cross_entropy(logits.float(), labels, weight=self.weight)


class LogitAdjustedCrossEntropy(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021)::

        loss = CE(z + tau * log pi, y) = -log(pi_y^tau e^{z_y} / sum_j pi_j^tau e^{z_j})

    with ``pi = N / sum(N)`` the class prior of the training counts. At ``tau = 1`` it is the Balanced Softmax
    (Ren et al., NeurIPS 2020), ``-log(N_y e^{z_y} / sum_j N_j e^{z_j})``; at ``tau = 0`` plain
    cross-entropy. Trained on a stream whose class prior is ``pi``, the logits ``z`` learn the posterior for the
    prior ``pi^(1 - tau)`` (uniform at tau = 1): predict with ``z`` alone. On a stream that is class-balanced
    already (the class-aware sampler of stage 2) the adjustment balances twice, and ``z`` learns the prior
    ``pi^(-tau)`` (the "over-balance" Ren et al. describe); see
    :func:`mislas_hf.calibration.effective_training_prior`.

    ``log pi`` lives in the non-persistent buffer ``log_prior`` (shape ``[K]``).
    """

    def __init__(self, class_counts, tau=1.0):
        super().__init__()
        counts = check_class_counts(class_counts)
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau={tau} must be a finite number >= 0 (1: Balanced Softmax, 0: cross-entropy)")
        self.tau = float(tau)
        self.register_buffer("log_prior", torch.from_numpy(np.log(counts / counts.sum())).float(), persistent=False)

    def forward(self, logits, labels):
        """Mean logit-adjusted CE of ``logits`` ``[N, K]`` against integer ``labels`` ``[N]``, in float32."""
        _check_logits_and_labels(logits, labels, len(self.log_prior))
        return F.cross_entropy(logits.float() + self.tau * self.log_prior, labels)


def mixup_batch(pixel_values, labels, alpha, generator=None):
    """Mixup (Zhang et al., ICLR 2018) as used in MiSLAS Stage-1 (Sec. 3.1).

    Draws one ``lam ~ Beta(alpha, alpha)`` for the whole batch and a random
    permutation ``perm``, and returns
    ``(lam * x + (1 - lam) * x[perm], labels, labels[perm], lam)``; train with
    :func:`mixup_loss`.

    Randomness: all draws come from ``generator`` (or, when it is ``None``, from
    torch's default CPU generator), so results repeat under ``torch.manual_seed``
    or a seeded ``torch.Generator``. torch has no generator-aware Beta sampler,
    so ``lam`` is drawn by numpy's ``Generator.beta`` seeded with a 63-bit
    integer taken from the torch generator. The permutation is drawn on the
    generator's device and moved to ``pixel_values.device``.

    Args:
        pixel_values: batch ``[N, ...]``.
        labels: integer labels ``[N]``.
        alpha: Beta concentration; ``alpha <= 0`` disables mixup: the batch is
            returned unchanged with ``labels_b = labels`` and ``lam = 1.0``,
            and no random number is drawn.
        generator: optional ``torch.Generator``.

    Returns:
        ``(mixed, labels_a, labels_b, lam)`` with ``lam`` a Python float.
    """
    if pixel_values.shape[:1] != labels.shape or labels.ndim != 1:
        raise ValueError(
            f"labels must have shape [{pixel_values.shape[0]}] to match pixel_values, got {tuple(labels.shape)}"
        )
    if not math.isfinite(alpha):
        raise ValueError(f"alpha={alpha} must be a finite number (alpha <= 0 disables mixup)")
    if alpha <= 0:
        return pixel_values, labels, labels, 1.0
    device = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device).item()
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(labels.shape[0], generator=generator, device=device).to(pixel_values.device)
    mixed = lam * pixel_values + (1.0 - lam) * pixel_values[perm]
    return mixed, labels, labels[perm], lam


def mixup_loss(criterion, logits, labels_a, labels_b, lam):
    """Mixup loss ``lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)``."""
    return lam * criterion(logits, labels_a) + (1.0 - lam) * criterion(logits, labels_b)
