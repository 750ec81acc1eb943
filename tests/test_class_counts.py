"""Tests of mislas_hf.class_counts: validation of the per-class training counts."""

import numpy as np
import pytest
import torch

from mislas_hf.class_counts import check_class_counts


@pytest.mark.parametrize(
    "class_counts",
    [[500, 50, 5], (500, 50, 5), np.array([500, 50, 5], dtype=np.int32), torch.tensor([500, 50, 5]),
     torch.tensor([500.0, 50.0, 5.0], dtype=torch.bfloat16), [500.0, 50.0, 5.0]],
)
def test_check_class_counts_returns_float64_vector(class_counts):
    counts = check_class_counts(class_counts)
    assert isinstance(counts, np.ndarray) and counts.dtype == np.float64
    np.testing.assert_array_equal(counts, [500.0, 50.0, 5.0])


def test_check_class_counts_keeps_fractional_counts():
    np.testing.assert_array_equal(check_class_counts([0.5, 2.25]), [0.5, 2.25])


@pytest.mark.parametrize(
    "class_counts,match",
    [
        ([], "non-empty 1-D"),
        ([[5, 3], [2, 1]], "non-empty 1-D"),
        (7, "non-empty 1-D"),
        ([5, 0], "positive finite"),
        ([5, -1], "positive finite"),
        ([5, float("nan")], "positive finite"),
        ([5, float("inf")], "positive finite"),
        (["five", "three"], "numeric array"),
    ],
)
def test_check_class_counts_rejects_bad_input(class_counts, match):
    with pytest.raises(ValueError, match=match):
        check_class_counts(class_counts)


def test_losses_and_calibration_share_the_one_check():
    import mislas_hf.calibration
    import mislas_hf.losses

    assert mislas_hf.losses.check_class_counts is check_class_counts
    assert mislas_hf.calibration.check_class_counts is check_class_counts
