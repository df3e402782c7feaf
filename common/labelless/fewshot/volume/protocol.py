# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The few-shot evaluation protocol (fewshot_protocol.md §6) and its GT-free variant (§6.5).

Two modes:

- ``"protocol"`` (default, the published protocol, comparable with published tables): the query's ground truth
  gives the scored z-range ``[z_min - m, z_max + m]`` and the chunk of each slice (§6.3).
- ``"gt_free"``: every slice is scored and chunks are estimated from the support's relative class extent (§6.5).
  Query scans without the class are excluded from the means and counted. Not comparable with published tables.
  Which query slices may hold the class and how the 3D result is cleaned is decided by
  :func:`segment_volume_gt_free` with the switches of :class:`~labelless.fewshot.volume.gtfree.GTFreeOptions`
  (the same function serves ``inference.json`` and ``labelless evaluate``).

In every mode a query slice without image content (constant, or an empty body mask:
:func:`~labelless.fewshot.volume.gtfree.empty_slices`) is never given to the predictor and gets no foreground.

Support slices (§6.2): for a test class ``c`` and the support scan's sorted class slices ``Z_s``, chunk ``i`` of
``n_chunks`` uses ``Z_s[floor(p_i * |Z_s|)]`` with ``p_i = (2i + 1) / (2 n_chunks)`` (1/6, 1/2, 5/6 for 3 chunks).
The class slices are taken from the support label itself (``label == c`` in at least one pixel, i.e. the T = 1
class-slice index), so user data needs no ``classmap_1.json``.

**Decision (K-shot, ``n_shots = K > 1``):** the fold has a single support scan (the only labelled scan held out of
training, §6.1/§9.3), so K shots are K slices of that scan per chunk: the centres of K equal sub-chunks of each
chunk, i.e. the ``n_chunks * K`` quantiles ``p_j = (2j + 1) / (2 n_chunks K)`` grouped by K. For K = 1 this is
exactly the published rule. When ``|Z_s| < n_chunks * K`` some slices repeat.

Scoring (§6.4): per query scan TP, FP, FN are summed over the scored slices and Dice = 2TP / (2TP + FP + FN) (in
0..1); HD95 and ASD (mm, NaN for an empty prediction) are computed on the scored sub-volume with the voxel spacing in
array order (z, y, x). Class Dice of a fold = mean over its query scans; reported Dice = mean over folds; the
dataset mean = mean over classes. A result is labelled "5-fold" only when every fold of the dataset was evaluated.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import ConfigError, DataError
from labelless.evaluation.metrics import confusion_counts, dice_from_counts, spacing_zyx, surface_distances
from labelless.evaluation.overlays import to_uint8
from labelless.evaluation.results import EvaluationResult, FoldResult, ModeResult, OverlaySample, ScanScore
from labelless.fewshot.volume.folds import fold_split
from labelless.fewshot.volume.gtfree import (
    ExtentEstimate,
    GTFreeOptions,
    body_extent,
    calibrate_foreground_threshold,
    calibrate_presence,
    empty_slices,
    estimated_extent,
    postprocess_volume,
    presence_scores,
    slice_scores,
)
from labelless.io.readers import read_volume
from labelless.io.writers import write_volume
from labelless.transforms.intensity import slices_to_tensor_input, zscore
from labelless.utils import as_bool

__all__ = [
    "MODES",
    "Predictor",
    "support_slices",
    "support_shot_slices",
    "chunk_of_slice",
    "protocol_chunks",
    "support_relative_extent",
    "support_relative_chunks",
    "support_relative_slices",
    "scored_range",
    "segment_volume",
    "GTFreeSupport",
    "GTFreeResult",
    "prepare_gt_free_support",
    "segment_volume_gt_free",
    "score_scan",
    "evaluate_fold",
    "evaluate",
    "score_predictions",
    "prediction_filename",
]

logger = logging.getLogger(__name__)

MODES = ("protocol", "gt_free")
#: percentile window of the grey slices kept for overlays
_WINDOW = (0.5, 99.5)

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``predictor(support_images [S,3,H,W], support_masks [S,1,H,W] float 0/1, query_images [B,3,H,W])`` returns
``[B,2,H,W]`` logits ordered (BG, FG). Within one call of :func:`segment_volume` the same support tensor objects are
passed for every batch of a chunk, so a predictor may cache the support encoding keyed on them."""


# ---------------------------------------------------------------------------------------------------- slice rules
def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"eval mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ConfigError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def support_slices(
    class_slices_of_support: Sequence[int], n_chunks: int = 3, source: str | os.PathLike | None = None
) -> list[int]:
    """Support slice of each chunk (§6.2): ``z_i = Z_s[floor(p_i |Z_s|)]``, ``p_i = (2i + 1) / (2 n_chunks)``.

    Computed with integer arithmetic (``(2i + 1) |Z_s| // (2 n_chunks)``), which equals the reference's float
    computation for 3 chunks.

    Args:
        class_slices_of_support: z indices of the support scan that contain the class (sorted here).
        n_chunks: number of chunks (3 in the protocol).
        source: the support file, named in the error.

    Returns:
        One z index per chunk.

    Raises:
        DataError: the class occupies no slice of the support scan.
    """
    n_chunks = _check_positive("n_chunks", n_chunks)
    zs = sorted(int(z) for z in class_slices_of_support)
    if not zs:
        raise DataError(source, "the class is absent from the support scan: no support slice can be chosen")
    n = len(zs)
    return [zs[((2 * i + 1) * n) // (2 * n_chunks)] for i in range(n_chunks)]


def support_shot_slices(
    class_slices_of_support: Sequence[int],
    n_chunks: int = 3,
    n_shots: int = 1,
    source: str | os.PathLike | None = None,
) -> list[list[int]]:
    """Support slices per chunk for K shots: chunk ``i`` gets entries ``[iK, (i+1)K)`` of the ``n_chunks * K``
    quantile slices (module docstring, K-shot decision). ``n_shots = 1`` gives ``[[z_0], [z_1], [z_2]]``."""
    n_chunks = _check_positive("n_chunks", n_chunks)
    k = _check_positive("n_shots", n_shots)
    flat = support_slices(class_slices_of_support, n_chunks * k, source=source)
    return [flat[i * k : (i + 1) * k] for i in range(n_chunks)]


def chunk_of_slice(z: int, z_min: int, z_max: int, n_chunks: int = 3) -> int:
    """Protocol-mode chunk of query slice ``z`` (§6.3): ``clip(floor((z - z_min) / ((z_max - z_min) / n)), 0, n-1)``.

    Computed exactly as ``floor(n (z - z_min) / (z_max - z_min))`` in integers. **Decision** (§9.2): a single-slice
    extent (``z_max == z_min``, a division by zero in the reference) uses the middle chunk ``n_chunks // 2`` (1 for
    3 chunks).
    """
    n = _check_positive("n_chunks", n_chunks)
    z, z_min, z_max = int(z), int(z_min), int(z_max)
    if z_max < z_min:
        raise DataError(None, f"class extent z_max={z_max} is below z_min={z_min}")
    if z_max == z_min:
        return n // 2
    return int(min(max((n * (z - z_min)) // (z_max - z_min), 0), n - 1))


def protocol_chunks(n_slices: int, z_min: int, z_max: int, n_chunks: int = 3) -> list[int]:
    """:func:`chunk_of_slice` for every slice ``0..n_slices-1`` of a query volume."""
    return [chunk_of_slice(z, z_min, z_max, n_chunks) for z in range(int(n_slices))]


def support_relative_extent(
    n_query_slices: int, n_support_slices: int, support_extent: tuple[int, int]
) -> tuple[float, float]:
    """Estimated class extent ``(a_hat, b_hat)`` of a query from the support's relative extent (§6.5).

    ``u0 = a_s / (n_s - 1)``, ``u1 = b_s / (n_s - 1)``, ``a_hat = u0 (n_q - 1)``, ``b_hat = u1 (n_q - 1)``.
    **Decision:** a single-slice support volume (``n_s == 1``) gives ``u0 = u1 = 0.5`` (the middle of the query).
    """
    n_q, n_s = int(n_query_slices), int(n_support_slices)
    a_s, b_s = int(support_extent[0]), int(support_extent[1])
    if n_q < 1 or n_s < 1:
        raise DataError(None, f"volumes need at least one slice (query {n_q}, support {n_s})")
    if not 0 <= a_s <= b_s < n_s:
        raise DataError(None, f"support class extent ({a_s}, {b_s}) is not inside 0..{n_s - 1}")
    if n_s == 1:
        u0 = u1 = 0.5
    else:
        u0, u1 = a_s / (n_s - 1), b_s / (n_s - 1)
    return u0 * (n_q - 1), u1 * (n_q - 1)


def support_relative_chunks(
    n_query_slices: int, n_support_slices: int, support_extent: tuple[int, int], n_chunks: int = 3
) -> list[int]:
    """GT-free chunk of every query slice (§6.5): ``clip(floor(n (z - a_hat) / max(b_hat - a_hat, 1)), 0, n-1)``.

    Slices above/below the estimated extent use the first/last support slice. **Decision:** a single-slice query
    (a 2D image) uses the middle chunk ``n_chunks // 2``, as in the protocol's single-slice rule.

    Args:
        n_query_slices: number of slices of the query volume.
        n_support_slices: number of slices of the support volume.
        support_extent: first and last support slice containing the class ``(a_s, b_s)``.
        n_chunks: number of chunks.
    """
    n = _check_positive("n_chunks", n_chunks)
    n_q = int(n_query_slices)
    a_hat, b_hat = support_relative_extent(n_q, n_support_slices, support_extent)
    if n_q == 1:
        return [n // 2]
    den = max(b_hat - a_hat, 1.0)
    return [int(min(max(math.floor(n * (z - a_hat) / den), 0), n - 1)) for z in range(n_q)]


def support_relative_slices(
    n_query_slices: int, n_support_slices: int, support_extent: tuple[int, int], margin: int = 2
) -> list[int]:
    """Query slices inside the support-estimated class extent (§6.5 ``predict_outside_extent: false``).

    Slice ``z`` is kept when ``a_hat - margin <= z <= b_hat + margin`` (``a_hat``, ``b_hat`` from
    :func:`support_relative_extent`, generally not integers); predictions on the other slices are set to 0. Use this
    one rule for evaluation and for inference on user volumes.

    Raises:
        ConfigError: negative margin.
        DataError: as :func:`support_relative_extent`.
    """
    if int(margin) < 0:
        raise ConfigError(f"extent_margin must be >= 0, got {margin}")
    a_hat, b_hat = support_relative_extent(n_query_slices, n_support_slices, support_extent)
    return [z for z in range(int(n_query_slices)) if a_hat - int(margin) <= z <= b_hat + int(margin)]


def scored_range(
    n_slices: int, mode: str = "protocol", z_min: int | None = None, z_max: int | None = None, margin: int = 0
) -> range:
    """Slices that are scored: ``[z_min - margin, z_max + margin]`` clipped to the volume (protocol mode, from the
    query's ground truth) or all slices (``gt_free``).

    Raises:
        DataError: protocol mode without the class extent.
    """
    n = int(n_slices)
    if _check_mode(mode) == "gt_free":
        return range(0, n)
    if z_min is None or z_max is None:
        raise DataError(None, "protocol mode needs the query's class extent (z_min, z_max) to choose scored slices")
    if int(margin) < 0:
        raise ConfigError(f"z_margin must be >= 0, got {margin}")
    return range(max(int(z_min) - int(margin), 0), min(int(z_max) + int(margin), n - 1) + 1)


# ---------------------------------------------------------------------------------------------------- inference
def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def segment_volume(
    query_image: np.ndarray | torch.Tensor,
    supports: Sequence[tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]],
    chunk_per_slice: Sequence[int],
    predictor: Predictor,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    slices: Iterable[int] | None = None,
    presence: str | None = None,
    threshold: float = 0.0,
    logits_out: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a query volume slice by slice, each slice with its chunk's support.

    Query slices are grouped by chunk; the predictor is called with the chunk's support (built once per chunk) and
    batches of up to ``batch_size`` query slices. Prediction = argmax over the two logit channels (FG when the FG
    logit exceeds the BG logit by more than ``threshold``, 0 by default; ties go to BG). Runs under
    ``torch.no_grad()``. Slices without image content (:func:`~labelless.fewshot.volume.gtfree.empty_slices`:
    constant, or an empty body mask) are not given to the predictor and get no foreground.

    Args:
        query_image: normalised (Z, H, W) query volume.
        supports: per chunk, ``(image (S, H, W) normalised, mask (S, H, W) 0/1)``; S = number of shots.
        chunk_per_slice: chunk index of each query slice (length Z).
        predictor: see :data:`Predictor`.
        batch_size: query slices per predictor call.
        device: device of the tensors given to the predictor (default CPU).
        slices: slices to predict (default all); the others are 0 in the output.
        presence: also return a presence score per slice
            (:func:`~labelless.fewshot.volume.gtfree.slice_scores`: ``"area"``, ``"soft_area"``, ``"max_prob"``;
            0 for slices not predicted).
        threshold: FG logit-margin threshold (0: argmax).
        logits_out: optional (Z, H, W) float array that receives the FG-minus-BG logits of the predicted slices.

    Returns:
        (Z, H, W) uint8 binary prediction; with ``presence``, ``(prediction, scores)`` with (Z,) float scores.

    Raises:
        DataError: shape mismatches, an empty support mask, or predictor output of the wrong shape.
    """
    q = _to_numpy(query_image).astype(np.float32, copy=False)
    if q.ndim != 3:
        raise DataError(None, f"query image must be (Z, H, W), got shape {q.shape}")
    z_n, h, w = q.shape
    chunks = [int(c) for c in chunk_per_slice]
    if len(chunks) != z_n:
        raise DataError(None, f"chunk_per_slice has {len(chunks)} entries for a query of {z_n} slices")
    if not supports:
        raise DataError(None, "no support given")
    if any(c < 0 or c >= len(supports) for c in chunks):
        raise DataError(None, f"chunk indices must be in 0..{len(supports) - 1}, got {sorted(set(chunks))}")
    sel = list(range(z_n)) if slices is None else sorted({int(z) for z in slices})
    if sel and (sel[0] < 0 or sel[-1] >= z_n):
        raise DataError(None, f"slices to predict must be in 0..{z_n - 1}")
    bs = _check_positive("batch_size", batch_size)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out = np.zeros((z_n, h, w), dtype=np.uint8)
    scores = np.zeros(z_n, dtype=np.float64)
    if presence is not None:
        slice_scores(torch.zeros(1, 1, 1), presence)  # checks the name before any work
    if logits_out is not None and tuple(np.shape(logits_out)) != (z_n, h, w):
        raise DataError(None, f"logits_out must have the query's shape {(z_n, h, w)}, got {np.shape(logits_out)}")
    if sel:
        empty = empty_slices(q)
        sel = [z for z in sel if not empty[z]]
    with torch.no_grad():
        for chunk in sorted({chunks[z] for z in sel}):
            s_img = _to_numpy(supports[chunk][0]).astype(np.float32, copy=False)
            s_msk = _to_numpy(supports[chunk][1])
            if s_img.ndim == 2:
                s_img, s_msk = s_img[None], s_msk[None]
            if s_img.ndim != 3 or s_img.shape != s_msk.shape or s_img.shape[1:] != (h, w):
                raise DataError(
                    None,
                    f"support of chunk {chunk}: image {s_img.shape} and mask {s_msk.shape} must both be (S, {h}, {w})",
                )
            if not np.all((s_msk == 0) | (s_msk == 1)):
                raise DataError(None, f"support mask of chunk {chunk} is not binary (0/1)")
            empty = [k for k in range(s_msk.shape[0]) if not s_msk[k].any()]
            if empty:
                raise DataError(None, f"support mask of chunk {chunk} (shots {empty}) is empty")
            sup_img_t = torch.from_numpy(slices_to_tensor_input(s_img)).to(dev)
            sup_msk_t = torch.from_numpy(s_msk.astype(np.float32)[:, None]).to(dev)
            zs = [z for z in sel if chunks[z] == chunk]
            for start in range(0, len(zs), bs):
                batch = zs[start : start + bs]
                q_t = torch.from_numpy(slices_to_tensor_input(q[batch])).to(dev)
                logits = predictor(sup_img_t, sup_msk_t, q_t)
                if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(batch), 2, h, w):
                    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    want = (len(batch), 2, h, w)
                    raise DataError("predictor output", f"expected logits of shape {want}, got {shape}")
                diff = logits[:, 1] - logits[:, 0]
                out[batch] = (diff > float(threshold)).to(torch.uint8).cpu().numpy()  # argmax for 0; ties -> BG
                if presence is not None:
                    scores[batch] = slice_scores(diff, presence, threshold)
                if logits_out is not None:
                    logits_out[batch] = diff.float().cpu().numpy()
    return (out, scores) if presence is not None else out


# ---------------------------------------------------------------------------------------------------- GT-free
@dataclass
class GTFreeSupport:
    """A support prepared once per class for GT-free segmentation (:func:`prepare_gt_free_support`).

    Attributes:
        supports: per chunk, ``(images (S, H, W), masks (S, H, W) uint8)`` for :func:`segment_volume`.
        shots: support slice indices per chunk.
        extent: first and last support slice containing the class.
        n_slices: slices of the support volume.
        body: the support's body z-extent (:func:`~labelless.fewshot.volume.gtfree.body_extent`) or ``None``.
        empty: (Z,) empty-slice flags of the support volume.
        presence_threshold: the threshold calibrated on the support, or ``None`` (presence off).
        foreground_threshold: the FG logit-margin threshold (0 = argmax, or calibrated on the support).
        options: the options it was prepared with.
    """

    supports: list[tuple[np.ndarray, np.ndarray]]
    shots: list[list[int]]
    extent: tuple[int, int]
    n_slices: int
    body: tuple[int, int] | None
    empty: np.ndarray
    presence_threshold: float | None
    foreground_threshold: float
    options: GTFreeOptions


@dataclass
class GTFreeResult:
    """One query segmented by :func:`segment_volume_gt_free`.

    Attributes:
        prediction: (Z, H, W) uint8 mask after the GT-free rules.
        estimate: the estimated class extent, chunks and kept slices.
        scores: (Z,) presence scores (zeros when presence is off).
        empty: (Z,) empty-slice flags.
    """

    prediction: np.ndarray
    estimate: ExtentEstimate
    scores: np.ndarray
    empty: np.ndarray


def prepare_gt_free_support(
    support_image: np.ndarray | torch.Tensor,
    support_mask: np.ndarray | torch.Tensor,
    predictor: Predictor,
    options: GTFreeOptions | Mapping[str, Any] | None = None,
    n_chunks: int = 3,
    n_shots: int = 1,
    shots: Sequence[Sequence[int]] | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    source: str | os.PathLike | None = None,
) -> GTFreeSupport:
    """Prepare one class's support for :func:`segment_volume_gt_free`: support slices per chunk, the support's body
    extent and the thresholds calibrated on the support volume. For those, the support's own slices are segmented
    with its own chunks (the GT-free rule applied to the support itself); the support shots are left out
    (leave-slice-out), and only the support's label is read.

    Args:
        support_image: normalised (Z, H, W) support volume at the network's input size.
        support_mask: (Z, H, W) binary mask of the class on the same grid.
        predictor: see :data:`Predictor`.
        options: :class:`~labelless.fewshot.volume.gtfree.GTFreeOptions` (or a mapping of them).
        n_chunks, n_shots: support slices (§6.2 and the K-shot rule).
        shots: explicit support slices per chunk instead of the automatic ones.
        batch_size, device: as :func:`segment_volume`.
        source: the support label file, named in errors.

    Raises:
        DataError: the class is absent from the support, or a support slice's mask is empty.
    """
    opts = GTFreeOptions.from_options(options)
    img = _to_numpy(support_image).astype(np.float32, copy=False)
    mask = _to_numpy(support_mask).astype(bool)
    if img.ndim != 3 or img.shape != mask.shape:
        raise DataError(source, f"support image {img.shape} and mask {mask.shape} must be one (Z, H, W) grid")
    zs = [int(z) for z in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]]
    if not zs:
        raise DataError(source, "the class is absent from the support volume: its support mask is empty")
    per_chunk = (support_shot_slices(zs, n_chunks, n_shots, source=source) if shots is None
                 else [[int(z) for z in g] for g in shots])  # fmt: skip
    supports = [(img[idx], mask[idx].astype(np.uint8)) for idx in per_chunk]
    for idx, (_, m) in zip(per_chunk, supports):
        if not m.reshape(len(idx), -1).any(axis=1).all():
            raise DataError(source, f"support slices {idx} do not all contain the class")
    empty = empty_slices(img)
    body = body_extent(img, opts.body_fraction)
    fg_threshold, presence_threshold = 0.0, None
    if opts.foreground_threshold == "support" or opts.presence != "none":
        n_s = img.shape[0]
        own = estimated_extent(n_s, n_s, (zs[0], zs[-1]), GTFreeOptions(extent_reference="volume"),
                               n_chunks=len(per_chunk)).chunks  # fmt: skip
        logits = np.full(img.shape, -np.inf, dtype=np.float32)
        segment_volume(img, supports, own, predictor, batch_size, device, logits_out=logits)
        left_out = [z for g in per_chunk for z in g]
        if opts.foreground_threshold == "support":
            fg_threshold = calibrate_foreground_threshold(logits, mask, exclude=left_out)
        if opts.presence != "none":
            scores = presence_scores(np.where(np.isfinite(logits), logits, -1e4), opts.presence, fg_threshold)
            scores[empty] = 0.0
            presence_threshold = calibrate_presence(
                scores, mask.reshape(n_s, -1).any(axis=1), exclude=left_out, rule=opts.presence_rule,
                prediction=logits > fg_threshold, truth=mask,
            )  # fmt: skip
        logger.info("GT-free thresholds calibrated on the support: foreground logit margin %.2f, presence (%s) %s",
                    fg_threshold, opts.presence, presence_threshold)  # fmt: skip
    return GTFreeSupport(supports, per_chunk, (zs[0], zs[-1]), int(img.shape[0]), body, empty, presence_threshold,
                         float(fg_threshold), opts)  # fmt: skip


def segment_volume_gt_free(
    query_image: np.ndarray | torch.Tensor,
    support: GTFreeSupport,
    predictor: Predictor,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> GTFreeResult:
    """Segment a query volume without its ground truth (§6.5 and :mod:`~labelless.fewshot.volume.gtfree`): the
    class extent is estimated from the support (chunks; with ``predict_outside_extent=False`` nothing is predicted
    outside it), empty slices get nothing, FG needs the support-calibrated logit margin, slices whose presence score
    is at or below the support-calibrated threshold are cleared and the 3D result is cleaned (connected
    components). The one GT-free code path of ``evaluate.json``, ``inference.json`` and ``labelless evaluate``.

    Args:
        query_image: normalised (Z, H, W) query volume at the network's input size.
        support: from :func:`prepare_gt_free_support` (its options apply).
        predictor: see :data:`Predictor`.
        batch_size, device: as :func:`segment_volume`.

    Returns:
        :class:`GTFreeResult`.
    """
    opts = support.options
    q = _to_numpy(query_image).astype(np.float32, copy=False)
    if q.ndim != 3:
        raise DataError(None, f"query image must be (Z, H, W), got shape {q.shape}")
    n_q = q.shape[0]
    empty = empty_slices(q)
    body = body_extent(q, opts.body_fraction)
    est = estimated_extent(n_q, support.n_slices, support.extent, opts, body, support.body,
                           n_chunks=len(support.supports))  # fmt: skip
    # every slice is predicted: the clean-up sees the whole volume, the extent cut (if any) comes last
    pred, scores = segment_volume(q, support.supports, est.chunks, predictor, batch_size, device,
                                  presence=opts.presence, threshold=support.foreground_threshold)  # fmt: skip
    pred = postprocess_volume(pred, opts, scores=scores, empty=empty, keep_slices=est.keep,
                              presence_threshold=support.presence_threshold)  # fmt: skip
    return GTFreeResult(pred, est, scores, empty)


# ---------------------------------------------------------------------------------------------------- scoring
def score_scan(
    prediction: np.ndarray,
    truth: np.ndarray,
    scored: range,
    spacing_xyz: Sequence[float],
    *,
    fold: int | None,
    pid: str,
    class_id: int,
    class_name: str,
    mode: str,
) -> ScanScore:
    """Score one query scan on its scored slices: summed TP/FP/FN -> Dice; HD95/ASD (mm) on the scored sub-volume."""
    p = np.asarray(prediction)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise DataError(f"prediction of scan {pid}", f"shape {p.shape} differs from the label's {t.shape}")
    if len(scored) == 0:
        raise DataError(f"scan {pid}", "no slice to score")
    sl = slice(scored.start, scored.stop)
    counts = confusion_counts(p[sl], t[sl])
    hd, asd = surface_distances(p[sl], t[sl], spacing_zyx(spacing_xyz))
    return ScanScore(
        fold=fold, pid=str(pid), class_id=int(class_id), class_name=class_name, tp=counts.tp, fp=counts.fp,
        fn=counts.fn, dice=dice_from_counts(counts.tp, counts.fp, counts.fn), hd95=hd, asd=asd,
        n_scored_slices=len(scored), z_range=(scored.start, scored.stop - 1), mode=mode,
    )  # fmt: skip


def _class_name(dataset: PreparedVolumeDataset, class_id: int) -> str:
    return dataset.label_map.name(int(class_id))


def _check_classes(dataset: PreparedVolumeDataset, classes: Sequence[int] | None) -> list[int]:
    cls = [int(c) for c in (dataset.preset.test_classes if classes is None else classes)]
    known = set(dataset.label_map.class_ids) - {0}
    bad = [c for c in cls if c not in known]
    if bad or not cls:
        raise ConfigError(f"classes {cls} must be non-empty foreground class ids of {dataset.preset.name!r}: {known}")
    return cls


def _normalizer(
    dataset: PreparedVolumeDataset, normalization: str | None, norm_stats: tuple[float, float] | None
) -> Callable[[np.ndarray, Any], np.ndarray]:
    kind = normalization or dataset.preset.normalization
    if kind == "volume_zscore":
        return lambda a, src: zscore(a, source=src)
    if kind == "fold_zscore":
        if norm_stats is None:
            raise ConfigError(
                f"dataset {dataset.preset.name!r} uses fold statistics (fold_zscore): pass norm_stats=(mean, std) "
                "of the fold's training scans (stored with the fold's checkpoint)"
            )
        mean, std = (float(v) for v in norm_stats)
        return lambda a, src: zscore(a, mean, std, source=src)
    if kind == "none":
        return lambda a, src: np.asarray(a, dtype=np.float32)
    raise ConfigError(f"normalization must be 'volume_zscore', 'fold_zscore' or 'none', got {kind!r}")


def prediction_filename(pid: str, class_name: str) -> str:
    """File name of a saved prediction: ``pred_<pid>_<classname>.nii.gz``."""
    return f"pred_{pid}_{class_name}.nii.gz"


def _largest_slice(truth: np.ndarray, scored: range) -> int:
    areas = [int(truth[z].sum()) for z in scored]
    return scored.start + int(np.argmax(areas))


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_fold(
    dataset: PreparedVolumeDataset,
    fold: int,
    predictor: Predictor,
    classes: Sequence[int] | None = None,
    mode: str = "protocol",
    n_chunks: int = 3,
    z_margin: int = 0,
    n_shots: int = 1,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    normalization: str | None = None,
    norm_stats: tuple[float, float] | None = None,
    predict_outside_extent: bool | None = None,
    extent_margin: int | None = None,
    output_dir: str | os.PathLike | None = None,
    save_predictions: bool = False,
    n_overlays: int = 3,
    gt_free_options: GTFreeOptions | Mapping[str, Any] | None = None,
) -> FoldResult:
    """Evaluate one fold's model on the fold's test scans with the fold's support scan (§6).

    Args:
        dataset: labelled prepared dataset.
        fold: fold index (``fold_split(dataset.pids, fold, dataset.preset.n_folds)``).
        predictor: the fold's model, see :data:`Predictor`.
        classes: test class ids (default: the preset's Setting-1 test classes).
        mode: ``"protocol"`` or ``"gt_free"``.
        n_chunks: chunks per class extent (3).
        z_margin: protocol-mode margin m of the scored range (0).
        n_shots: support slices per chunk (K-shot rule in the module docstring).
        batch_size: query slices per predictor call.
        device: device of the predictor's inputs.
        normalization: ``"volume_zscore"`` (MR), ``"fold_zscore"`` (CT) or ``"none"``; default from the preset.
        norm_stats: ``(mean, std)`` of the fold's training scans; required for ``fold_zscore``.
        predict_outside_extent: gt_free mode only; ``False`` sets predictions to 0 outside the estimated extent
            ``[a_hat - extent_margin, b_hat + extent_margin]`` (those slices are still scored). ``None``: the value
            of ``gt_free_options``.
        extent_margin: margin m' in slices of the option above (``None``: from ``gt_free_options``).
        output_dir: where predictions are saved (``<output_dir>/predictions/<mode>/pred_<pid>_<class>.nii.gz``).
        save_predictions: save the binary predictions (all slices, query geometry) as NIfTI.
        n_overlays: per class, slices kept for overlay figures (the largest-GT slice of the first query scans).
        gt_free_options: gt_free mode only: the switches of :func:`segment_volume_gt_free`
            (:class:`~labelless.fewshot.volume.gtfree.GTFreeOptions` or a mapping over its defaults); ``None``: the
            plain §6.5 rule (:meth:`~labelless.fewshot.volume.gtfree.GTFreeOptions.plain`). The bundles and
            ``labelless evaluate`` pass the measured defaults, ``GTFreeOptions()``.

    Returns:
        The fold's :class:`FoldResult`.

    Raises:
        DataError: the support scan lacks a class (names the support label file and the class), bad files.
        ConfigError: bad options (unknown mode, fold statistics missing for a ``fold_zscore`` dataset, ...).
    """
    mode = _check_mode(mode)
    n_chunks = _check_positive("n_chunks", n_chunks)
    n_shots = _check_positive("n_shots", n_shots)
    save_predictions = as_bool(save_predictions, "save_predictions")
    gt_opts = GTFreeOptions.from_options(GTFreeOptions.plain() if gt_free_options is None else gt_free_options,
                                         predict_outside_extent=predict_outside_extent,
                                         extent_margin=extent_margin)  # fmt: skip
    if int(z_margin) < 0:
        raise ConfigError(f"z_margin must be >= 0, got {z_margin}")
    if save_predictions and output_dir is None:
        raise ConfigError("save_predictions=True needs an output_dir")
    cls = _check_classes(dataset, classes)
    norm = _normalizer(dataset, normalization, norm_stats)
    split = fold_split(dataset.pids, fold, dataset.preset.n_folds)
    names = {c: _class_name(dataset, c) for c in cls}
    result = FoldResult(
        fold=int(fold), mode=mode, dataset=dataset.preset.name, n_folds=dataset.preset.n_folds, classes=cls,
        class_names=names, test_pids=list(split.test), support_pid=split.support,
        settings={"n_chunks": n_chunks, "z_margin": int(z_margin), "n_shots": n_shots,
                  "normalization": normalization or dataset.preset.normalization,
                  "predict_outside_extent": gt_opts.predict_outside_extent, "extent_margin": gt_opts.extent_margin},
    )  # fmt: skip
    if mode == "gt_free":
        result.settings["gt_free"] = gt_opts.as_dict()
    pred_dir = Path(output_dir) / "predictions" / mode if save_predictions else None

    sup_img_vol = dataset.load_image(split.support)
    sup_lab = dataset.load_label(split.support).array
    sup_img = norm(sup_img_vol.array, dataset.image_path(split.support))
    normed: dict[str, np.ndarray] = {}
    for c in cls:
        sup_mask = sup_lab == c
        zs = [int(z) for z in np.nonzero(sup_mask.reshape(sup_mask.shape[0], -1).any(axis=1))[0]]
        if not zs:
            raise DataError(
                dataset.label_path(split.support),
                f"class {names[c]} (id {c}) is absent from support scan {split.support}: its support mask is empty",
            )
        shots = support_shot_slices(zs, n_chunks, n_shots, source=dataset.label_path(split.support))
        result.support_slices[c] = shots
        supports = [(sup_img[idx], sup_mask[idx].astype(np.uint8)) for idx in shots]
        gt_support = None
        if mode == "gt_free":
            gt_support = prepare_gt_free_support(
                sup_img, sup_mask, predictor, gt_opts, n_chunks, n_shots, shots=shots, batch_size=batch_size,
                device=device, source=dataset.label_path(split.support),
            )  # fmt: skip
        n_kept = 0
        for pid in split.test:
            img_vol = dataset.load_image(pid)
            truth = dataset.load_label(pid).array == c
            zq = np.nonzero(truth.reshape(truth.shape[0], -1).any(axis=1))[0]
            if zq.size == 0:
                result.skipped.append((pid, c))
                msg = (f"fold {fold}, {mode} mode: query scan {pid} does not contain class {names[c]} (id {c}); "
                       + ("skipped" if mode == "protocol" else "excluded from the mean and counted"))  # fmt: skip
                warnings.warn(msg, stacklevel=2)
                logger.warning(msg)
                continue
            if pid not in normed:
                normed[pid] = norm(img_vol.array, dataset.image_path(pid))
            q = normed[pid]
            n_q = q.shape[0]
            if mode == "protocol":
                z_min, z_max = int(zq[0]), int(zq[-1])
                chunks = protocol_chunks(n_q, z_min, z_max, n_chunks)
                scored = scored_range(n_q, "protocol", z_min, z_max, z_margin)
                to_predict: Iterable[int] = range(n_q) if save_predictions else scored
            if mode == "protocol":
                pred = segment_volume(q, supports, chunks, predictor, batch_size, device, slices=to_predict)
            else:
                gf = segment_volume_gt_free(q, gt_support, predictor, batch_size, device)
                pred, chunks = gf.prediction, gf.estimate.chunks
                scored = scored_range(n_q, "gt_free")
            score = score_scan(pred, truth, scored, img_vol.spacing, fold=int(fold), pid=pid, class_id=c,
                               class_name=names[c], mode=mode)  # fmt: skip
            result.scans.append(score)
            logger.info("fold %s %s %s scan %s: Dice %.4f", fold, mode, names[c], pid, score.dice)
            if pred_dir is not None:
                write_volume(pred, pred_dir / prediction_filename(pid, names[c]), reference=img_vol, dtype=np.uint8)
            if n_kept < int(n_overlays):
                z = _largest_slice(truth, scored)
                sz = shots[chunks[z]][0]
                result.overlays.append(OverlaySample(
                    mode=mode, fold=int(fold), class_id=c, class_name=names[c], pid=pid, z=z,
                    query_image=to_uint8(q[z], _WINDOW), prediction=pred[z].astype(bool), truth=truth[z].copy(),
                    support_pid=split.support, support_z=sz, support_image=to_uint8(sup_img[sz], _WINDOW),
                    support_mask=sup_mask[sz].copy(), dice=score.dice,
                ))  # fmt: skip
                n_kept += 1
    return result


def evaluate(
    dataset: PreparedVolumeDataset,
    predictor_for_fold: Callable[[int], Predictor | None],
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    classes: Sequence[int] | None = None,
    modes: Sequence[str] = MODES,
    norm_stats_for_fold: Callable[[int], tuple[float, float] | None] | None = None,
    **fold_kwargs: Any,
) -> EvaluationResult:
    """Evaluate every requested fold whose model exists, in each mode (protocol mode first).

    Args:
        dataset: labelled prepared dataset.
        predictor_for_fold: fold -> that fold's predictor, or ``None`` when its checkpoint is missing (the fold is
            then listed in ``folds_missing``). Called once per fold; never evaluate a fold with another fold's model.
        folds: folds to visit.
        classes: test class ids (default: the preset's test classes).
        modes: ``"protocol"`` and/or ``"gt_free"``.
        norm_stats_for_fold: fold -> ``(mean, std)`` of that fold's training scans (``fold_zscore`` datasets).
        fold_kwargs: further options of :func:`evaluate_fold` (``n_shots``, ``z_margin``, ``output_dir``, ...).

    Returns:
        :class:`EvaluationResult`; each mode is labelled "5-fold" only when all folds of the dataset are present.
    """
    ms = [_check_mode(m) for m in modes]
    if not ms:
        raise ConfigError("at least one eval mode is needed")
    ms = sorted(dict.fromkeys(ms), key=MODES.index)
    n_folds = dataset.preset.n_folds
    fl = [int(f) for f in dict.fromkeys(folds)]
    bad = [f for f in fl if not 0 <= f < n_folds]
    if bad or not fl:
        raise ConfigError(f"folds must be a non-empty subset of 0..{n_folds - 1}, got {list(folds)}")
    cls = _check_classes(dataset, classes)
    names = {c: _class_name(dataset, c) for c in cls}
    fixed_stats = fold_kwargs.pop("norm_stats", None)
    if fixed_stats is not None and (norm_stats_for_fold is not None or len(fl) > 1):
        raise ConfigError("norm_stats holds one fold's statistics: pass norm_stats_for_fold to evaluate several folds")
    res = EvaluationResult({m: ModeResult(m, dataset.preset.name, n_folds, cls, dict(names)) for m in ms})
    for f in fl:
        predictor = predictor_for_fold(f)
        if predictor is None:
            logger.warning("fold %d: no model (checkpoint missing); listed as missing", f)
            res.folds_missing.append(f)
            for m in ms:
                res.modes[m].folds_missing.append(f)
            continue
        stats = norm_stats_for_fold(f) if norm_stats_for_fold is not None else fixed_stats
        for m in ms:
            res.modes[m].folds[f] = evaluate_fold(
                dataset, f, predictor, classes=cls, mode=m, norm_stats=stats, **fold_kwargs
            )
    return res


def _find_prediction_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(folder, "prediction folder does not exist")
    out: dict[str, Path] = {}
    for p in folder.iterdir():
        m = re.match(r"^pred_(.+)\.(nii\.gz|nii)$", p.name)
        if m:
            out[m.group(1).lower()] = p
    return out


def score_predictions(
    dataset: PreparedVolumeDataset,
    predictions: Mapping[str, Mapping[int, np.ndarray]] | str | os.PathLike,
    fold: int | None = None,
    pids: Sequence[str | int] | None = None,
    classes: Sequence[int] | None = None,
    mode: str = "protocol",
    z_margin: int = 0,
) -> FoldResult:
    """Score saved predictions with the scoring rules of :func:`evaluate_fold` (scored range, skips, metrics).

    Args:
        dataset: labelled prepared dataset (gives the ground truth and the voxel spacing).
        predictions: ``{pid: {class_id: (Z, H, W) binary array}}`` or a folder of ``pred_<pid>_<classname>.nii.gz``
            files (class names of the dataset's label map, case-insensitive) in the query's geometry.
        fold: score the fold's test scans (and label the result with the fold).
        pids: scans to score (instead of, or restricting, ``fold``).
        classes: class ids (default: the preset's test classes).
        mode: ``"protocol"`` (GT-based scored range) or ``"gt_free"`` (all slices).
        z_margin: protocol-mode margin of the scored range.

    Returns:
        A :class:`FoldResult` (no support information).

    Raises:
        DataError: a missing prediction (file or entry), wrong shape or non-binary values.
        ConfigError: neither ``fold`` nor ``pids`` given.
    """
    mode = _check_mode(mode)
    if fold is None and pids is None:
        raise ConfigError("score_predictions needs a fold or a list of scan ids")
    if fold is not None:
        split = fold_split(dataset.pids, fold, dataset.preset.n_folds)
        test = list(split.test) if pids is None else [str(p) for p in pids]
        support = split.support
    else:
        test, support = [str(p) for p in pids], None
    cls = _check_classes(dataset, classes)
    names = {c: _class_name(dataset, c) for c in cls}
    folder = None if isinstance(predictions, Mapping) else Path(predictions)
    files = _find_prediction_files(folder) if folder is not None else {}
    result = FoldResult(
        fold=None if fold is None else int(fold), mode=mode, dataset=dataset.preset.name,
        n_folds=dataset.preset.n_folds, classes=cls, class_names=names, test_pids=test, support_pid=support,
        settings={"z_margin": int(z_margin), "source": str(folder) if folder is not None else "in-memory"},
    )  # fmt: skip
    for c in cls:
        for pid in test:
            img_vol = dataset.load_image(pid)
            truth = dataset.load_label(pid).array == c
            zq = np.nonzero(truth.reshape(truth.shape[0], -1).any(axis=1))[0]
            if zq.size == 0:
                result.skipped.append((pid, c))
                warnings.warn(f"{mode} mode: scan {pid} does not contain class {names[c]} (id {c}); not scored",
                              stacklevel=2)  # fmt: skip
                continue
            if folder is not None:
                key = f"{pid}_{names[c]}".lower()
                if key not in files:
                    raise DataError(folder / prediction_filename(pid, names[c]), "prediction file missing")
                src: Any = files[key]
                pred = np.asarray(read_volume(src, is_label=True).array)
            else:
                src = f"prediction of scan {pid}, class {names[c]}"
                entry = predictions.get(pid, predictions.get(int(pid) if pid.isdigit() else pid))  # type: ignore
                if entry is None or c not in entry:
                    raise DataError(src, "prediction missing")
                pred = _to_numpy(entry[c])
            if pred.shape != truth.shape:
                raise DataError(src, f"prediction shape {pred.shape} differs from the label grid {truth.shape}")
            if pred.dtype != bool:
                if pred.dtype.kind == "f":
                    pred = np.rint(pred)
                if not np.all((pred == 0) | (pred == 1)):
                    raise DataError(src, "prediction must be binary (0/1)")
                pred = pred.astype(np.uint8)
            n_q = truth.shape[0]
            if mode == "protocol":
                scored = scored_range(n_q, "protocol", int(zq[0]), int(zq[-1]), z_margin)
            else:
                scored = scored_range(n_q, "gt_free")
            result.scans.append(score_scan(pred, truth, scored, img_vol.spacing, fold=result.fold, pid=pid,
                                           class_id=c, class_name=names[c], mode=mode))  # fmt: skip
    return result
