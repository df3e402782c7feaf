# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Overlays and figures (PNG, PIL only): grey and RGB display conversion, mask painting, multi-panel figures.

One home for every picture the package writes: the 4-panel evaluation overlays of the volume protocol, the
2-panel inference overlays, episode figures, and the RGB overlays of the 2D image tasks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from labelless.errors import DataError
from labelless.evaluation.metrics import binary_mask
from labelless.evaluation.results import OverlaySample
from labelless.utils import atomic_path

__all__ = [
    "TITLE_HEIGHT",
    "PRED_COLOR",
    "TRUTH_COLOR",
    "to_uint8",
    "rgb_to_uint8",
    "paint_mask",
    "grey_overlay",
    "rgb_overlay",
    "render_panels",
    "render_overlay",
    "write_episode_png",
    "write_inference_overlay",
    "safe_name",
]

TITLE_HEIGHT = 16
SUPPORT_COLOR = (60, 220, 60)
PRED_COLOR = (255, 60, 60)
TRUTH_COLOR = (60, 220, 60)
RGB_TRUTH_COLOR = (40, 230, 40)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------------- conversion
def to_uint8(image: Any, percentiles: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """Window a grey (or any single-channel) image to uint8 0..255 for display.

    Args:
        image: array or tensor of any shape; uint8 input is returned unchanged.
        percentiles: the window ``[lo, hi]`` as percentiles of the finite values (``(0, 100)``: min–max;
            ``(0.5, 99.5)``: robust to outliers, used for MR slices).

    Returns:
        uint8 array of the same shape; non-finite values and constant images map to 0.
    """
    a = _numpy(image)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo_p, hi_p = percentiles
    if (lo_p, hi_p) == (0.0, 100.0):
        lo, hi = float(a[finite].min()), float(a[finite].max())
    else:
        lo, hi = (float(v) for v in np.percentile(a[finite], [lo_p, hi_p]))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = np.where(finite, (a - lo) / (hi - lo), 0.0)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def rgb_to_uint8(image: Any) -> np.ndarray:
    """An RGB or grey image with a fixed value range (floats in [0, 1], or 0..255) as ``(H, W, 3)`` uint8.

    Accepts ``[3, H, W]``, ``[1, H, W]``, ``(H, W, 3)``, ``(H, W, 1)`` and ``(H, W)``; NaN becomes 0.

    Raises:
        DataError: any other shape.
    """
    a = _numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise DataError("overlay", f"expected an RGB or grey image, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint8:
        return a
    a = np.nan_to_num(a.astype(np.float64))
    if a.max() > 1.0:
        a = a / 255.0
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- painting
def paint_mask(
    rgb: np.ndarray,
    mask: Any,
    color: tuple[int, int, int],
    alpha: float = 0.3,
    fill: bool = True,
    thickness: int = 1,
) -> np.ndarray:
    """Paint a binary mask on a float ``(H, W, 3)`` image in place: a translucent fill and an opaque contour.

    Args:
        rgb: float64 ``(H, W, 3)`` image with values in 0..255 (modified and returned).
        mask: ``(H, W)`` or ``(1, H, W)`` binary mask (bool or 0/1).
        color: RGB colour.
        alpha: fill opacity.
        fill: paint the translucent fill (else the contour only).
        thickness: contour thickness in pixels (erosion iterations).

    Raises:
        DataError: a non-binary mask, or a mask of another size than the image.
    """
    m = binary_mask(mask, "overlay mask", squeeze=True)
    if m.shape != rgb.shape[:2]:
        raise DataError("overlay", f"mask shape {m.shape} differs from image shape {rgb.shape[:2]}")
    if m.any():
        col = np.asarray(color, dtype=np.float64)
        if fill:
            rgb[m] = (1 - alpha) * rgb[m] + alpha * col
        rgb[m & ~ndimage.binary_erosion(m, iterations=max(int(thickness), 1))] = col
    return rgb


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))


def grey_overlay(grey: Any, mask: Any | None, color: tuple[int, int, int], alpha: float = 0.3) -> Image.Image:
    """A grey image (windowed min–max, :func:`to_uint8`) with a mask painted in ``color``."""
    rgb = np.repeat(to_uint8(grey)[..., None], 3, axis=2).astype(np.float64)
    if mask is not None:
        paint_mask(rgb, np.asarray(mask).astype(bool), color, alpha)
    return _to_image(rgb)


def rgb_overlay(
    image: Any, truth: Any | None = None, prediction: Any | None = None, alpha: float = 0.35
) -> Image.Image:
    """An RGB overlay: the prediction as a translucent red area with a red contour, the ground truth as a green
    contour (contours thicken with the image size).

    Args:
        image: ``[3, H, W]`` or ``(H, W, 3)`` RGB (floats in [0, 1] or uint8), or ``(H, W)`` grey.
        truth: optional ``[H, W]`` (or ``[1, H, W]``) binary ground truth.
        prediction: optional binary prediction, same size.
        alpha: opacity of the prediction fill.

    Returns:
        a ``PIL.Image.Image`` (RGB) of the image size.
    """
    rgb = rgb_to_uint8(image).astype(np.float64)
    thickness = 1 + min(rgb.shape[:2]) // 256
    for mask, color, fill in ((prediction, PRED_COLOR, True), (truth, RGB_TRUTH_COLOR, False)):
        if mask is not None:
            paint_mask(rgb, mask, color, alpha, fill=fill, thickness=thickness)
    return _to_image(rgb)


# ---------------------------------------------------------------------------------------------------- figures
def render_panels(panels: Sequence[tuple[Image.Image, str]]) -> Image.Image:
    """Paste equally sized panels side by side under one title row each."""
    w, h = panels[0][0].size
    fig = Image.new("RGB", (len(panels) * w, h + TITLE_HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    for i, (img, title) in enumerate(panels):
        fig.paste(img, (i * w, TITLE_HEIGHT))
        draw.text((i * w + 2, 2), title, fill=(255, 255, 255), font=font)
    return fig


def render_overlay(sample: OverlaySample) -> Image.Image:
    """4-panel figure (support image + mask, query image, prediction overlay, truth overlay) with titles.

    Size: ``(4 W, H + TITLE_HEIGHT)`` for (H, W) slices. A missing support (scoring saved predictions) gives a
    black first panel.
    """
    q = np.asarray(sample.query_image)
    h, w = q.shape
    if sample.support_image is not None and np.asarray(sample.support_image).shape == (h, w):
        sup = grey_overlay(sample.support_image, sample.support_mask, SUPPORT_COLOR)
        sup_title = f"support {sample.support_pid} z{sample.support_z}"
    else:
        sup = Image.new("RGB", (w, h))
        sup_title = "support n/a"
    dice = "" if sample.dice is None else f" (scan Dice {100 * sample.dice:.1f}%)"
    panels = [
        (sup, sup_title),
        (grey_overlay(q, None, PRED_COLOR), f"query {sample.pid} z{sample.z}"),
        (grey_overlay(q, sample.prediction, PRED_COLOR), f"prediction{dice}"),
        (grey_overlay(q, sample.truth, TRUTH_COLOR), f"truth {sample.class_name}"),
    ]
    return render_panels(panels)


def safe_name(name: str) -> str:
    """A file-name-safe version of ``name`` (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def write_episode_png(episode: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a few-shot volume episode as a PNG: each support shot with its mask, then the query with its label, so
    pseudo-labels and augmentation can be checked by eye.

    Args:
        episode: dict with ``support_image`` [S, C, H, W], ``support_label`` [S, 1, H, W], ``query_image``
            [C, H, W], ``query_label`` [H, W] (tensors or arrays) and optional ``meta``.
        path: destination PNG (written atomically).
    """
    sup, msk = _numpy(episode["support_image"]), _numpy(episode["support_label"])
    meta = episode.get("meta") or {}
    tag = " ".join(f"{k}={v}" for k, v in meta.items() if k in ("pid", "z", "superpixel", "class_id"))
    panels = [(grey_overlay(sup[s, 0], msk[s, 0] > 0.5, SUPPORT_COLOR), f"support {s} {tag}") for s in range(len(sup))]
    query = _numpy(episode["query_image"])[0]
    panels.append((grey_overlay(query, _numpy(episode["query_label"]) == 1, TRUTH_COLOR), "query"))
    with atomic_path(path) as tmp:
        render_panels(panels).save(tmp, format="PNG")
    return Path(path)


def write_inference_overlay(
    image: np.ndarray, prediction: np.ndarray, out_dir: str | os.PathLike, stem: str, n: int = 1
) -> list[Path]:
    """Overlay PNGs of a predicted volume: the ``n`` slices with the largest predicted area (the middle slice when
    nothing is predicted), two panels each (query, prediction). Written atomically as ``<stem>_z<z>.png``.

    Args:
        image: (Z, H, W) query intensities.
        prediction: (Z, H, W) binary prediction.
        out_dir: destination folder.
        stem: file name stem (usually the query's).
        n: number of slices.
    """
    img, pred = np.asarray(image), np.asarray(prediction).astype(bool)
    area = pred.reshape(pred.shape[0], -1).sum(axis=1)
    order = [int(z) for z in np.argsort(-area, kind="stable")[: max(int(n), 0)] if area[z] > 0]
    if not order and n > 0:
        order = [pred.shape[0] // 2]
    paths = []
    for z in order:
        fig = render_panels(
            [
                (grey_overlay(img[z], None, PRED_COLOR), f"{stem} z{z}"),
                (grey_overlay(img[z], pred[z], PRED_COLOR), f"prediction ({int(area[z])} px)"),
            ]
        )
        p = Path(out_dir) / f"{safe_name(stem)}_z{z}.png"
        with atomic_path(p) as tmp:
            fig.save(tmp, format="PNG")
        paths.append(p)
    return paths
