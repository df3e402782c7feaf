# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Segmentation metrics of the few-shot protocol (fewshot_protocol.md §6.4).

Conventions used everywhere in labelless:

- **Dice is in the 0..1 range** (reports multiply by 100 only for display) and is computed from *summed* counts:
  ``Dice = 2 TP / (2 TP + FP + FN)``. With TP, FP, FN summed over all scored slices of a scan this is the 3D Dice of
  the scan (not the mean of per-slice Dice values).
- **Empty / empty**: when prediction and ground truth are both empty (``2TP + FP + FN == 0``) Dice is defined as
  ``1.0`` (perfect agreement on "nothing there"). The protocol never scores such a scan (query scans without the
  class are skipped), but the 2D helpers (:func:`dice_per_image`) meet it on images without a lesion.
- **Surface distances (HD95, ASD) are in mm**, computed on the boundary voxels with the voxel spacing *in array
  order*. Our volumes are ``(Z, H, W)`` arrays indexed ``[z, y, x]`` while :attr:`Volume.spacing` is ``(x, y, z)``:
  pass ``spacing_zyx(volume.spacing)`` (the reversed tuple), never the spacing as read.
- **NaN distances**: HD95 and ASD are ``NaN`` when the prediction or the ground truth is empty (no surface to
  measure a distance to; an empty prediction is a complete miss that Dice already scores as 0). NaN values are
  excluded from means, and the number of excluded values is reported next to the mean
  (:func:`nanmean_with_count`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from labelless.errors import DataError

__all__ = [
    "segmentation_scores",
    "binary_mask",
    "iou_from_counts",
    "ConfusionCounts",
    "confusion_counts",
    "dice_from_counts",
    "dice_score",
    "dice_per_image",
    "spacing_zyx",
    "surface_distances",
    "hd95",
    "average_surface_distance",
    "nanmean_with_count",
]


@dataclass(frozen=True)
class ConfusionCounts:
    """Binary confusion counts; add them to sum over slices or scans.

    Examples::

        total = confusion_counts(pred[0], gt[0]) + confusion_counts(pred[1], gt[1])
        total.dice
    """

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def dice(self) -> float:
        """``2TP / (2TP + FP + FN)``; 1.0 when both masks are empty."""
        return dice_from_counts(self.tp, self.fp, self.fn)


def binary_mask(x: np.ndarray | torch.Tensor, name: str, squeeze: bool = False) -> np.ndarray:
    """A binary mask (bool or 0/1, numpy or tensor) as a bool array.

    Args:
        x: the mask.
        name: what it is, for error messages.
        squeeze: accept ``[1, H, W]`` and return ``(H, W)``; any other shape than 2D is then an error.

    Raises:
        DataError: NaN/inf, values other than 0/1, or (with ``squeeze``) a shape that is not ``[H, W]``/``[1, H, W]``.
    """
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if squeeze:
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise DataError(name, f"expected an [H, W] (or [1, H, W]) mask, got shape {tuple(np.shape(x))}")
    if a.dtype == bool:
        return a
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise DataError(name, "mask contains NaN or infinite values")
    if a.size and not np.all((a == 0) | (a == 1)):
        bad = np.unique(a[(a != 0) & (a != 1)])[:5].tolist()
        raise DataError(name, f"mask must be binary (0/1), found values {bad}")
    return a.astype(bool)


def confusion_counts(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> ConfusionCounts:
    """TP, FP, FN, TN of two binary masks of the same shape (numpy arrays or tensors, bool or 0/1).

    Raises:
        DataError: shapes differ or a mask is not binary.
    """
    p = binary_mask(pred, "prediction")
    t = binary_mask(target, "ground truth")
    if p.shape != t.shape:
        raise DataError(None, f"prediction shape {p.shape} differs from ground-truth shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return ConfusionCounts(tp, fp, fn, int(p.size) - tp - fp - fn)


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """``2TP / (2TP + FP + FN)`` in 0..1; defined as 1.0 when the denominator is 0 (both masks empty)."""
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else float(2 * tp) / float(den)


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    """``TP / (TP + FP + FN)``; 1.0 when both masks are empty."""
    den = tp + fp + fn
    return 1.0 if den == 0 else float(tp) / float(den)


def segmentation_scores(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, eps: float = 1e-7
) -> dict[str, float]:
    """Per-image scores of a binary segmentation (cltnet.md §7): Jaccard ``JA = TP / (TP + FN + FP)``, Dice
    ``DI = 2TP / (2TP + FN + FP)``, accuracy ``AC = (TP + TN) / N``, sensitivity ``SE = TP / (TP + FN)`` and
    specificity ``SP = TN / (TN + FP)``, each with ``eps`` added to the denominator.

    Returns:
        ``{"ja", "di", "ac", "se", "sp", "tp", "fp", "fn", "tn"}``.
    """
    c = confusion_counts(pred, target)
    tp, fp, fn, tn = c.tp, c.fp, c.fn, c.tn
    return {
        "ja": tp / (tp + fn + fp + eps), "di": 2 * tp / (2 * tp + fn + fp + eps),
        "ac": (tp + tn) / (tp + tn + fp + fn + eps), "se": tp / (tp + fn + eps), "sp": tn / (tn + fp + eps),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }  # fmt: skip


def dice_score(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary masks from their summed counts (a 3D volume gives the 3D Dice)."""
    c = confusion_counts(pred, target)
    return dice_from_counts(c.tp, c.fp, c.fn)


def dice_per_image(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """Dice of each 2D image of a bundle: ``(N, H, W)`` (or ``(N, 1, H, W)``) binary masks -> ``(N,)`` float64.

    An image whose prediction and ground truth are both empty scores 1.0 (see the module notes).
    """
    p = binary_mask(pred, "prediction")
    t = binary_mask(target, "ground truth")
    if p.shape != t.shape:
        raise DataError(None, f"prediction shape {p.shape} differs from ground-truth shape {t.shape}")
    if p.ndim < 2:
        raise DataError(None, f"expected (N, H, W) masks, got shape {p.shape}")
    p = p.reshape(p.shape[0], -1)
    t = t.reshape(t.shape[0], -1)
    tp = (p & t).sum(1).astype(np.float64)
    fp = (p & ~t).sum(1).astype(np.float64)
    fn = (~p & t).sum(1).astype(np.float64)
    den = 2 * tp + fp + fn
    out = np.ones(p.shape[0], dtype=np.float64)
    nz = den > 0
    out[nz] = 2 * tp[nz] / den[nz]
    return out


def spacing_zyx(spacing_xyz: Sequence[float]) -> tuple[float, ...]:
    """Voxel spacing in array order: ``Volume.spacing`` is (x, y, z), our arrays are (z, y, x)."""
    return tuple(float(s) for s in reversed(tuple(spacing_xyz)))


def _edges(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion (face connectivity; voxels on the array border are boundary)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def surface_distances(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | float | None = None,
    percentile: float = 95.0,
) -> tuple[float, float]:
    """Symmetric percentile Hausdorff distance and average symmetric surface distance, in mm.

    Same definition and values as MONAI's ``compute_hausdorff_distance(..., percentile=95)`` and
    ``compute_average_surface_distance(..., symmetric=True)`` (boundary = mask XOR its binary erosion; exact
    Euclidean distances from each boundary voxel to the other mask's boundary; HD = max of the two directed
    percentiles, ASD = mean of all distances of both directions), computed once for both with scipy on the bounding
    box of the union (a KD-tree, or distance transforms for noisy masks with many boundary voxels). Identical masks
    return ``(0.0, 0.0)`` directly.

    Args:
        pred: binary prediction, 2D or 3D, in array order (e.g. (Z, H, W)).
        target: binary ground truth of the same shape.
        spacing: voxel size per array axis in mm (for a (Z, H, W) array: ``spacing_zyx(volume.spacing)``), a single
            number for isotropic voxels, or ``None`` for unit spacing.
        percentile: percentile of the directed distances (95 for HD95; 100 gives the Hausdorff distance).

    Returns:
        ``(hd, asd)``; both ``NaN`` when the prediction or the ground truth is empty.

    Raises:
        DataError: shapes differ, a mask is not binary, or the spacing has the wrong length.
    """
    from scipy.spatial import KDTree

    p = binary_mask(pred, "prediction")
    t = binary_mask(target, "ground truth")
    if p.shape != t.shape:
        raise DataError(None, f"prediction shape {p.shape} differs from ground-truth shape {t.shape}")
    if spacing is None:
        sp = np.ones(p.ndim)
    elif np.isscalar(spacing):
        sp = np.full(p.ndim, float(spacing))
    else:
        sp = np.asarray([float(s) for s in spacing])
        if sp.size != p.ndim:
            raise DataError(None, f"spacing {sp.tolist()} has {sp.size} values for a {p.ndim}D mask")
    if not p.any() or not t.any():
        return math.nan, math.nan
    if np.array_equal(p, t):
        return 0.0, 0.0
    idx = np.argwhere(p | t)
    lo = np.maximum(idx.min(axis=0) - 1, 0)
    hi = idx.max(axis=0) + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    pe, te = _edges(p[box]), _edges(t[box])
    n_edges = int(pe.sum()) + int(te.sum())
    if n_edges > 0.3 * pe.size:  # many boundary voxels (noisy masks): two distance transforms are cheaper
        from scipy import ndimage

        d_pt = ndimage.distance_transform_edt(~te, sampling=sp)[pe]
        d_tp = ndimage.distance_transform_edt(~pe, sampling=sp)[te]
    else:  # a KD-tree over the boundary points (MONAI's CPU choice)
        pc, tc = np.argwhere(pe) * sp, np.argwhere(te) * sp
        d_pt = KDTree(tc, leafsize=32).query(pc, k=1)[0]
        d_tp = KDTree(pc, leafsize=32).query(tc, k=1)[0]
    hd = max(float(np.percentile(d_pt, percentile)), float(np.percentile(d_tp, percentile)))
    asd = float(np.concatenate([d_pt, d_tp]).mean())
    return hd, asd


def hd95(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, spacing: Sequence[float] | float | None = None
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (NaN if a mask is empty); see :func:`surface_distances`."""
    return surface_distances(pred, target, spacing, 95.0)[0]


def average_surface_distance(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, spacing: Sequence[float] | float | None = None
) -> float:
    """Average symmetric surface distance in mm (NaN if a mask is empty); see :func:`surface_distances`."""
    return surface_distances(pred, target, spacing)[1]


def nanmean_with_count(values: Iterable[float]) -> tuple[float, int]:
    """Mean of the finite values and the number of NaN values left out (mean is NaN when none is finite)."""
    vals = [float(v) for v in values]
    finite = [v for v in vals if not math.isnan(v)]
    n_nan = len(vals) - len(finite)
    return (float(np.mean(finite)) if finite else math.nan), n_nan
