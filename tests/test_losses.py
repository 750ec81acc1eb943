"""Tests of mislas_hf.losses against hand-computed values and the paper's formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mislas_hf.losses import (
    ClassBalancedCrossEntropy,
    LabelAwareSmoothingLoss,
    LogitAdjustedCrossEntropy,
    label_aware_smoothing_factors,
    mixup_batch,
    mixup_loss,
)

# N_1 = 13, N_K = 1, so t = (N - 1) / 12 is 1/3, 1, 0, 2/3, 1/4 (the classes are deliberately unsorted).
COUNTS = [5, 13, 1, 9, 4]
SQRT3 = math.sqrt(3.0)
SIN_PI_8 = math.sqrt(2.0 - math.sqrt(2.0)) / 2.0  # sin(pi/8)
COS_PI_8 = math.sqrt(2.0 + math.sqrt(2.0)) / 2.0  # cos(pi/8)

# e1 = 0.4, eK = 0.1, so e1 - eK = 0.3.
EXPECTED_FACTORS = {
    # eK + 0.3 sin(pi t / 2): sin(pi/6) = 1/2, sin(pi/3) = sqrt(3)/2.
    ("concave", None): [0.1 + 0.3 * 0.5, 0.4, 0.1, 0.1 + 0.3 * SQRT3 / 2, 0.1 + 0.3 * SIN_PI_8],
    ("linear", None): [0.2, 0.4, 0.1, 0.3, 0.175],
    # e1 + 0.3 sin(3 pi / 2 + pi t / 2) = e1 - 0.3 cos(pi t / 2).
    ("convex", None): [0.4 - 0.3 * SQRT3 / 2, 0.4, 0.1, 0.4 - 0.3 * 0.5, 0.4 - 0.3 * COS_PI_8],
    ("exp", 2.0): [0.1 + 0.3 / 9, 0.4, 0.1, 0.1 + 0.3 * 4 / 9, 0.1 + 0.3 / 16],
    ("exp", 0.5): [0.1 + 0.3 / SQRT3, 0.4, 0.1, 0.1 + 0.3 * math.sqrt(2 / 3), 0.1 + 0.3 * 0.5],
}


def cifar100_lt_counts(imbalance_factor=100):
    """Training counts of CIFAR-100-LT (Cao et al. 2019): int(500 * (1/IF) ** (i / 99))."""
    return [int(500 * (1.0 / imbalance_factor) ** (i / 99)) for i in range(100)]


@pytest.mark.parametrize("shape,power", list(EXPECTED_FACTORS))
def test_factors_match_hand_values(shape, power):
    factors = label_aware_smoothing_factors(COUNTS, 0.4, 0.1, shape=shape, power=power)
    assert factors.dtype == torch.float32
    np.testing.assert_allclose(factors.numpy(), EXPECTED_FACTORS[(shape, power)], rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape,power", list(EXPECTED_FACTORS))
def test_factors_on_cifar100_lt_decrease_from_head_to_tail(shape, power):
    # Fig. 6 setting: K = 100, N_1 = 500, N_100 = 5, e1 = 0.4, e100 = 0.1.
    counts = cifar100_lt_counts()
    assert (counts[0], counts[-1]) == (500, 5)
    factors = label_aware_smoothing_factors(counts, 0.4, 0.1, shape=shape, power=power).numpy()
    assert factors[0] == pytest.approx(0.4) and factors[-1] == pytest.approx(0.1)
    assert np.all(np.diff(factors) <= 0)
    # Class 35 has 98 images: t = 93 / 495.
    t = 93 / 495
    expected_35 = {
        "concave": 0.1 + 0.3 * math.sin(math.pi * t / 2),
        "linear": 0.1 + 0.3 * t,
        "convex": 0.4 - 0.3 * math.cos(math.pi * t / 2),
        "exp": 0.1 + 0.3 * t ** (power or 1.0),
    }[shape]
    assert counts[35] == 98
    assert factors[35] == pytest.approx(expected_35, abs=1e-7)


def test_factors_with_equal_counts_are_all_smooth_head():
    factors = label_aware_smoothing_factors([50, 50, 50], 0.3, 0.1)
    np.testing.assert_array_equal(factors.numpy(), np.float32([0.3, 0.3, 0.3]))
    assert torch.isfinite(label_aware_smoothing_factors([7], 0.2, 0.0, shape="exp", power=2.0)).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"smooth_head": 0.1, "smooth_tail": 0.2}, "smooth_tail"),
        ({"smooth_head": 0.6, "smooth_tail": 0.1}, "0.5"),
        ({"smooth_head": 0.3, "smooth_tail": -0.1}, "smooth_tail"),
        ({"shape": "cubic"}, "shape"),
        ({"shape": "exp"}, "power"),
        ({"shape": "exp", "power": 0.0}, "power"),
        ({"shape": "concave", "power": 2.0}, "power"),
        ({"class_counts": []}, "class_counts"),
        ({"class_counts": [10, -1]}, "class_counts"),
        ({"class_counts": [10, 0]}, "class_counts"),
        ({"class_counts": [[10, 5]]}, "class_counts"),
    ],
)
def test_factors_reject_bad_input(kwargs, match):
    arguments = {"class_counts": COUNTS, "smooth_head": 0.4, "smooth_tail": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        label_aware_smoothing_factors(**arguments)


def _soft_target_cross_entropy(logits, targets):
    """-sum_i q_i log p_i averaged over the batch, in float64 (Eq. 8)."""
    return float(-(targets * torch.log_softmax(logits.double(), dim=-1)).sum(dim=-1).mean())


def _reference_targets(labels, eps, num_classes):
    """Target of the authors' code: q_y = 1 - eps + eps / K, q_i = eps / K."""
    eps = eps.double()[:, None]
    return eps / num_classes + (1 - eps) * F.one_hot(labels, num_classes).double()


def _paper_targets(labels, eps, num_classes):
    """Target of Eq. (1): q_y = 1 - eps, q_i = eps / (K - 1)."""
    eps = eps.double()[:, None]
    one_hot = F.one_hot(labels, num_classes).double()
    return (1 - eps) * one_hot + eps / (num_classes - 1) * (1 - one_hot)


def test_loss_equals_soft_target_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 5, generator=generator)
    labels = torch.randint(0, 5, (64,), generator=generator)
    criterion = LabelAwareSmoothingLoss(COUNTS, 0.4, 0.1)
    eps = torch.tensor(EXPECTED_FACTORS[("concave", None)])[labels]
    expected = _soft_target_cross_entropy(logits, _reference_targets(labels, eps, 5))
    assert criterion(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # The same loss is Eq. (1) with eps * (K - 1) / K.
    assert criterion(logits, labels).item() == pytest.approx(
        _soft_target_cross_entropy(logits, _paper_targets(labels, eps * 4 / 5, 5)), rel=1e-6
    )
    assert criterion(logits, labels).item() != pytest.approx(
        _soft_target_cross_entropy(logits, _paper_targets(labels, eps, 5)), rel=1e-3
    )


def test_loss_with_zero_smoothing_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    criterion = LabelAwareSmoothingLoss([10, 5, 1], 0.0, 0.0)
    # -log softmax by hand: log(e^2 + 1 + e^-1) - 2 and log(2 e^0.5 + e^3) - 0.5.
    expected = (math.log(math.exp(2) + 1 + math.exp(-1)) - 2 + math.log(2 * math.exp(0.5) + math.exp(3)) - 0.5) / 2
    assert criterion(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def _minimise(loss_fn, num_classes):
    logits = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], lr=1.0, max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(logits)
        loss.backward()
        return loss

    optimizer.step(closure)
    return logits.detach()


def test_loss_minimiser_is_reference_target_distribution():
    # One free logit vector of a class-1 sample (eps = 0.4 in COUNTS), K = 5.
    num_classes, label, eps = 5, 1, 0.4
    criterion = LabelAwareSmoothingLoss(COUNTS, 0.4, 0.1)
    labels = torch.tensor([label])
    logits = _minimise(lambda z: criterion(z[None, :], labels), num_classes)
    probs = torch.softmax(logits, dim=0)
    expected = torch.full((num_classes,), eps / num_classes, dtype=torch.float64)
    expected[label] = 1 - eps + eps / num_classes  # 0.68 and 0.08
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    gap = logits[label] - logits[0]
    assert gap.item() == pytest.approx(math.log((1 - eps + eps / num_classes) / (eps / num_classes)), abs=1e-4)
    assert gap.item() == pytest.approx(math.log(8.5), abs=1e-4)  # 0.68 / 0.08


def test_loss_rescaled_to_paper_eq1_has_the_eq12_minimiser():
    # Eqs. (10)-(12): with Eq. (1)'s target q_y = 1 - eps, q_i = eps / (K - 1) the optimal logit gap is
    # log((K - 1)(1 - eps) / eps). The package's loss equals Eq. (1) with eps * (K - 1) / K, so the package's loss
    # with eps' = eps * K / (K - 1) must have that minimiser (equal counts: every class gets smooth_head = eps').
    num_classes, label, eps = 5, 2, 0.3
    criterion = LabelAwareSmoothingLoss([7] * num_classes, eps * num_classes / (num_classes - 1), 0.0)
    logits = _minimise(lambda z: criterion(z[None, :], torch.tensor([label])), num_classes)
    gap = (logits[label] - logits[0]).item()
    assert gap == pytest.approx(math.log((num_classes - 1) * (1 - eps) / eps), abs=1e-4)  # log(28 / 3)
    assert gap == pytest.approx(math.log(28 / 3), abs=1e-4)


def test_loss_buffer_follows_module_and_stays_out_of_state_dict():
    criterion = LabelAwareSmoothingLoss(COUNTS, 0.4, 0.1, shape="linear")
    assert dict(criterion.named_buffers())["smoothing"].tolist() == pytest.approx(EXPECTED_FACTORS[("linear", None)])
    assert "smoothing" not in criterion.state_dict()
    assert criterion.to(torch.float64).smoothing.dtype == torch.float64


def test_loss_is_float32_under_bf16_autocast():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 5, generator=generator).bfloat16()
    labels = torch.randint(0, 5, (16,), generator=generator)
    criterion = LabelAwareSmoothingLoss(COUNTS, 0.4, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = criterion(logits, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(criterion(logits.float(), labels).item(), rel=1e-7)


def test_losses_reject_mismatched_shapes():
    criterion = LabelAwareSmoothingLoss(COUNTS, 0.4, 0.1)
    with pytest.raises(ValueError, match="logits"):
        criterion(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        criterion(torch.zeros(2, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        ClassBalancedCrossEntropy([2, 1])(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("bad_label", [5, -1])
def test_losses_name_an_out_of_range_label(bad_label):
    labels = torch.tensor([0, 4, bad_label, 1])
    for criterion in (LabelAwareSmoothingLoss(COUNTS, 0.4, 0.1), ClassBalancedCrossEntropy(COUNTS)):
        with pytest.raises(ValueError, match=rf"label {bad_label} is outside \[0, 5\)"):
            criterion(torch.zeros(4, 5), labels)


def test_class_balanced_cross_entropy_by_hand():
    # beta = 0.5, counts [2, 1]: raw weights 0.5 / 0.75 = 2/3 and 0.5 / 0.5 = 1, sum 5/3,
    # rescaled to sum K = 2: 0.8 and 1.2.
    criterion = ClassBalancedCrossEntropy([2, 1], beta=0.5)
    torch.testing.assert_close(criterion.weight, torch.tensor([0.8, 1.2]))
    # Sample 1: p = (1/2, 1/2), label 0, nll log 2; sample 2: p = (1/4, 3/4), label 1, nll log(4/3).
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    labels = torch.tensor([0, 1])
    expected = (0.8 * math.log(2) + 1.2 * math.log(4 / 3)) / (0.8 + 1.2)
    assert criterion(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # Weighted mean, not plain mean: two class-0 samples and one class-1 sample.
    logits3 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, math.log(3.0)]])
    expected3 = (2 * 0.8 * math.log(2) + 1.2 * math.log(4 / 3)) / (2 * 0.8 + 1.2)
    assert criterion(logits3, torch.tensor([0, 0, 1])).item() == pytest.approx(expected3, rel=1e-6)


def test_class_balanced_cross_entropy_cifar_weights_and_beta_zero():
    counts = cifar100_lt_counts()
    weight = ClassBalancedCrossEntropy(counts, beta=0.9999).weight.double()
    assert weight.sum().item() == pytest.approx(100, rel=1e-6)
    # Inverse effective number: w_0 / w_99 = (1 - 0.9999^5) / (1 - 0.9999^500).
    assert (weight[0] / weight[-1]).item() == pytest.approx((1 - 0.9999**5) / (1 - 0.9999**500), rel=1e-5)
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(0, 100, 13)[:8]
    plain = ClassBalancedCrossEntropy(counts, beta=0.0)
    assert plain(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("beta", [1.0, -0.1])
def test_class_balanced_cross_entropy_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        ClassBalancedCrossEntropy([2, 1], beta=beta)


def test_mixup_batch_mixes_with_one_lambda_and_a_permutation():
    pixel_values = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(8)
    mixed, labels_a, labels_b, lam = mixup_batch(pixel_values, labels, alpha=1.0,
                                                 generator=torch.Generator().manual_seed(4))
    assert isinstance(lam, float) and 0.0 < lam < 1.0
    assert torch.equal(labels_a, labels)
    assert sorted(labels_b.tolist()) == list(range(8))  # labels are indices, so labels_b is the permutation
    torch.testing.assert_close(mixed, lam * pixel_values + (1 - lam) * pixel_values[labels_b])


def test_mixup_batch_is_deterministic_under_seeds():
    x, y = torch.randn(16, 5), torch.arange(16)
    first = mixup_batch(x, y, 0.2, generator=torch.Generator().manual_seed(7))
    second = mixup_batch(x, y, 0.2, generator=torch.Generator().manual_seed(7))
    other = mixup_batch(x, y, 0.2, generator=torch.Generator().manual_seed(8))
    assert first[3] == second[3] and torch.equal(first[2], second[2]) and torch.equal(first[0], second[0])
    assert first[3] != other[3]
    torch.manual_seed(11)
    global_first = mixup_batch(x, y, 0.2)
    torch.manual_seed(11)
    global_second = mixup_batch(x, y, 0.2)
    assert global_first[3] == global_second[3] and torch.equal(global_first[2], global_second[2])


def test_mixup_lambda_follows_beta_distribution():
    # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); for a = 0.2 that is 0.178571.
    generator = torch.Generator().manual_seed(5)
    x, y = torch.zeros(2, 1), torch.arange(2)
    lams = np.array([mixup_batch(x, y, 0.2, generator=generator)[3] for _ in range(4000)])
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(1 / (4 * 1.4), abs=0.01)
    assert np.mean(lams < 0.1) > 0.25  # U-shaped for a < 1: a uniform draw would give 0.1


def test_mixup_batch_without_alpha_returns_input_and_draws_nothing():
    x, y = torch.randn(4, 2), torch.tensor([3, 1, 2, 0])
    generator = torch.Generator().manual_seed(6)
    state = generator.get_state()
    mixed, labels_a, labels_b, lam = mixup_batch(x, y, 0.0, generator=generator)
    assert mixed is x and labels_a is y and labels_b is y and lam == 1.0
    assert torch.equal(generator.get_state(), state)


def test_mixup_batch_rejects_bad_input():
    with pytest.raises(ValueError, match="labels"):
        mixup_batch(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        mixup_batch(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), float("nan"))


def test_mixup_loss_combines_both_label_sets():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    loss = mixup_loss(F.cross_entropy, logits, torch.tensor([0]), torch.tensor([1]), 0.3)
    assert loss.item() == pytest.approx(0.3 * math.log(4) + 0.7 * math.log(4 / 3), rel=1e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_cross_entropy_is_cross_entropy_of_adjusted_logits(tau):
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(12, 5, generator=generator) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 2, 4])
    criterion = LogitAdjustedCrossEntropy(COUNTS, tau=tau)
    log_prior = np.log(np.array(COUNTS, dtype=np.float64) / sum(COUNTS))  # COUNTS sum to 32
    adjusted = logits.double().numpy() + tau * log_prior
    log_softmax = adjusted - np.log(np.exp(adjusted).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(12), labels.numpy()].mean()
    assert criterion(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # with mixup (stage 1): the same criterion on both label sets
    shuffled = labels.flip(0)
    mixed = mixup_loss(criterion, logits, labels, shuffled, 0.3)
    expected_b = -log_softmax[np.arange(12), shuffled.numpy()].mean()
    assert mixed.item() == pytest.approx(0.3 * expected + 0.7 * expected_b, rel=1e-6)


def test_logit_adjusted_cross_entropy_at_tau_one_is_balanced_softmax():
    """Balanced Softmax (Ren et al. 2020): -log(n_y e^{z_y} / sum_j n_j e^{z_j}), with the raw counts n."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.5], [-0.5, 0.3, 2.2, -1.2, 0.1]])
    labels = torch.tensor([2, 4])
    counts = np.array(COUNTS, dtype=np.float64)
    z = logits.double().numpy()
    per_image = [
        -math.log(counts[y] * math.exp(z[i, y]) / np.sum(counts * np.exp(z[i]))) for i, y in enumerate(labels.tolist())
    ]
    assert LogitAdjustedCrossEntropy(COUNTS).tau == 1.0
    assert LogitAdjustedCrossEntropy(COUNTS)(logits, labels).item() == pytest.approx(np.mean(per_image), rel=1e-6)
