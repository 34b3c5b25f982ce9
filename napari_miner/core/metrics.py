"""Quality metrics."""

from __future__ import annotations

import math

import numpy as np
import torch


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB for a mean squared error and a peak value.

    ``inf`` for a perfect fit, ``-inf`` for an infinite error and NaN for a NaN error (a diverged
    fit), never an exception.
    """
    if math.isnan(mse):
        return math.nan
    if mse <= 0:
        return math.inf
    if math.isinf(mse):
        return -math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> float:
    """PSNR of ``estimate`` against ``reference`` in dB.

    ``data_range`` defaults to the reference's ``max - min`` (1 for a constant reference).
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {est.shape}")
    if data_range is None:
        data_range = float(ref.max() - ref.min()) or 1.0
    return psnr_from_mse(float(np.mean((ref - est) ** 2)), data_range)


def iou(reference: np.ndarray, estimate: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of the occupied sets ``reference >= threshold``, ``estimate >= threshold``."""
    a = np.asarray(reference) >= threshold
    b = np.asarray(estimate) >= threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def iou_of(estimate: torch.Tensor, target: torch.Tensor, threshold: float) -> float:
    """IoU of ``estimate >= threshold`` and ``target >= threshold`` for torch tensors."""
    a = estimate >= threshold
    b = target >= threshold
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
