"""Validation of training-set class counts, shared by the losses and the calibration metrics.

:func:`check_class_counts` checks the per-class training image counts ``N_y`` that label-aware smoothing
(:mod:`mislas_hf.losses`) and the Many / Medium / Few groups of :mod:`mislas_hf.calibration` are built from.
It depends on nothing else of ``mislas_hf``.
"""

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
