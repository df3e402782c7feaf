# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Shadow imitation of SABR-Net (sabrnet.md §3): free-form hole masks, acoustic shadows, inference keep-masks.

Every mask is a **keep-mask**: 1 = keep, 0 = shadow/hole. Images enter the MONAI transforms as ``[C, H, W]`` floats
in [−1, 1] (C = 1 or 3; grey replicated); the acoustic model works on the channel mean mapped to [0, 1].

**Mode A, "freeform"** (§3.1, :func:`freeform_hole_mask`): the MAT-style inpainting holes of the reference on an
``s × s`` canvas (s = 256): rectangle group 1 (n ~ U{0, 1}, sides ~ U{0, …, s/2 − 1}), rectangle group 2 (n ~ U{0, 1},
sides ~ U{0, …, s − 1}), brush strokes (n ~ U{0, 1, 2}, zig-zag polylines of width ⌊U(12, 48)⌋ with a disk at every
vertex; the stroke mask is flipped left-right and up-down with p 0.5 each), redrawn until 0 < hole ratio < 1.

- *Rectangle corners (unverified in the spec; our choice):* the top-left corner of a ``w × h`` rectangle is uniform
  on ``{−⌊w/2⌋, …, s − w + ⌊w/2⌋}`` × ``{−⌊h/2⌋, …, s − h + ⌊h/2⌋}``, i.e. a rectangle may leave the canvas by up to
  half its size on either side; the part outside is clipped. With this choice 2000 seeded masks give hole-ratio
  mean 0.223, median 0.198, p10 0.046, p90 0.428 (reference 0.220 / 0.196 / 0.046 / 0.428).
- *Stroke geometry:* a stroke of ``n_v`` ~ U{4, …, 17} has ``n_v`` segments after its start point; every vertex is
  clipped to [0, s] and truncated to an integer; a segment with its vertex disks is drawn as the set of pixels
  whose centre lies within ``width / 2`` of the segment (a capsule), only inside the segment's bounding box.
- *Other canvas sizes:* lengths scale with ``s / 256``: rectangle sides U{0, …, s/2 − 1} / U{0, …, s − 1}, stroke
  width ⌊U(12, 48)·s/256⌋, segment length clip(N(μ, 22·s/256), 0, 2μ) with μ = √2·s/8. For a non-square
  ``(H, W)`` the mask is drawn on a ``max(H, W)`` canvas and centre-cropped; the 0 < ratio < 1 redraw rule is
  applied to the crop.
- Network input in mode A: ``x ⊙ m`` (holes become 0, i.e. mid-grey in [−1, 1]).

**Mode B, "acoustic"** (§3.2, :func:`acoustic_shadow`): shadows along the scan lines of a sector or linear probe.

- Valid-data mask V (:func:`valid_data_mask`): fill-holes(largest connected component of (Gaussian-smoothed
  x01 > 0.02)); the smoothing σ is not in the spec: 1 px (``valid_sigma``; a larger σ widens V and moves the
  fitted sector apex up by about the widening / sin Θ). On real scans (HC18) dark fluid that touches the black
  surround is not a hole and stays outside V; option ``valid_hull=True`` (not the spec's, default off) takes the
  convex hull of V instead. For speed the shadow transforms compute V on a 2x block-mean image by default
  (``valid_stride=2``, smoothing σ/2, nearest upsampling: V's edge moves by at most 1 px, where the image is black
  anyway); ``valid_stride=1`` computes the spec's V at full resolution.
- Geometry (:func:`estimate_geometry`, :class:`ShadowGeometry`): ``"auto"`` fits straight lines ``x = a + b·y`` to
  the first and last valid column of each row over the upper 60 % of V's rows (Theil–Sen, then least squares on
  the points within max(2 px, 2.5·MAD) of it). The fan must widen downwards (left slope < −0.05 and right slope
  > 0.05, our reading of "opposite signs"): sector with the apex at the intersection, central beam angle and
  half-angle Θ from the two edge angles; otherwise linear. r_min / r_max are the smallest / largest r over V.
  ``"sector"`` / ``"linear"`` use the image frame (cached per image shape): apex (W/2, −0.1 H) unless given, Θ
  reaching the bottom corners unless given, r_min = distance to the top row (0 when the apex is inside the image),
  r_max = distance to the farthest corner; linear: beams are columns 0 … W−1, depths rows 0 … H−1.
- Angles are in radians for a sector and in pixel columns for a linear probe (φ = column, r = row).
- Each shadow (n ~ U{1, …, n_max}): width w ~ U(2°, 12°) or U(0.03, 0.20)·W; edge softness e = ε·w, ε ~ U(0.1, 0.3);
  centre φ_c uniform such that the whole support |φ − φ_c| < w/2 + e lies in the field of view (the centre of the
  field of view when it is narrower); onset r_s by the reflector rule (p 0.5: strongest local maximum of the
  σ = 2 px smoothed beam profile of mean intensity across |φ − φ_c| ≤ w/2, at least the 90th percentile of the
  intensities in V, at depth r_min + [0.1, 0.75]·D; r_s = r_peak + 2 px) or the random rule (r_min + U(0.15,
  0.75)·D, also the fallback); strength s ~ U(0.6, 0.95); onset length ℓ ~ U(3, 12) px. The random numbers of a
  shadow are always drawn in the same order (w, ε, centre, rule, random depth, s, ℓ), whatever rule is used.
- A_i = s·L(φ)·O(r)·V with the raised-cosine lateral edge L and the soft onset O of §3.2 (far-field decay ρ,
  default 0); A = 1 − Π(1 − A_i); x01' = (1 − A)·x01 + A·η with η Rayleigh(σ_n = 0.02) smoothed with σ = 0.7 px;
  keep-mask m = 1 − 1[A ≥ 0.3]. Pixels with A = 0 are returned bit-identical.
- Network input in mode B: the attenuated image (not zeroed) and m; the soft map A is returned too.

**Inference** (§3.3): :func:`inference_keep_mask`: all ones (``"ones"``, default) or ``"intensity_ramp"``
(:func:`ramp_keep_mask`, SCO-SSL's ramp ≥ 0.5, i.e. 0 for dark pixels).

MONAI transforms: :class:`RandShadow` / :class:`RandShadowd` (every random number from ``self.R``) and
:class:`InferenceKeepMask` / :class:`InferenceKeepMaskd`. The dictionary transforms write ``<key>_shadow_mask``
(``[1, H, W]`` keep-mask), ``<key>_shadow_soft`` (``[1, H, W]`` soft map: 1 − m in mode A, A in mode B) and
``<key>_shadow_params``; labels are never touched.

Examples::

    shadow = RandShadowd(keys="image", mode="acoustic", geometry="auto")
    shadow.set_random_state(seed=0)
    d = shadow({"image": x, "label": y})            # x: [3, 256, 256] in [-1, 1]
    d["image"], d["image_shadow_mask"], d["image_shadow_soft"]
    json.loads(d["image_shadow_params"]["json"])    # the drawn parameters
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage
from skimage.morphology import convex_hull_image

from labelless.errors import ConfigError, DataError

__all__ = [
    "SHADOW_MODES",
    "SHADOW_GEOMETRIES",
    "INFERENCE_MASK_MODES",
    "freeform_hole_mask",
    "ShadowGeometry",
    "GeometryCache",
    "AcousticShadowConfig",
    "valid_data_mask",
    "estimate_geometry",
    "default_geometry",
    "beam_coordinates",
    "acoustic_shadow",
    "ramp_keep_mask",
    "inference_keep_mask",
    "RandShadow",
    "RandShadowd",
    "RandShadowD",
    "RandShadowDict",
    "InferenceKeepMask",
    "InferenceKeepMaskd",
    "InferenceKeepMaskD",
    "InferenceKeepMaskDict",
]

SHADOW_MODES = ("freeform", "acoustic")
SHADOW_GEOMETRIES = ("auto", "sector", "linear")
INFERENCE_MASK_MODES = ("ones", "intensity_ramp")

_REF_SIZE = 256
_MIN_SIZE = 8


# ---------------------------------------------------------------------------------------------------- checks
def _check_image(img: Any, name: str = "image") -> np.ndarray:
    """``[C, H, W]`` float32 numpy copy-free view of ``img``; DataError on wrong ndim, NaN/inf or a tiny image."""
    arr = convert_to_numpy(img)
    if arr.ndim != 3:
        raise DataError(name, f"expected a [C, H, W] image, got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1:
        raise DataError(name, f"the image has no channel (shape {tuple(arr.shape)})")
    if min(arr.shape[1:]) < _MIN_SIZE:
        raise DataError(name, f"the image is smaller than {_MIN_SIZE} px: shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "biuf":
        raise DataError(name, f"expected a numeric image, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise DataError(name, "NaN or infinite values in the image")
    return arr


def _check_x01(x01: Any, name: str = "image") -> np.ndarray:
    """``[H, W]`` float32 in [0, 1] (a ``[C, H, W]`` input is averaged over C)."""
    arr = convert_to_numpy(x01)
    if arr.ndim == 3:
        arr = _check_image(arr, name).mean(axis=0)
    elif arr.ndim == 2:
        arr = _check_image(arr[None], name)[0]
    else:
        raise DataError(name, f"expected an [H, W] or [C, H, W] image, got shape {tuple(arr.shape)}")
    return np.clip(arr, 0.0, 1.0)


def _range(value: Sequence[float], name: str, low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a pair (low, high), got {value!r}") from err
    if not (math.isfinite(a) and math.isfinite(b)) or not low <= a <= b <= high:
        raise ConfigError(f"{name} must satisfy {low} <= low <= high <= {high}, got {value!r}")
    return a, b


# ---------------------------------------------------------------------------------------------------- mode A
def _draw_capsules(canvas: np.ndarray, vertices: list[tuple[float, float]], radius: float) -> None:
    """Set every pixel whose centre lies within ``radius`` of a segment of the polyline (in place)."""
    h, w = canvas.shape
    r2 = radius * radius
    for (x0, y0), (x1, y1) in zip(vertices[:-1], vertices[1:], strict=True):
        xa, xb = max(math.floor(min(x0, x1) - radius), 0), min(math.ceil(max(x0, x1) + radius) + 1, w)
        ya, yb = max(math.floor(min(y0, y1) - radius), 0), min(math.ceil(max(y0, y1) + radius) + 1, h)
        if xa >= xb or ya >= yb:
            continue
        px = np.arange(xa - x0, xb - x0, dtype=np.float32)[None, :]
        py = np.arange(ya - y0, yb - y0, dtype=np.float32)[:, None]
        vx, vy = x1 - x0, y1 - y0
        vv = vx * vx + vy * vy
        if vv > 0:
            t = np.clip((px * vx + py * vy) * (1.0 / vv), 0.0, 1.0)
            px, py = px - t * vx, py - t * vy
        canvas[ya:yb, xa:xb] |= px * px + py * py <= r2


def _freeform_holes(rng: np.random.RandomState, s: int) -> np.ndarray:
    """One draw of the §3.1 hole map (True = hole) on an ``s × s`` canvas, before the ratio check."""
    scale = s / _REF_SIZE
    hole = np.zeros((s, s), dtype=bool)
    for max_side in (max(s // 2, 1), s):  # group 1, group 2
        for _ in range(rng.randint(2)):
            w, h = int(rng.randint(max_side)), int(rng.randint(max_side))
            x = int(rng.randint(-(w // 2), s - w + w // 2 + 1))
            y = int(rng.randint(-(h // 2), s - h + h // 2 + 1))
            hole[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = True
    strokes = np.zeros((s, s), dtype=bool)
    mu = math.sqrt(2.0 * s * s) / 8.0
    for _ in range(rng.randint(3)):
        n_vertex = int(rng.randint(4, 18))
        a_min = 2 * math.pi / 5 - rng.uniform(0, 2 * math.pi / 15)
        a_max = 2 * math.pi / 5 + rng.uniform(0, 2 * math.pi / 15)
        u = rng.uniform(a_min, a_max, n_vertex)
        angles = np.where(np.arange(n_vertex) % 2 == 0, 2 * math.pi - u, u)
        lengths = np.clip(rng.normal(mu, 22.0 * scale, n_vertex), 0.0, 2.0 * mu)
        width = math.floor(rng.uniform(12.0, 48.0) * scale)
        x, y = float(rng.randint(s)), float(rng.randint(s))
        vertices = [(x, y)]
        for a, r in zip(np.cos(angles) * lengths, np.sin(angles) * lengths, strict=True):
            x = float(math.floor(min(max(x + a, 0.0), s)))
            y = float(math.floor(min(max(y + r, 0.0), s)))
            vertices.append((x, y))
        _draw_capsules(strokes, vertices, width / 2.0)
    if rng.rand() < 0.5:
        strokes = strokes[:, ::-1]
    if rng.rand() < 0.5:
        strokes = strokes[::-1]
    return hole | strokes


def freeform_hole_mask(
    rng: np.random.RandomState, size: int = _REF_SIZE, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """A MAT-style free-form keep-mask of sabrnet.md §3.1 (see the module docstring for the decisions).

    Args:
        rng: the random state every number is drawn from (a transform's ``self.R``).
        size: canvas side ``s`` (lengths scale with ``s / 256``); ignored when ``shape`` is given.
        shape: ``(H, W)``: draw on a ``max(H, W)`` canvas and centre-crop to ``(H, W)``.

    Returns:
        float32 ``[H, W]`` keep-mask (1 keep, 0 hole) with 0 < hole ratio < 1.

    Raises:
        ConfigError: a side smaller than 8.

    Examples::

        m = freeform_hole_mask(np.random.RandomState(0))   # [256, 256]
        hole_ratio = 1.0 - m.mean()
    """
    h, w = (int(size), int(size)) if shape is None else (int(shape[0]), int(shape[1]))
    if min(h, w) < _MIN_SIZE:
        raise ConfigError(f"the mask canvas must be at least {_MIN_SIZE} px, got {(h, w)}")
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    while True:
        hole = _freeform_holes(rng, s)[top : top + h, left : left + w]
        n_hole = int(np.count_nonzero(hole))
        if 0 < n_hole < hole.size:
            return (~hole).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- mode B
@dataclasses.dataclass(frozen=True)
class ShadowGeometry:
    """Scan geometry of an acoustic shadow (sabrnet.md §3.2).

    Attributes:
        kind: ``"sector"`` or ``"linear"``.
        apex: sector apex ``(a_x, a_y)`` in pixels (column, row; may lie above the image); ``None`` for linear.
        half_angle: half field of view: Θ in radians (sector) or half the width in columns (linear).
        r_min: smallest depth (sector: distance to the apex; linear: row).
        r_max: largest depth.
        centre: central beam: angle in radians (sector, 0 = straight down, positive to the right) or column
            (linear).
    """

    kind: str
    apex: tuple[float, float] | None
    half_angle: float
    r_min: float
    r_max: float
    centre: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (Python floats, apex as a list or ``None``)."""
        return {
            "kind": self.kind,
            "apex": None if self.apex is None else [float(self.apex[0]), float(self.apex[1])],
            "half_angle": float(self.half_angle),
            "r_min": float(self.r_min),
            "r_max": float(self.r_max),
            "centre": float(self.centre),
        }


@dataclasses.dataclass(frozen=True)
class AcousticShadowConfig:
    """Parameters of the acoustic shadow model (sabrnet.md §3.2); defaults are the spec's.

    Attributes:
        geometry: ``"auto"``, ``"sector"`` or ``"linear"``.
        n_max: shadows per image ~ U{1, …, n_max}.
        apex: sector apex ``(a_x, a_y)`` px for ``geometry="sector"`` (default ``(W/2, −0.1 H)``).
        half_angle: sector half-angle Θ in radians for ``geometry="sector"`` (default: reaching the bottom corners).
        width_deg: sector shadow width range in degrees.
        width_linear: linear shadow width range as a fraction of the image width.
        p_reflector: probability of the reflector rule.
        reflector_percentile: a reflector peak must reach this percentile of the intensities in V.
        reflector_sigma: Gaussian σ (px) of the beam-profile smoothing.
        reflector_depth: depth range of the reflector peaks as fractions of D = r_max − r_min (from r_min).
        reflector_offset: r_s = r_peak + this (px).
        onset_depth: random rule r_s = r_min + U(onset_depth)·D.
        strength: s range (1 = no echo at all).
        edge: ε range of the edge softness e = ε·w.
        onset_length: ℓ range (px).
        rho: far-field decay ρ of the attenuation (0 = constant).
        speckle_scale: Rayleigh scale σ_n of the speckle floor η.
        speckle_sigma: Gaussian σ (px) smoothing η.
        mask_threshold: τ_m: keep-mask m = 1 − 1[A ≥ τ_m].
        valid_threshold: V threshold on the smoothed [0, 1] intensity.
        valid_sigma: Gaussian σ (px) of the V smoothing (not given in the spec).
        valid_hull: use the convex hull of V (an option of ours; default off = the spec's V).
        valid_stride: compute V on a ``valid_stride``-times block-mean image (1: full resolution; 2, the default,
            is about 3x faster and moves V's edge by at most one pixel).
        slope_min: ``"auto"``: smallest edge slope |dx/dy| of a sector.
        fit_fraction: ``"auto"``: fraction of V's rows (from the top) used in the edge fit.
    """

    geometry: str = "auto"
    n_max: int = 2
    apex: tuple[float, float] | None = None
    half_angle: float | None = None
    width_deg: tuple[float, float] = (2.0, 12.0)
    width_linear: tuple[float, float] = (0.03, 0.20)
    p_reflector: float = 0.5
    reflector_percentile: float = 90.0
    reflector_sigma: float = 2.0
    reflector_depth: tuple[float, float] = (0.1, 0.75)
    reflector_offset: float = 2.0
    onset_depth: tuple[float, float] = (0.15, 0.75)
    strength: tuple[float, float] = (0.6, 0.95)
    edge: tuple[float, float] = (0.1, 0.3)
    onset_length: tuple[float, float] = (3.0, 12.0)
    rho: float = 0.0
    speckle_scale: float = 0.02
    speckle_sigma: float = 0.7
    mask_threshold: float = 0.3
    valid_threshold: float = 0.02
    valid_sigma: float = 1.0
    valid_hull: bool = False
    valid_stride: int = 2
    slope_min: float = 0.05
    fit_fraction: float = 0.6

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        if self.geometry not in SHADOW_GEOMETRIES:
            raise ConfigError(f"geometry must be one of {SHADOW_GEOMETRIES}, got {self.geometry!r}")
        if int(self.n_max) < 1:
            raise ConfigError(f"n_max must be >= 1, got {self.n_max!r}")
        set_("n_max", int(self.n_max))
        if self.apex is not None:
            set_("apex", _range_free_pair(self.apex, "apex"))
        if self.half_angle is not None:
            if not 0.0 < float(self.half_angle) < math.pi / 2:
                raise ConfigError(f"half_angle must be in (0, pi/2) radians, got {self.half_angle!r}")
            set_("half_angle", float(self.half_angle))
        set_("width_deg", _range(self.width_deg, "width_deg", 0.0, 180.0))
        set_("width_linear", _range(self.width_linear, "width_linear", 0.0, 1.0))
        set_("reflector_depth", _range(self.reflector_depth, "reflector_depth", 0.0, 1.0))
        set_("onset_depth", _range(self.onset_depth, "onset_depth", 0.0, 1.0))
        set_("strength", _range(self.strength, "strength", 0.0, 1.0))
        set_("edge", _range(self.edge, "edge", 0.0, 0.5))
        set_("onset_length", _range(self.onset_length, "onset_length", 0.0))
        if self.edge[0] <= 0.0 or self.width_deg[0] <= 0.0 or self.width_linear[0] <= 0.0:
            raise ConfigError("width_deg, width_linear and edge must be > 0")
        if self.onset_length[0] <= 0.0:
            raise ConfigError(f"onset_length must be > 0, got {self.onset_length!r}")
        for name, low, high in (
            ("p_reflector", 0.0, 1.0),
            ("reflector_percentile", 0.0, 100.0),
            ("rho", 0.0, 1.0),
            ("mask_threshold", 0.0, 1.0),
            ("valid_threshold", 0.0, 1.0),
            ("fit_fraction", 0.0, 1.0),
            ("reflector_sigma", 0.0, math.inf),
            ("reflector_offset", -math.inf, math.inf),
            ("speckle_scale", 0.0, math.inf),
            ("speckle_sigma", 0.0, math.inf),
            ("valid_sigma", 0.0, math.inf),
            ("slope_min", 0.0, math.inf),
        ):
            value = float(getattr(self, name))
            if math.isnan(value) or not low <= value <= high or (math.isinf(value) and math.isinf(high)):
                raise ConfigError(f"{name} must be in [{low}, {high}], got {getattr(self, name)!r}")
            set_(name, value)
        set_("valid_hull", bool(self.valid_hull))
        if isinstance(self.valid_stride, bool) or int(self.valid_stride) != self.valid_stride or self.valid_stride < 1:
            raise ConfigError(f"valid_stride must be an integer >= 1, got {self.valid_stride!r}")
        set_("valid_stride", int(self.valid_stride))
        if self.fit_fraction <= 0.0:
            raise ConfigError(f"fit_fraction must be > 0, got {self.fit_fraction!r}")


def _range_free_pair(value: Sequence[float], name: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a pair of numbers, got {value!r}") from err
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return a, b


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Binary hole filling: background components not touching the border become foreground."""
    bg, n = ndimage.label(~mask)
    if n == 0:
        return mask
    border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    keep_bg = np.zeros(n + 1, dtype=bool)
    keep_bg[border] = True
    keep_bg[0] = False
    return ~keep_bg[bg]


def valid_data_mask(
    x01: Any, threshold: float = 0.02, sigma: float = 1.0, convex_hull: bool = False, stride: int = 1
) -> np.ndarray:
    """The valid-data mask V of sabrnet.md §3.2.

    Args:
        x01: ``[H, W]`` (or ``[C, H, W]``, averaged) image in [0, 1].
        threshold: intensity threshold on the smoothed image.
        sigma: Gaussian smoothing σ in px (0: none).
        convex_hull: return the convex hull of that mask instead (not the spec's V; see the module docstring).
        stride: compute the mask on the mean of ``stride × stride`` blocks (σ / stride) and upsample it (nearest);
            1 = full resolution. Images with a side under ``8 · stride`` px are done at full resolution.

    Returns:
        bool ``[H, W]``: fill-holes(largest 4-connected component of (smoothed x01 > threshold)); all False when no
        pixel passes.
    """
    x = _check_x01(x01)
    h, w = x.shape
    if stride > 1 and min(h, w) >= 8 * stride:
        hs, ws = -(-h // stride), -(-w // stride)
        padded = np.pad(x, ((0, hs * stride - h), (0, ws * stride - w)), mode="edge")
        small = sum(padded[i::stride, j::stride] for i in range(stride) for j in range(stride)) / np.float32(
            stride * stride
        )  # (strided sums: ~10x faster than a reshape-mean)
        v = valid_data_mask(small, threshold, sigma / stride, convex_hull, 1)
        return np.repeat(np.repeat(v, stride, axis=0), stride, axis=1)[:h, :w]
    smooth = ndimage.gaussian_filter(x, float(sigma), mode="nearest") if sigma > 0 else x
    fg = smooth > threshold
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    if n > 1:
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        fg = lab == int(np.argmax(counts))
    if convex_hull:
        return convex_hull_image(fg)
    return _fill_holes(fg)


def _robust_line(y: np.ndarray, x: np.ndarray, max_points: int = 120) -> tuple[float, float]:
    """Fit ``x = a + b·y``: Theil–Sen, then least squares on the points within max(2, 2.5·MAD) of it."""
    if y.size > max_points:
        idx = np.linspace(0, y.size - 1, max_points).round().astype(int)
        ys, xs = y[idx], x[idx]
    else:
        ys, xs = y, x
    i, j = _pairs(ys.size)
    dy = ys[j] - ys[i]
    ok = dy != 0
    b = float(np.median((xs[j] - xs[i])[ok] / dy[ok])) if ok.any() else 0.0
    a = float(np.median(x - b * y))
    res = x - (a + b * y)
    mad = float(np.median(np.abs(res - np.median(res))))
    inl = np.abs(res) <= max(2.0, 2.5 * 1.4826 * mad)
    if inl.sum() >= 3 and np.ptp(y[inl]) > 0:  # closed-form least squares (np.polyfit costs 10x more)
        yi, xi = y[inl].astype(np.float64), x[inl].astype(np.float64)
        yc, xc = yi - yi.mean(), xi - xi.mean()
        b = float(np.dot(yc, xc) / np.dot(yc, yc))
        a = float(xi.mean() - b * yi.mean())
    return float(a), float(b)


@functools.lru_cache(maxsize=4)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The index pairs i < j of ``n`` points (cached: Theil–Sen needs them for every fit)."""
    i, j = np.triu_indices(n, k=1)
    i.flags.writeable = False
    j.flags.writeable = False
    return i, j


def _linear_geometry(valid: np.ndarray) -> ShadowGeometry:
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    c0, c1 = float(cols[0]), float(cols[-1])
    return ShadowGeometry("linear", None, (c1 - c0) / 2.0, float(rows[0]), float(rows[-1]), (c0 + c1) / 2.0)


def _fit_geometry(v: np.ndarray, slope_min: float, fit_fraction: float) -> ShadowGeometry:
    """The ``"auto"`` geometry with r_min / r_max still unset (0) for a sector."""
    rows = np.flatnonzero(v.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1])
    rows = rows[rows <= top + fit_fraction * (bottom - top)]
    if rows.size < 3:
        return _linear_geometry(v)
    sub = v[rows]
    first = np.argmax(sub, axis=1).astype(np.float64)
    last = (v.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1)).astype(np.float64)
    y = rows.astype(np.float64)
    a_l, b_l = _robust_line(y, first)
    a_r, b_r = _robust_line(y, last)
    if not (b_l < -slope_min and b_r > slope_min):
        return _linear_geometry(v)
    apex_y = (a_l - a_r) / (b_r - b_l)
    apex_x = a_l + b_l * apex_y
    phi_l, phi_r = math.atan(b_l), math.atan(b_r)
    return ShadowGeometry("sector", (apex_x, apex_y), (phi_r - phi_l) / 2.0, 0.0, 0.0, (phi_r + phi_l) / 2.0)


def _auto_geometry(
    v: np.ndarray, slope_min: float, fit_fraction: float
) -> tuple[ShadowGeometry, np.ndarray, np.ndarray]:
    """(geometry, r, φ) of the ``"auto"`` setting; V must not be empty."""
    geom = _fit_geometry(v, slope_min, fit_fraction)
    r, phi = _coordinates(geom, (int(v.shape[0]), int(v.shape[1])))
    if geom.kind == "sector":
        rv = r[v]
        geom = dataclasses.replace(geom, r_min=float(rv.min()), r_max=float(rv.max()))
    return geom, r, phi


def estimate_geometry(valid: Any, slope_min: float = 0.05, fit_fraction: float = 0.6) -> ShadowGeometry:
    """The ``"auto"`` geometry of sabrnet.md §3.2 from the valid-data mask (see the module docstring).

    Args:
        valid: bool ``[H, W]`` valid-data mask V (:func:`valid_data_mask`).
        slope_min: smallest |dx/dy| of the fan edges of a sector.
        fit_fraction: fraction of V's rows (from its top) used for the edge fit.

    Returns:
        a sector geometry (apex at the intersection of the edge lines, r_min / r_max over V) or a linear one.

    Raises:
        DataError: V is empty or not 2D.
    """
    v = np.asarray(convert_to_numpy(valid)).astype(bool)
    if v.ndim != 2:
        raise DataError("valid-data mask", f"expected an [H, W] mask, got shape {tuple(v.shape)}")
    if not v.any():
        raise DataError("valid-data mask", "empty: the image has no pixel above the valid-data threshold")
    return _auto_geometry(v, slope_min, fit_fraction)[0]


@functools.lru_cache(maxsize=32)
def default_geometry(
    kind: str, shape: tuple[int, int], apex: tuple[float, float] | None = None, half_angle: float | None = None
) -> ShadowGeometry:
    """The image-frame geometry of an explicit ``"sector"`` / ``"linear"`` setting (cached per shape).

    Args:
        kind: ``"sector"`` or ``"linear"``.
        shape: ``(H, W)``.
        apex: sector apex ``(a_x, a_y)`` px (default ``(W/2, −0.1 H)``).
        half_angle: sector Θ in radians (default: the half-angle reaching the farther bottom corner).

    Returns:
        the geometry (r_min = distance to the top row, r_max = distance to the farthest corner).
    """
    h, w = int(shape[0]), int(shape[1])
    if kind == "linear":
        return ShadowGeometry("linear", None, (w - 1) / 2.0, 0.0, float(h - 1), (w - 1) / 2.0)
    if kind != "sector":
        raise ConfigError(f"geometry kind must be 'sector' or 'linear', got {kind!r}")
    ax, ay = (w / 2.0, -0.1 * h) if apex is None else (float(apex[0]), float(apex[1]))
    if half_angle is None:
        depth = max(h - 1 - ay, 1e-6)
        half_angle = max(abs(math.atan2(0.0 - ax, depth)), abs(math.atan2(w - 1 - ax, depth)))
    corners = [(0.0, 0.0), (w - 1.0, 0.0), (0.0, h - 1.0), (w - 1.0, h - 1.0)]
    r_max = max(math.hypot(cx - ax, cy - ay) for cx, cy in corners)
    return ShadowGeometry("sector", (ax, ay), float(half_angle), max(-ay, 0.0), r_max, 0.0)


@functools.lru_cache(maxsize=8)
def _cached_coordinates(geom: ShadowGeometry, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    r, phi = _coordinates(geom, shape)
    r.flags.writeable = False
    phi.flags.writeable = False
    return r, phi


def _coordinates(geom: ShadowGeometry, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if geom.kind == "linear":
        return np.broadcast_to(yy, (h, w)).copy(), np.broadcast_to(xx, (h, w)).copy()
    assert geom.apex is not None
    # torch's vectorised float32 hypot/atan2: about 5x numpy's on one core (the "auto" geometry needs them per image)
    dx = torch.from_numpy(xx - np.float32(geom.apex[0]))
    dy = torch.from_numpy(yy - np.float32(geom.apex[1]))
    return torch.hypot(dx, dy).numpy(), torch.atan2(dx, dy).numpy()


def beam_coordinates(geom: ShadowGeometry, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Depth ``r`` and beam coordinate ``φ`` of every pixel, float32 ``[H, W]`` each.

    Sector: r = √((x − a_x)² + (y − a_y)²), φ = atan2(x − a_x, y − a_y) (radians, 0 = straight down). Linear: r = row,
    φ = column. The arrays are cached (read-only).
    """
    return _cached_coordinates(geom, (int(shape[0]), int(shape[1])))


def _valid_percentile(x01: np.ndarray, valid: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of the intensities in V, over every other row and column (a quarter of the pixels,
    4x faster; the reflector level is a coarse threshold) when that leaves at least 1,000 valid pixels."""
    sub, vsub = x01[::2, ::2], valid[::2, ::2]
    values = sub[vsub] if int(vsub.sum()) >= 1000 else x01[valid]
    return float(np.percentile(values, q))


def _reflector_onset(
    x01: np.ndarray,
    valid: np.ndarray,
    r: np.ndarray,
    phi: np.ndarray,
    centre: float,
    width: float,
    geom: ShadowGeometry,
    level: float,
    cfg: AcousticShadowConfig,
) -> float | None:
    """r_s of the reflector rule, or ``None`` when there is no candidate peak."""
    band = valid & (np.abs(phi - np.float32(centre)) <= width / 2.0)
    if not band.any():
        return None
    rb = np.rint(r[band]).astype(np.int64)
    n_bins = int(rb.max()) + 1
    counts = np.bincount(rb, minlength=n_bins).astype(np.float64)
    sums = np.bincount(rb, weights=x01[band], minlength=n_bins)
    filled = np.flatnonzero(counts)
    depth = np.arange(n_bins, dtype=np.float64)
    profile = np.interp(depth, filled, sums[filled] / counts[filled])
    if cfg.reflector_sigma > 0:
        profile = ndimage.gaussian_filter1d(profile, cfg.reflector_sigma, mode="nearest")
    d = geom.r_max - geom.r_min
    lo, hi = geom.r_min + cfg.reflector_depth[0] * d, geom.r_min + cfg.reflector_depth[1] * d
    peak = np.zeros(n_bins, dtype=bool)
    peak[1:-1] = (profile[1:-1] >= profile[:-2]) & (profile[1:-1] > profile[2:])
    cand = peak & (profile >= level) & (depth >= lo) & (depth <= hi) & (depth >= filled[0]) & (depth <= filled[-1])
    if not cand.any():
        return None
    idx = np.flatnonzero(cand)
    best = int(idx[np.argmax(profile[idx])])
    return float(best + cfg.reflector_offset)


def _field(
    r: np.ndarray, phi: np.ndarray, shadow: dict[str, Any], r_max: float, rho: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(support, values)``: the pixels where L·O may be > 0 and L(φ)·O(r) there (float32), without s and V."""
    w, e, c, r_s = shadow["width"], shadow["edge"], shadow["centre"], shadow["onset"]
    a = w / 2.0 - e
    delta = np.abs(phi - np.float32(c))
    support = (delta < a + 2.0 * e) & (r >= np.float32(r_s))
    dl, t = delta[support], r[support] - np.float32(r_s)
    lateral = np.where(dl <= a, np.float32(1.0), 0.5 * (1.0 + np.cos(np.float32(np.pi / (2.0 * e)) * (dl - a))))
    ell = shadow["onset_length"]
    far: np.ndarray | np.float32 = np.float32(1.0)
    if rho > 0:
        far = 1.0 - np.float32(rho / max(r_max - r_s - ell, 1e-6)) * (t - np.float32(ell))
    onset = np.where(t < ell, 0.5 * (1.0 - np.cos(np.float32(np.pi / ell) * t)), far)
    return support, np.clip(lateral * onset, 0.0, 1.0).astype(np.float32)


class GeometryCache:
    """What mode B derives from an image alone — V, the geometry and the reflector level — kept per image content.

    Training draws a new shadow for the same (un-augmented) image every epoch; with this cache V, the ``"auto"``
    fit and the level are computed once per image (about 60 % of the cost of a draw). Entries are keyed by a
    BLAKE2 digest of the image bytes and hold V bit-packed (8 KB for 256²), so 4,096 entries take about 35 MB.
    The random draws do not depend on it: a cached and an uncached transform give identical shadows.

    Args:
        maxsize: entries kept (least recently used dropped first); 0 disables the cache.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if isinstance(maxsize, bool) or int(maxsize) != maxsize or maxsize < 0:
            raise ConfigError(f"geometry cache size must be an integer >= 0, got {maxsize!r}")
        self.maxsize = int(maxsize)
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[bytes, tuple[np.ndarray, ShadowGeometry | None, float | None]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, grey: np.ndarray, cfg: AcousticShadowConfig) -> _ImageGeometry:
        """V, geometry and level of ``grey`` (see :func:`_image_geometry`), computed or from the cache."""
        if self.maxsize == 0:
            self.misses += 1
            return _image_geometry(grey, cfg)
        h = hashlib.blake2b(np.ascontiguousarray(grey).tobytes(), digest_size=16)
        h.update(repr((grey.shape, grey.dtype.str)).encode())
        key = h.digest()
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            packed, geom, level = entry
            return np.unpackbits(packed, count=grey.size).reshape(grey.shape).astype(bool), geom, level, None
        self.misses += 1
        out = _image_geometry(grey, cfg)
        self._entries[key] = (np.packbits(out[0]), out[1], out[2])
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return out


# V, geometry (None when V is empty), reflector level (None when p_reflector = 0), (r, φ) when already computed
_ImageGeometry = tuple[np.ndarray, ShadowGeometry | None, float | None, tuple[np.ndarray, np.ndarray] | None]


def _image_geometry(grey: np.ndarray, cfg: AcousticShadowConfig) -> _ImageGeometry:
    """V, geometry and reflector level of an ``[H, W]`` image in [0, 1] (no random draws), with the ``"auto"``
    beam coordinates it computed on the way."""
    shape = (int(grey.shape[0]), int(grey.shape[1]))
    valid = valid_data_mask(grey, cfg.valid_threshold, cfg.valid_sigma, cfg.valid_hull, cfg.valid_stride)
    if not valid.any():
        return valid, None, None, None
    coords = None
    if cfg.geometry == "auto":
        geom, r, phi = _auto_geometry(valid, cfg.slope_min, cfg.fit_fraction)
        coords = (r, phi)
    else:
        geom = default_geometry(cfg.geometry, shape, cfg.apex, cfg.half_angle)
    level = _valid_percentile(grey, valid, cfg.reflector_percentile) if cfg.p_reflector > 0 else None
    return valid, geom, level, coords


def _draw_acoustic(
    grey: np.ndarray, rng: np.random.RandomState, cfg: AcousticShadowConfig, cache: GeometryCache | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(A, η, params)`` for an ``[H, W]`` image in [0, 1] (all draws from ``rng``; V, the geometry and the
    reflector level from ``cache`` when given)."""
    shape = (int(grey.shape[0]), int(grey.shape[1]))
    valid, geom, level, coords = _image_geometry(grey, cfg) if cache is None else cache.lookup(grey, cfg)
    if geom is None:
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32), {"geometry": None, "shadows": []}
    if coords is not None:
        r, phi = coords
    elif cfg.geometry == "auto":
        r, phi = _coordinates(geom, shape)
    else:
        r, phi = beam_coordinates(geom, shape)
    if geom.kind == "sector":
        lo_w, hi_w = math.radians(cfg.width_deg[0]), math.radians(cfg.width_deg[1])
    else:
        lo_w, hi_w = cfg.width_linear[0] * shape[1], cfg.width_linear[1] * shape[1]
    depth = geom.r_max - geom.r_min
    shadows: list[dict[str, Any]] = []
    survive = np.ones(shape, dtype=np.float32)  # Π (1 − A_i)
    for _ in range(int(rng.randint(1, cfg.n_max + 1))):
        width = float(rng.uniform(lo_w, hi_w))
        edge = float(rng.uniform(*cfg.edge)) * width
        u_centre = float(rng.uniform())
        use_reflector = bool(rng.uniform() < cfg.p_reflector)
        r_random = geom.r_min + float(rng.uniform(*cfg.onset_depth)) * depth
        strength = float(rng.uniform(*cfg.strength))
        ell = float(rng.uniform(*cfg.onset_length))
        free = geom.half_angle - (width / 2.0 + edge)
        centre = geom.centre + (2.0 * u_centre - 1.0) * free if free > 0 else geom.centre
        onset, rule = None, "random"
        if use_reflector:
            assert level is not None  # p_reflector > 0
            onset = _reflector_onset(grey, valid, r, phi, centre, width, geom, level, cfg)
            rule = "reflector" if onset is not None else "random_fallback"
        shadow = {
            "width": width,
            "centre": centre,
            "edge": edge,
            "onset": float(r_random if onset is None else onset),
            "onset_length": ell,
            "strength": strength,
            "rule": rule,
        }
        shadows.append(shadow)
        support, values = _field(r, phi, shadow, geom.r_max, cfg.rho)
        survive[support] *= 1.0 - np.float32(strength) * values * valid[support]
    soft = np.clip(1.0 - survive, 0.0, 1.0).astype(np.float32)
    return soft, _speckle_floor(soft, rng, cfg), {"geometry": geom.to_dict(), "shadows": shadows}


def _speckle_floor(soft: np.ndarray, rng: np.random.RandomState, cfg: AcousticShadowConfig) -> np.ndarray:
    """η: Rayleigh(σ_n) noise smoothed with a Gaussian, drawn only on the bounding box of A > 0 plus a margin of
    4 σ (zero elsewhere, where it is never used)."""
    eta = np.zeros(soft.shape, dtype=np.float32)
    rows, cols = np.flatnonzero(soft.any(axis=1)), np.flatnonzero(soft.any(axis=0))
    if rows.size == 0:
        return eta
    m = math.ceil(4.0 * cfg.speckle_sigma) + 1
    y0, y1 = max(int(rows[0]) - m, 0), min(int(rows[-1]) + m + 1, soft.shape[0])
    x0, x1 = max(int(cols[0]) - m, 0), min(int(cols[-1]) + m + 1, soft.shape[1])
    u = (1.0 - rng.random_sample((y1 - y0, x1 - x0))).astype(np.float32)  # in (0, 1]
    box = np.float32(cfg.speckle_scale) * np.sqrt(np.float32(-2.0) * np.log(u))  # Rayleigh(σ_n) by inversion
    if cfg.speckle_sigma > 0:
        box = ndimage.gaussian_filter(box, cfg.speckle_sigma, mode="nearest")
    eta[y0:y1, x0:x1] = box
    return eta


def acoustic_shadow(
    x01: Any,
    rng: np.random.RandomState,
    config: AcousticShadowConfig | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw and apply acoustic shadows (sabrnet.md §3.2; see the module docstring).

    Args:
        x01: ``[H, W]`` or ``[C, H, W]`` image in [0, 1] (V, the geometry and the reflector rule use the channel
            mean; every channel gets the same attenuation).
        rng: the random state every number is drawn from.
        config: the model parameters (default :class:`AcousticShadowConfig`).
        kwargs: fields of :class:`AcousticShadowConfig` when ``config`` is ``None``.

    Returns:
        ``(shadowed, keep, soft, params)``: the shadowed image (input shape, float32 in [0, 1]; pixels with A = 0
        keep their input value), the float32 ``[H, W]`` keep-mask m, the soft map A and a JSON-serialisable dict of
        the draws (``geometry``: :meth:`ShadowGeometry.to_dict`, ``None`` when V is empty and nothing is drawn;
        ``shadows``: one dict per shadow with ``width``, ``centre``, ``edge``, ``onset``, ``onset_length``,
        ``strength``, ``rule`` ∈ {``"reflector"``, ``"random"``, ``"random_fallback"``}).

    Raises:
        DataError: bad image (wrong ndim, NaN, smaller than 8 px).
        ConfigError: ``config`` and ``kwargs`` both given, or bad parameters.

    Examples::

        shadowed, keep, soft, params = acoustic_shadow(x01, np.random.RandomState(0), geometry="sector")
    """
    if config is None:
        config = AcousticShadowConfig(**kwargs)
    elif kwargs:
        raise ConfigError(f"give either config or keyword parameters, not both (got {sorted(kwargs)})")
    arr = convert_to_numpy(x01)
    squeeze = arr.ndim == 2
    stack = _check_image(arr[None] if squeeze else arr)
    grey = np.clip(stack.mean(axis=0) if stack.shape[0] > 1 else stack[0], 0.0, 1.0)
    soft, eta, params = _draw_acoustic(grey, rng, config)
    out = _apply_soft(stack, soft, eta)
    keep = (soft < config.mask_threshold).astype(np.float32)
    return (out[0] if squeeze else out), keep, soft, params


def _apply_soft(stack: np.ndarray, soft: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """``(1 − A)·x + A·floor = x + A·(floor − x)`` for a ``[C, H, W]`` stack (exactly x where A = 0)."""
    return stack + soft[None] * (floor[None] - stack)


# ---------------------------------------------------------------------------------------------------- inference
def ramp_keep_mask(x01: Any) -> np.ndarray:
    """SCO-SSL's intensity-ramp keep-mask (sabrnet.md §3.3): ``1[ramp(x01) ≥ 0.5]``.

    ramp(v) = ½ (cos(π (clamp(v, 1/255, 60/255) − 1/255) / (59/255) + π) + 1): 0 for pixels ≤ 1/255, 1 for pixels
    ≥ 60/255 (the mask switches at v ≈ 30.5/255).

    Args:
        x01: ``[H, W]`` (or ``[C, H, W]``, averaged) image in [0, 1].

    Returns:
        float32 ``[H, W]`` 0/1 keep-mask.
    """
    v = np.clip(_check_x01(x01), 1.0 / 255.0, 60.0 / 255.0).astype(np.float64)
    ramp = 0.5 * (np.cos(np.pi * (v - 1.0 / 255.0) / (59.0 / 255.0) + np.pi) + 1.0)
    return (ramp >= 0.5).astype(np.float32)


def inference_keep_mask(image: Any, mode: str = "ones") -> torch.Tensor:
    """The keep-mask of fine-tuning and inference (sabrnet.md §3.3).

    Args:
        image: ``[..., C, H, W]`` image in [−1, 1] (a batch ``[B, C, H, W]`` works too); tensor or array.
        mode: ``"ones"`` (default, no known shadow) or ``"intensity_ramp"`` (:func:`ramp_keep_mask` on the channel
            mean).

    Returns:
        float32 tensor ``[..., 1, H, W]`` on the image's device (CPU for arrays).

    Raises:
        ConfigError: unknown mode.
        DataError: fewer than 3 dimensions, NaN, smaller than 8 px.
    """
    if mode not in INFERENCE_MASK_MODES:
        raise ConfigError(f"inference keep-mask mode must be one of {INFERENCE_MASK_MODES}, got {mode!r}")
    t = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    if t.ndim < 3:
        raise DataError("image", f"expected a [..., C, H, W] image, got shape {tuple(t.shape)}")
    if min(t.shape[-2:]) < _MIN_SIZE:
        raise DataError("image", f"the image is smaller than {_MIN_SIZE} px: shape {tuple(t.shape)}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise DataError("image", "NaN or infinite values in the image")
    shape = (*t.shape[:-3], 1, *t.shape[-2:])
    if mode == "ones":
        return torch.ones(shape, dtype=torch.float32, device=t.device)
    x01 = ((t.mean(dim=-3, keepdim=True) + 1.0) / 2.0).clamp(1.0 / 255.0, 60.0 / 255.0)
    ramp = 0.5 * (torch.cos(math.pi * (x01 - 1.0 / 255.0) / (59.0 / 255.0) + math.pi) + 1.0)
    return (ramp >= 0.5).float()


# ---------------------------------------------------------------------------------------------------- transforms
class RandShadow(RandomizableTransform):
    """Shadow imitation of sabrnet.md §3 for a ``[C, H, W]`` image in [−1, 1] (see the module docstring).

    Args:
        mode: ``"freeform"`` (mode A) or ``"acoustic"`` (mode B).
        prob: probability of drawing a shadow (not applied: m = 1, soft = 0, image unchanged).
        geometry, n_max, apex, half_angle, width_deg, width_linear, p_reflector, reflector_percentile,
            reflector_sigma, reflector_depth, reflector_offset, onset_depth, strength, edge, onset_length, rho,
            speckle_scale, speckle_sigma, mask_threshold, valid_threshold, valid_sigma, valid_hull, valid_stride,
            slope_min, fit_fraction:
            the acoustic parameters (:class:`AcousticShadowConfig`; unused in mode A).
        geometry_cache: mode B: keep V, the geometry and the reflector level of up to this many distinct images
            (:class:`GeometryCache`; 0: recompute for every draw). Draws are the same either way.

    Returns (``__call__``):
        ``(image, keep, soft)``: float32 tensors ``[C, H, W]`` (mode A: ``x ⊙ m``; mode B: attenuated), ``[1, H, W]``
        keep-mask m ∈ {0, 1} and ``[1, H, W]`` soft map (mode A: 1 − m; mode B: A). A MetaTensor input gives a
        MetaTensor image with its metadata.

    ``randomize=False`` re-applies the last drawn shadow (same maps) when its shape matches, which is how
    :class:`RandShadowd` gives all its keys the same shadow. :attr:`last_params` holds the last draw as a
    JSON-serialisable dict (``mode``, ``applied``, ``hole_ratio``; mode B also ``geometry`` and ``shadows``).

    Examples::

        t = RandShadow("acoustic", geometry="sector")
        t.set_random_state(0)
        x_shadowed, keep, soft = t(x)      # x: [3, 256, 256] in [-1, 1]
    """

    def __init__(
        self,
        mode: str = "freeform",
        prob: float = 1.0,
        geometry: str = "auto",
        n_max: int = 2,
        apex: tuple[float, float] | None = None,
        half_angle: float | None = None,
        width_deg: tuple[float, float] = (2.0, 12.0),
        width_linear: tuple[float, float] = (0.03, 0.20),
        p_reflector: float = 0.5,
        reflector_percentile: float = 90.0,
        reflector_sigma: float = 2.0,
        reflector_depth: tuple[float, float] = (0.1, 0.75),
        reflector_offset: float = 2.0,
        onset_depth: tuple[float, float] = (0.15, 0.75),
        strength: tuple[float, float] = (0.6, 0.95),
        edge: tuple[float, float] = (0.1, 0.3),
        onset_length: tuple[float, float] = (3.0, 12.0),
        rho: float = 0.0,
        speckle_scale: float = 0.02,
        speckle_sigma: float = 0.7,
        mask_threshold: float = 0.3,
        valid_threshold: float = 0.02,
        valid_sigma: float = 1.0,
        valid_hull: bool = False,
        valid_stride: int = 2,
        slope_min: float = 0.05,
        fit_fraction: float = 0.6,
        geometry_cache: int = 4096,
    ) -> None:
        if mode not in SHADOW_MODES:
            raise ConfigError(f"shadow mode must be one of {SHADOW_MODES}, got {mode!r}")
        if not 0.0 <= float(prob) <= 1.0:
            raise ConfigError(f"shadow prob must be in [0, 1], got {prob!r}")
        RandomizableTransform.__init__(self, prob=float(prob))
        self.mode = mode
        self.config = AcousticShadowConfig(
            geometry=geometry,
            n_max=n_max,
            apex=None if apex is None else tuple(apex),
            half_angle=half_angle,
            width_deg=tuple(width_deg),
            width_linear=tuple(width_linear),
            p_reflector=p_reflector,
            reflector_percentile=reflector_percentile,
            reflector_sigma=reflector_sigma,
            reflector_depth=tuple(reflector_depth),
            reflector_offset=reflector_offset,
            onset_depth=tuple(onset_depth),
            strength=tuple(strength),
            edge=tuple(edge),
            onset_length=tuple(onset_length),
            rho=rho,
            speckle_scale=speckle_scale,
            speckle_sigma=speckle_sigma,
            mask_threshold=mask_threshold,
            valid_threshold=valid_threshold,
            valid_sigma=valid_sigma,
            valid_hull=bool(valid_hull),
            valid_stride=valid_stride,
            slope_min=slope_min,
            fit_fraction=fit_fraction,
        )
        self.geometry_cache = GeometryCache(geometry_cache if mode == "acoustic" else 0)
        self._keep: np.ndarray | None = None
        self._soft: np.ndarray | None = None
        self._eta: np.ndarray | None = None
        self.last_params: dict[str, Any] = {"mode": mode, "applied": False, "hole_ratio": 0.0}

    def randomize(self, data: Any = None) -> None:
        """Decide whether to apply (``prob``) and, when applying and ``data`` (a checked ``[C, H, W]`` array in
        [−1, 1]) is given, draw the shadow for it."""
        super().randomize(None)
        if self._do_transform and data is not None:
            self._draw(data)

    def _draw(self, x: np.ndarray) -> None:
        shape = (int(x.shape[-2]), int(x.shape[-1]))
        if self.mode == "freeform":
            keep = freeform_hole_mask(self.R, shape=shape)
            self._keep, self._soft, self._eta = keep, 1.0 - keep, None
            extra: dict[str, Any] = {}
        else:
            grey = np.clip((x.mean(axis=0) + 1.0) / 2.0, 0.0, 1.0)
            soft, eta, extra = _draw_acoustic(grey, self.R, self.config, self.geometry_cache)
            keep = (soft < self.config.mask_threshold).astype(np.float32)
            self._keep, self._soft, self._eta = keep, soft, eta
        self.last_params = {
            "mode": self.mode,
            "applied": True,
            "hole_ratio": float(1.0 - self._keep.mean()),
            **extra,
        }

    def _identity(self, img: Any, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        self.last_params = {"mode": self.mode, "applied": False, "hole_ratio": 0.0}
        return (
            self._as_output(x, img),
            torch.ones((1, h, w), dtype=torch.float32),
            torch.zeros((1, h, w), dtype=torch.float32),
        )

    @staticmethod
    def _as_output(out: np.ndarray, img: Any) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        if isinstance(img, torch.Tensor):
            t = convert_to_dst_type(t, img, dtype=torch.float32)[0]
        return t

    def __call__(self, img: Any, randomize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _check_image(img)
        if randomize:
            self.randomize(x)
        if not self._do_transform:
            return self._identity(img, x)
        if self._keep is None or self._keep.shape != x.shape[-2:]:
            self._draw(x)
        assert self._keep is not None and self._soft is not None
        if self.mode == "freeform":
            out = x * self._keep[None]
        else:
            assert self._eta is not None
            out = _apply_soft(x, self._soft, 2.0 * self._eta - 1.0)  # the same blend in [-1, 1]
        return (
            self._as_output(out, img),
            torch.from_numpy(self._keep.copy())[None],
            torch.from_numpy(np.ascontiguousarray(self._soft, dtype=np.float32))[None],
        )


def _collate_safe(params: dict[str, Any]) -> dict[str, Any]:
    """Flat, batch-collatable summary of :attr:`RandShadow.last_params` plus its full JSON (``"json"``)."""
    geom = params.get("geometry") or {}
    return {
        "mode": str(params["mode"]),
        "applied": bool(params["applied"]),
        "hole_ratio": float(params["hole_ratio"]),
        "geometry": str(geom.get("kind", "none")),
        "n_shadows": len(params.get("shadows", [])),
        "json": json.dumps(params),
    }


class RandShadowd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandShadow`.

    For each key, writes ``d[key]`` (shadowed), ``d[key + mask_key_postfix]`` (``[1, H, W]`` keep-mask),
    ``d[key + soft_key_postfix]`` (``[1, H, W]`` soft map) and ``d[key + meta_key_postfix]``: a flat dict that
    collates in a batch (``mode``, ``applied``, ``hole_ratio``, ``geometry`` kind or ``"none"``, ``n_shadows``) with
    the full drawn parameters as a JSON string under ``"json"``. One ``prob`` decision per call; the shadow is drawn
    on the first key and re-applied to the other keys of the same size (keys of another size get their own draw).
    Labels and other keys are never touched.

    Args:
        keys: image keys.
        mask_key_postfix: postfix of the keep-mask key.
        soft_key_postfix: postfix of the soft-map key.
        meta_key_postfix: postfix of the parameter key.
        allow_missing_keys: skip missing keys.
        prob: probability of drawing a shadow.
        kwargs: the other arguments of :class:`RandShadow`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key_postfix: str = "_shadow_mask",
        soft_key_postfix: str = "_shadow_soft",
        meta_key_postfix: str = "_shadow_params",
        allow_missing_keys: bool = False,
        prob: float = 1.0,
        **kwargs: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= float(prob) <= 1.0:
            raise ConfigError(f"shadow prob must be in [0, 1], got {prob!r}")
        RandomizableTransform.__init__(self, prob=float(prob))
        self.shadow = RandShadow(prob=1.0, **kwargs)
        self.mask_key_postfix = mask_key_postfix
        self.soft_key_postfix = soft_key_postfix
        self.meta_key_postfix = meta_key_postfix

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandShadowd:
        super().set_random_state(seed, state)
        self.shadow.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        first = True
        for key in self.key_iterator(d):
            x = _check_image(d[key], str(key))
            if self._do_transform:
                self.shadow._do_transform = True
                if first or self.shadow._keep is None or self.shadow._keep.shape != x.shape[-2:]:
                    self.shadow._draw(x)
                out, keep, soft = self.shadow(d[key], randomize=False)
            else:
                self.shadow._do_transform = False
                out, keep, soft = self.shadow(d[key], randomize=False)
            first = False
            d[key] = out
            d[f"{key}{self.mask_key_postfix}"] = keep
            d[f"{key}{self.soft_key_postfix}"] = soft
            d[f"{key}{self.meta_key_postfix}"] = _collate_safe(self.shadow.last_params)
        return d


class InferenceKeepMask(Transform):
    """The keep-mask of fine-tuning and inference (:func:`inference_keep_mask`) for a ``[C, H, W]`` image.

    Args:
        mode: ``"ones"`` (default) or ``"intensity_ramp"``.
    """

    def __init__(self, mode: str = "ones") -> None:
        if mode not in INFERENCE_MASK_MODES:
            raise ConfigError(f"inference keep-mask mode must be one of {INFERENCE_MASK_MODES}, got {mode!r}")
        self.mode = mode

    def __call__(self, img: Any) -> torch.Tensor:
        return inference_keep_mask(img, self.mode)


class InferenceKeepMaskd(MapTransform):
    """Dictionary version of :class:`InferenceKeepMask`: writes ``d[key + mask_key_postfix]`` (``[1, H, W]``).

    Args:
        keys: image keys.
        mode: ``"ones"`` (default) or ``"intensity_ramp"``.
        mask_key_postfix: postfix of the keep-mask key (the key :class:`RandShadowd` writes in training).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "ones",
        mask_key_postfix: str = "_shadow_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = InferenceKeepMask(mode)
        self.mask_key_postfix = mask_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.mask_key_postfix}"] = self.transform(d[key])
        return d


RandShadowD = RandShadowDict = RandShadowd
InferenceKeepMaskD = InferenceKeepMaskDict = InferenceKeepMaskd
