# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""HC18 beyond segmentation: the head circumference in mm from an ellipse fitted to a (predicted) head mask.

- :class:`Ellipse`: centre ``(cx, cy)`` (x = column, y = row), semi-axes ``a ≥ b`` and ``angle`` (radians, of the
  ``a`` axis, measured from the +x (column) axis towards the +y (row, downwards) axis, in ``[0, π)``).
- :func:`fit_ellipse`: the ellipse of a binary mask's **largest connected component** (holes filled).

  - ``method="contour"`` (default, the HC18 practice of fitting an ellipse to the head outline): the sub-pixel outline
    of the component (``skimage.measure.find_contours`` at level 0.5, i.e. through the midpoints between inside and
    outside pixel centres) is fitted with a direct least-squares conic fit constrained to ellipses (Fitzgibbon et al.
    1999, in the numerically stable form of Halíř & Flusser 1998). A degenerate fit falls back to the moments.
  - ``method="moments"``: the ellipse with the component's area centroid and second moments (each pixel a unit
    square, so its own variance 1/12 is added); exact for a filled ellipse, a little more sensitive to blobs stuck to
    the head.

- :func:`head_circumference_mm`: the mask may be on the network grid (e.g. 256×256) while the pixel size belongs to
  the original image (e.g. 800×540). Nothing is resampled: the outline points (or the moments) are mapped
  **exactly** to the original grid with the pixel-centre-aligned scale ``x' = (x + 0.5)·W/w − 0.5`` (same for y), then
  to mm with the pixel size, and the ellipse is fitted there (an ellipse stays an ellipse under a non-uniform scale,
  so this is the ellipse of the mask resized to the original grid, without the resize's staircase).
- :func:`ellipse_circumference`: Ramanujan's second approximation ``π(a + b)(1 + 3h / (10 + √(4 − 3h)))`` with
  ``h = ((a − b) / (a + b))²`` (relative error < 1e-9 for the eccentricities of heads).
- :func:`hc_errors`: per-image differences and the HC18 challenge measure (mean absolute difference in mm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from labelless.errors import ConfigError, DataError

__all__ = [
    "ELLIPSE_FIT_METHODS",
    "Ellipse",
    "fit_ellipse",
    "fit_ellipse_points",
    "ellipse_mask",
    "ellipse_circumference",
    "head_circumference_mm",
    "hc_errors",
]

#: Ellipse fitting methods of :func:`fit_ellipse`.
ELLIPSE_FIT_METHODS = ("contour", "moments")


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in image coordinates (x = column, y = row, in pixels or mm).

    Args:
        cx, cy: centre.
        a, b: semi-axes, ``a >= b``.
        angle: direction of the ``a`` axis in radians from +x towards +y (rows grow downwards), in ``[0, π)``.
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float

    @property
    def circumference(self) -> float:
        """Perimeter (Ramanujan II)."""
        return float(ellipse_circumference(self.a, self.b))

    @property
    def area(self) -> float:
        """Area ``π a b``."""
        return float(math.pi * self.a * self.b)

    def as_dict(self) -> dict[str, float]:
        """JSON-safe dict of the parameters."""
        return {k: float(v) for k, v in asdict(self).items()}


def _normalised(cx: float, cy: float, a: float, b: float, angle: float) -> Ellipse:
    """An :class:`Ellipse` with ``a >= b`` and the angle in ``[0, π)``."""
    if b > a:
        a, b, angle = b, a, angle + math.pi / 2
    return Ellipse(float(cx), float(cy), float(a), float(b), float(angle % math.pi))


def ellipse_circumference(a: float | np.ndarray, b: float | np.ndarray) -> float | np.ndarray:
    """Perimeter of the ellipse with semi-axes ``a`` and ``b`` (Ramanujan's second approximation).

    Examples::

        ellipse_circumference(1.0, 1.0)   # 2π
        ellipse_circumference(100, 60)    # 510.5...
    """
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = a_arr + b_arr
    h = np.divide((a_arr - b_arr) ** 2, s**2, out=np.zeros_like(s), where=s > 0)
    out = math.pi * s * (1.0 + 3.0 * h / (10.0 + np.sqrt(4.0 - 3.0 * h)))
    return float(out) if out.ndim == 0 else out


def ellipse_mask(shape: Sequence[int], ellipse: Ellipse) -> np.ndarray:
    """(H, W) bool mask of the pixels whose centres lie inside ``ellipse`` (pixel coordinates)."""
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    c, s = math.cos(ellipse.angle), math.sin(ellipse.angle)
    dx, dy = xx - ellipse.cx, yy - ellipse.cy
    u = (dx * c + dy * s) / max(ellipse.a, 1e-12)
    v = (-dx * s + dy * c) / max(ellipse.b, 1e-12)
    return u * u + v * v <= 1.0


def fit_ellipse_points(points: np.ndarray) -> Ellipse | None:
    """Direct least-squares ellipse fit (Fitzgibbon / Halíř–Flusser) of (N, 2) ``(x, y)`` points.

    Returns:
        the ellipse, or ``None`` with fewer than 6 distinct points or when the best conic is not an ellipse.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(np.unique(pts, axis=0)) < 6:
        return None
    mean = pts.mean(axis=0)
    scale = float(np.sqrt(((pts - mean) ** 2).sum(axis=1).mean()))
    if scale <= 0:
        return None
    x, y = ((pts - mean) / scale).T
    d1 = np.stack([x * x, x * y, y * y], axis=1)
    d2 = np.stack([x, y, np.ones_like(x)], axis=1)
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        return None
    m = s1 + s2 @ t
    m = np.stack([m[2] / 2.0, -m[1], m[0] / 2.0])  # inverse of the constraint matrix times m
    try:
        _, vecs = np.linalg.eig(m)
    except np.linalg.LinAlgError:
        return None
    vecs = np.real(vecs)
    cond = 4.0 * vecs[0] * vecs[2] - vecs[1] ** 2
    ok = np.flatnonzero(cond > 0)
    if len(ok) == 0:
        return None
    a1 = vecs[:, ok[np.argmax(cond[ok])]]
    A, B, C = a1
    D, E, F = t @ a1
    q = np.array([[A, B / 2.0], [B / 2.0, C]])
    try:
        x0, y0 = np.linalg.solve(2.0 * q, [-D, -E])
    except np.linalg.LinAlgError:
        return None
    f0 = A * x0 * x0 + B * x0 * y0 + C * y0 * y0 + D * x0 + E * y0 + F
    lam, vec = np.linalg.eigh(q)
    if not (np.all(lam * -f0 > 0) and np.all(np.isfinite(lam))):
        return None
    axes = np.sqrt(-f0 / lam)  # eigh sorts lam ascending: axes[0] is the larger semi-axis
    angle = math.atan2(vec[1, 0], vec[0, 0])
    return _normalised(x0 * scale + mean[0], y0 * scale + mean[1], axes[0] * scale, axes[1] * scale, angle)


def _largest_component(mask: np.ndarray | object) -> np.ndarray | None:
    """The largest 8-connected component of a binary mask, holes filled; ``None`` when empty."""
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    m = np.squeeze(m)
    if m.ndim != 2:
        raise DataError(None, f"an ellipse is fitted to a 2D mask, got shape {np.shape(mask)}")
    m = m > 0.5 if m.dtype.kind == "f" else m > 0
    lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    return ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))


def _outline(component: np.ndarray) -> np.ndarray:
    """(N, 2) ``(x, y)`` points of the component's sub-pixel outline (the longest level-0.5 contour)."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(component.astype(np.float64), 1), 0.5)
    best = max(contours, key=len)
    return np.stack([best[:, 1] - 1.0, best[:, 0] - 1.0], axis=1)


def _moments_ellipse(component: np.ndarray, sx: float, sy: float, ox: float, oy: float) -> Ellipse:
    """Ellipse with the component's centroid and second moments after the map ``x' = sx·x + ox``, ``y' = sy·y + oy``."""
    yy, xx = np.nonzero(component)
    x, y = xx.astype(np.float64), yy.astype(np.float64)
    cov = np.cov(np.stack([x, y]), bias=True) if len(x) > 1 else np.zeros((2, 2))
    cov = cov + np.eye(2) / 12.0  # each pixel is a unit square
    d = np.diag([sx, sy])
    cov = d @ cov @ d
    lam, vec = np.linalg.eigh(cov)
    axes = 2.0 * np.sqrt(np.clip(lam, 0.0, None))  # uniform filled ellipse: variance along an axis = semi-axis² / 4
    angle = math.atan2(vec[1, 1], vec[0, 1])
    return _normalised(sx * x.mean() + ox, sy * y.mean() + oy, axes[1], axes[0], angle)


def _fit(
    mask: np.ndarray,
    method: str,
    original_size: Sequence[int] | None,
    spacing: tuple[float, float],
) -> Ellipse | None:
    """Fit in output coordinates: pixel-centre-aligned scale to ``original_size``, then ``spacing`` (sy, sx)."""
    if method not in ELLIPSE_FIT_METHODS:
        raise ConfigError(f"unknown ellipse fit method {method!r}; expected one of {ELLIPSE_FIT_METHODS}")
    comp = _largest_component(mask)
    if comp is None:
        return None
    h, w = comp.shape
    oh, ow = (h, w) if original_size is None else (int(original_size[0]), int(original_size[1]))
    if oh < 1 or ow < 1:
        raise ConfigError(f"original_size must be positive (H, W), got {original_size!r}")
    fy, fx = oh / h, ow / w
    sy, sx = float(spacing[0]), float(spacing[1])
    # x' = ((x + 0.5)·fx − 0.5)·sx = x·fx·sx + (0.5·fx − 0.5)·sx
    kx, ox = fx * sx, (0.5 * fx - 0.5) * sx
    ky, oy = fy * sy, (0.5 * fy - 0.5) * sy
    if method == "contour":
        pts = _outline(comp)
        fitted = fit_ellipse_points(np.stack([pts[:, 0] * kx + ox, pts[:, 1] * ky + oy], axis=1))
        if fitted is not None:
            return fitted
    return _moments_ellipse(comp, kx, ky, ox, oy)


def fit_ellipse(
    mask: np.ndarray, method: str = "contour", original_size: Sequence[int] | None = None
) -> Ellipse | None:
    """The ellipse of a binary mask's largest connected component (holes filled).

    Args:
        mask: (H, W) mask (bool, 0/1, 0/255 or probabilities thresholded at 0.5; a torch tensor works too; leading
            singleton dimensions are squeezed).
        method: ``"contour"`` (least-squares fit to the sub-pixel outline; falls back to the moments when the fit is
            degenerate) or ``"moments"``.
        original_size: (H, W) of the grid to express the ellipse in when the mask is on another grid (pixel-centre
            aligned scale); ``None``: the mask's own grid.

    Returns:
        the ellipse in pixels of that grid, or ``None`` for an empty mask.

    Raises:
        ConfigError: unknown method. DataError: the mask is not 2D.
    """
    return _fit(mask, method, original_size, (1.0, 1.0))


def head_circumference_mm(
    mask: np.ndarray,
    pixel_size: float | Sequence[float],
    original_size: Sequence[int] | None = None,
    method: str = "contour",
) -> float:
    """Head circumference in mm of the ellipse fitted to ``mask`` (HC18).

    Args:
        mask: (H, W) head mask on any grid (e.g. the 256×256 network grid).
        pixel_size: mm per pixel of the **original** image (HC18's ``pixel size(mm)``), or ``(row, col)`` sizes.
        original_size: (H, W) of the original image when ``mask`` is on another grid; ``None``: the mask is on the
            original grid.
        method: see :func:`fit_ellipse`.

    Returns:
        the circumference in mm, ``nan`` for an empty mask.

    Raises:
        ConfigError: non-positive pixel size, unknown method.
    """
    ps = np.atleast_1d(np.asarray(pixel_size, dtype=np.float64)).ravel()
    if ps.size not in (1, 2) or not np.all(np.isfinite(ps)) or np.any(ps <= 0):
        raise ConfigError(f"pixel_size must be a positive number or (row, col) pair, got {pixel_size!r}")
    sy, sx = (float(ps[0]), float(ps[0])) if ps.size == 1 else (float(ps[0]), float(ps[1]))
    fitted = _fit(mask, method, original_size, (sy, sx))
    return float("nan") if fitted is None else fitted.circumference


def hc_errors(
    pred_mm: Sequence[float] | np.ndarray,
    ref_mm: Sequence[float] | np.ndarray,
    names: Sequence[str] | None = None,
) -> dict:
    """Head-circumference errors (HC18 challenge measures).

    Args:
        pred_mm: predicted HC per image (``nan`` where no ellipse could be fitted).
        ref_mm: reference HC per image.
        names: image names, for the per-image records.

    Returns:
        ``{"n", "n_failed", "mean_abs_diff_mm" (the HC18 ranking measure), "std_abs_diff_mm", "mean_diff_mm",
        "std_diff_mm", "per_image": [{"name", "pred_mm", "ref_mm", "diff_mm", "abs_diff_mm"}]}``; differences are
        ``pred − ref``. Failed images (non-finite prediction) are counted in ``n_failed`` and left out of the means
        (their differences are ``None``); with no valid image the means are ``None``.

    Raises:
        DataError: lengths differ, or a reference is not finite.
    """
    pred = np.asarray(pred_mm, dtype=np.float64).ravel()
    ref = np.asarray(ref_mm, dtype=np.float64).ravel()
    if pred.shape != ref.shape or (names is not None and len(names) != len(pred)):
        raise DataError(None, f"{len(pred)} predictions, {len(ref)} references and names of another length")
    if not np.all(np.isfinite(ref)):
        raise DataError(None, "a reference head circumference is missing or not finite")
    ok = np.isfinite(pred)
    diff = pred - ref
    per_image = []
    for i in range(len(pred)):
        rec = {
            "name": str(names[i]) if names is not None else str(i),
            "pred_mm": float(pred[i]) if ok[i] else None,
            "ref_mm": float(ref[i]),
            "diff_mm": float(diff[i]) if ok[i] else None,
            "abs_diff_mm": float(abs(diff[i])) if ok[i] else None,
        }
        per_image.append(rec)
    d = diff[ok]

    def stat(v: np.ndarray, f) -> float | None:
        return float(f(v)) if v.size else None

    return {
        "n": int(len(pred)),
        "n_failed": int((~ok).sum()),
        "mean_abs_diff_mm": stat(np.abs(d), np.mean),
        "std_abs_diff_mm": stat(np.abs(d), np.std),
        "mean_diff_mm": stat(d, np.mean),
        "std_diff_mm": stat(d, np.std),
        "per_image": per_image,
    }
