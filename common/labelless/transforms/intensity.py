# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Intensity normalisation of the few-shot protocol (fewshot_protocol.md §2.6)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from labelless.errors import DataError

__all__ = ["zscore", "fold_statistics", "slices_to_tensor_input"]


def zscore(array: np.ndarray, mean: float | None = None, std: float | None = None, source=None) -> np.ndarray:
    """(x - mean) / std as float32; per-volume statistics when ``mean``/``std`` are ``None`` (MR rule).

    Raises:
        DataError: non-finite values, or a constant volume (std == 0).
    """
    a = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise DataError(source, "image contains NaN or infinite intensities")
    m = float(a.mean()) if mean is None else float(mean)
    s = float(a.std()) if std is None else float(std)
    if not np.isfinite(s) or s <= 0:
        raise DataError(source, "image is constant (standard deviation 0): cannot z-score it")
    return ((a - m) / s).astype(np.float32)


def fold_statistics(volumes: Iterable[np.ndarray]) -> tuple[float, float]:
    """Global mean and std over all voxels of ``volumes`` (CT rule: training scans of the fold)."""
    n, s, ss = 0, 0.0, 0.0
    for v in volumes:
        a = np.asarray(v, dtype=np.float64)
        n += a.size
        s += float(a.sum())
        ss += float((a * a).sum())
    if n == 0:
        raise DataError(None, "no voxels to compute normalisation statistics from")
    mean = s / n
    return float(mean), float(np.sqrt(max(ss / n - mean * mean, 0.0)))


def slices_to_tensor_input(slices: np.ndarray) -> np.ndarray:
    """(B, H, W) or (H, W) normalised slices -> (B, 3, H, W) float32 by repeating the channel (no ImageNet stats)."""
    a = np.asarray(slices, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise DataError(None, f"expected (B, H, W) slices, got shape {a.shape}")
    return np.repeat(a[:, None], 3, axis=1)
