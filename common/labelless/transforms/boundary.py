# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""SegFix-style boundary ground truth and offset refinement of SABR-Net (sabrnet.md §8).

**Ground truth** (:func:`boundary_targets`, :class:`BoundaryTargets`, :class:`BoundaryTargetsd`): for every class
region (background included), D(p) is the Euclidean distance from p to the nearest pixel of another class
(``scipy.ndimage.distance_transform_edt`` per class; pixels beyond the image border do not count as another class).
Boundary = 0 < D ≤ ``width`` (5 px): a band on **both** sides of every contour, ``width`` pixels into each region.
Direction: the Gaussian-derivative gradient ∇D (σ = 2 px) points from the contour into the interior of p's region;
its bin is argmax_b ⟨u_b, ∇D⟩ over the unit vectors u_b of :data:`DIRECTION_OFFSETS`. *Decision:* for the pixels of
class k the gradient is taken of D extended across the contour as a signed distance (D inside region k, minus the
distance to region k outside it). Inside the region this is D itself; smoothing the plain D instead folds its
V-shaped minimum at the contour, and single-pixel bumps of a contour then get outward directions. Pixels off the
boundary get :data:`DIRECTION_IGNORE` (255), the ignore index of the direction cross-entropy.

**Refinement** (:func:`refine_with_offsets`): boundary pixels (softmax(boundary logits)[1] > 0.5) copy the coarse
label at ``p + round(offset_scale · offset(argmax direction))`` (clamped to the image), i.e. one step into their
region's interior; other pixels keep their label. Batched torch, any device.

Label inputs: an ``[H, W]`` or ``[1, H, W]`` map of class indices, or a ``[K, H, W]`` (K > 1) one-hot / score map
(argmax over K), numpy or torch.

Examples::

    boundary, direction, dist = boundary_targets(label)          # label: [H, W] int
    refined = refine_with_offsets(coarse, boundary_logits, direction_logits)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy
from scipy import ndimage

from labelless.errors import ConfigError, DataError

__all__ = [
    "DIRECTION_OFFSETS",
    "DIRECTION_IGNORE",
    "boundary_targets",
    "refine_with_offsets",
    "BoundaryTargets",
    "BoundaryTargetsd",
    "BoundaryTargetsD",
    "BoundaryTargetsDict",
]

#: the 8 direction classes b0 … b7 as (dy, dx) pixel offsets (sabrnet.md §8)
DIRECTION_OFFSETS: tuple[tuple[int, int], ...] = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))
#: direction target of pixels off the boundary (ignore index of the direction loss)
DIRECTION_IGNORE = 255

_UNIT = np.asarray(DIRECTION_OFFSETS, dtype=np.float64)
_UNIT = _UNIT / np.linalg.norm(_UNIT, axis=1, keepdims=True)


def _label_map(label: Any, name: str = "label") -> np.ndarray:
    """``[H, W]`` int64 class-index map from an ``[H, W]``, ``[1, H, W]`` or one-hot ``[K, H, W]`` input."""
    arr = convert_to_numpy(label)
    if arr.ndim == 3:
        if arr.shape[0] == 1:
            arr = arr[0]
        elif arr.shape[0] > 1:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise DataError(name, "NaN or infinite values in the label")
            arr = np.argmax(arr, axis=0)
    if arr.ndim != 2:
        raise DataError(name, f"expected an [H, W], [1, H, W] or one-hot [K, H, W] label, got shape {arr.shape}")
    if min(arr.shape) < 1:
        raise DataError(name, f"empty label of shape {arr.shape}")
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(name, "NaN or infinite values in the label")
        if not np.array_equal(arr, np.round(arr)):
            raise DataError(name, "the label has non-integer values (expected class indices)")
    elif arr.dtype.kind not in "iu":
        raise DataError(name, f"expected an integer label map, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def boundary_targets(label: Any, width: float = 5.0, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boundary, direction and distance ground truth of sabrnet.md §8 (see the module docstring).

    Args:
        label: class-index map ``[H, W]`` (or ``[1, H, W]``, or one-hot ``[K, H, W]``).
        width: boundary half-width in px: boundary = 0 < D ≤ width.
        sigma: σ (px) of the Gaussian-derivative gradient of D.

    Returns:
        ``(boundary, direction, distance)``: uint8 ``[H, W]`` 0/1; int64 ``[H, W]`` direction bins 0 … 7 on the
        boundary and :data:`DIRECTION_IGNORE` (255) elsewhere; float32 ``[H, W]`` D. A label with a single class has
        no boundary (D = inf everywhere).

    Raises:
        DataError: bad label (shape, dtype, NaN, non-integer values).
        ConfigError: ``width`` ≤ 0 or ``sigma`` < 0.

    Examples::

        lab = np.zeros((64, 64), int); lab[16:48, 16:48] = 1
        boundary, direction, dist = boundary_targets(lab)
    """
    if not float(width) > 0:
        raise ConfigError(f"boundary width must be > 0, got {width!r}")
    if not float(sigma) >= 0:
        raise ConfigError(f"direction sigma must be >= 0, got {sigma!r}")
    lab = _label_map(label)
    dist = np.zeros(lab.shape, dtype=np.float64)
    direction = np.full(lab.shape, DIRECTION_IGNORE, dtype=np.int64)
    classes = np.unique(lab)
    if classes.size == 1:
        return np.zeros(lab.shape, dtype=np.uint8), direction, np.full(lab.shape, np.inf, dtype=np.float32)
    regions = [lab == k for k in classes]
    inside = [ndimage.distance_transform_edt(region) for region in regions]
    for region, d_in in zip(regions, inside, strict=True):
        dist[region] = d_in[region]
    boundary = (dist > 0) & (dist <= float(width))
    for i, region in enumerate(regions):
        sel = boundary & region
        if not sel.any():
            continue
        if classes.size == 2:  # the complement of one class is the other class
            sdf = inside[i] - inside[1 - i]
        else:
            sdf = inside[i] - ndimage.distance_transform_edt(~region)
        if sigma > 0:
            gy = ndimage.gaussian_filter(sdf, float(sigma), order=(1, 0), mode="nearest")[sel]
            gx = ndimage.gaussian_filter(sdf, float(sigma), order=(0, 1), mode="nearest")[sel]
        else:
            gy, gx = (g[sel] for g in np.gradient(sdf))
        direction[sel] = np.argmax(np.stack([gy, gx], axis=1) @ _UNIT.T, axis=1)
    return boundary.astype(np.uint8), direction, dist.astype(np.float32)


def refine_with_offsets(
    labels: torch.Tensor,
    boundary_logits: torch.Tensor,
    direction_logits: torch.Tensor,
    offset_scale: float = 1.0,
) -> torch.Tensor:
    """Offset-based boundary refinement at inference (sabrnet.md §8).

    ``edge = softmax(boundary_logits)[:, 1] > 0.5``; ``o(p) = round(offset_scale · DIRECTION_OFFSETS[argmax
    direction_logits])``; ``L_ref(p) = L(clamp(p + o(p)))`` on edge pixels, ``L(p)`` elsewhere.

    Args:
        labels: coarse class-index map ``[B, H, W]`` (integer).
        boundary_logits: ``[B, 2, H, W]`` (class 1 = boundary).
        direction_logits: ``[B, 8, H, W]``.
        offset_scale: step length in px (reference 1).

    Returns:
        the refined ``[B, H, W]`` map (labels' dtype and device).

    Raises:
        DataError: wrong shapes or a non-integer label tensor.
        ConfigError: negative or non-finite ``offset_scale``.
    """
    if not (np.isfinite(offset_scale) and offset_scale >= 0):
        raise ConfigError(f"offset_scale must be a finite number >= 0, got {offset_scale!r}")
    if labels.ndim != 3:
        raise DataError("labels", f"expected [B, H, W] class indices, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise DataError("labels", f"expected an integer tensor of class indices, got {labels.dtype}")
    b, h, w = labels.shape
    for name, t, c in (("boundary_logits", boundary_logits, 2), ("direction_logits", direction_logits, 8)):
        if t.ndim != 4 or tuple(t.shape) != (b, c, h, w):
            raise DataError(name, f"expected shape {(b, c, h, w)}, got {tuple(t.shape)}")
    device = labels.device
    edge = torch.softmax(boundary_logits.float(), dim=1)[:, 1] > 0.5
    steps = torch.round(torch.tensor(DIRECTION_OFFSETS, dtype=torch.float32, device=device) * float(offset_scale))
    off = steps.long()[direction_logits.argmax(dim=1)]  # [B, H, W, 2]
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    ty = (ys + off[..., 0]).clamp_(0, h - 1)
    tx = (xs + off[..., 1]).clamp_(0, w - 1)
    moved = labels.reshape(b, h * w).gather(1, (ty * w + tx).reshape(b, h * w)).reshape(b, h, w)
    return torch.where(edge, moved, labels)


class BoundaryTargets(Transform):
    """Array version of the boundary ground truth: a label → ``(boundary, direction)`` int64 tensors.

    Args:
        width: boundary half-width in px.
        sigma: σ of the gradient of D.
        keep_channel: ``True``: ``[1, H, W]`` outputs; ``False`` (default): ``[H, W]`` (cross-entropy class
            targets, collated to ``[B, H, W]``).
    """

    def __init__(self, width: float = 5.0, sigma: float = 2.0, keep_channel: bool = False) -> None:
        if not float(width) > 0 or not float(sigma) >= 0:
            raise ConfigError(f"need width > 0 and sigma >= 0, got {width!r}, {sigma!r}")
        self.width, self.sigma, self.keep_channel = float(width), float(sigma), bool(keep_channel)

    def __call__(self, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        boundary, direction, _ = boundary_targets(label, self.width, self.sigma)
        b = torch.from_numpy(boundary.astype(np.int64))
        d = torch.from_numpy(direction)
        if self.keep_channel:
            b, d = b[None], d[None]
        return b, d


class BoundaryTargetsd(MapTransform):
    """Dictionary version of :class:`BoundaryTargets`: for each label key writes ``<key>_boundary`` (int64 0/1) and
    ``<key>_direction`` (int64 0 … 7, 255 off the boundary), ``[H, W]`` each (``[1, H, W]`` with
    ``keep_channel=True``). The label itself is not changed.

    Args:
        keys: label keys.
        width: boundary half-width in px.
        sigma: σ of the gradient of D.
        keep_channel: keep a channel axis in the outputs.
        boundary_postfix: postfix of the boundary key.
        direction_postfix: postfix of the direction key.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        width: float = 5.0,
        sigma: float = 2.0,
        keep_channel: bool = False,
        boundary_postfix: str = "_boundary",
        direction_postfix: str = "_direction",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = BoundaryTargets(width, sigma, keep_channel)
        self.boundary_postfix = boundary_postfix
        self.direction_postfix = direction_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            b, direction = self.transform(d[key])
            d[f"{key}{self.boundary_postfix}"] = b
            d[f"{key}{self.direction_postfix}"] = direction
        return d


BoundaryTargetsD = BoundaryTargetsDict = BoundaryTargetsd
