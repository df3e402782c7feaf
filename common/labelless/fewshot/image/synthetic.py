# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Synthetic 2D data of the FSMS bundle: shape classes for meta-training and skin-lesion phantoms (fsms.md §1.2).

- :func:`write_shape_classes`: layout-A classes (``<class>/<id>.jpg`` + ``<class>/<id>.png``), one seeded draw of
  shape family, textures, distractors and illumination per class, and per-instance variation (reconstruction;
  our design, fsms.md §1.2).
- :func:`write_skin_phantoms`: a small dermoscopy-like target domain (skin-tone background with low-frequency
  texture and pores, one pigmented irregular lesion with a darker network and blotches and fuzzy borders, dark
  curved hairs on some images, vignetting): ``images/<id>.jpg`` + ``masks/<id>_segmentation.png``, the layout
  :class:`~labelless.data.images.ImageFolderPool` reads. It is the embedded default target domain; it is
  not a substitute for real dermoscopy.
- :func:`default_fsms_data`: both, generated once into the labelless cache.

Everything is deterministic for a seed (class ``c`` from the seed ``(seed, c)``, instance ``j`` from
``(seed, c, j)``); images are JPEG quality 95, masks PNG 0/255; every mask is non-empty at the 56×56 support grid;
files are written atomically and a ``manifest.json`` written last marks a complete output, which later calls reuse.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from labelless.data.images import mask_on_grid
from labelless.errors import ConfigError
from labelless.io.writers import write_image2d, write_jpeg
from labelless.paths import cache_root
from labelless.utils import write_json_atomic

__all__ = [
    "SHAPE_FAMILIES",
    "TEXTURE_KINDS",
    "SYNTHETIC_VERSION",
    "make_shape_class",
    "render_shape_instance",
    "make_skin_phantom",
    "write_shape_classes",
    "write_skin_phantoms",
    "default_fsms_data",
]

#: Bump when a generator changes so cached default data is regenerated.
SYNTHETIC_VERSION = 1
SHAPE_FAMILIES = ("ellipse", "rounded_rectangle", "star", "annulus", "blob")
TEXTURE_KINDS = ("flat", "stripes", "lowpass", "dots")
_MANIFEST = "manifest.json"
_GRID = 56  # support-mask grid at 224 (fsms.md §2.2); scaled with the image size
_MAX_TRIES = 20


def _rng(*seed: int) -> np.random.Generator:
    return np.random.default_rng([int(s) for s in seed])


def _check_size(size: int) -> int:
    size = int(size)
    if size < 32:
        raise ConfigError(f"size must be >= 32, got {size}")
    return size


def _grid_for(size: int) -> int:
    return max(1, round(size * _GRID / 224))


def _nonempty_on_grid(mask: np.ndarray, size: int) -> bool:
    return bool(mask_on_grid(torch.from_numpy(mask.astype(np.float32)), _grid_for(size)).any())


# ---------------------------------------------------------------------------------------------- shapes
def _draw_family_params(rng: np.random.Generator, family: str) -> dict[str, Any]:
    """Class-level parameters of a shape family (fsms.md §1.2 ranges)."""
    p: dict[str, Any] = {"family": family, "aspect": float(rng.uniform(0.3, 1.0))}
    if family == "rounded_rectangle":
        p["exponent"] = float(rng.uniform(4.0, 10.0))  # superellipse: a rectangle with rounded corners
    elif family == "star":
        p["spikes"] = int(rng.integers(5, 10))
        p["depth"] = float(rng.uniform(0.2, 0.6))
        p["aspect"] = float(rng.uniform(0.7, 1.0))
    elif family == "annulus":
        p["thickness"] = float(rng.uniform(0.2, 0.6))
    elif family == "blob":
        field = ndimage.gaussian_filter(rng.standard_normal((65, 65)), sigma=6.0, mode="reflect")
        field /= field.std() + 1e-8
        yy, xx = np.mgrid[-1.25:1.25:65j, -1.25:1.25:65j]
        p["template"] = (1.0 - (xx**2 + yy**2) + 0.45 * field).astype(np.float32)  # > 0 inside
    return p


def _inside(params: dict[str, Any], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of unit-frame coordinates (u, v) in a shape of the family."""
    fam, a = params["family"], params["aspect"]
    if fam == "ellipse":
        return u**2 + (v / a) ** 2 <= 1.0
    if fam == "rounded_rectangle":
        e = params["exponent"]
        return np.abs(u) ** e + np.abs(v / a) ** e <= 1.0
    if fam == "star":
        phi = np.arctan2(v, u)
        f = np.mod(params["spikes"] * phi / (2 * np.pi), 1.0)
        radius = 1.0 - params["depth"] + params["depth"] * np.abs(2.0 * f - 1.0)
        return np.sqrt(u**2 + (v / a) ** 2) <= radius
    if fam == "annulus":
        r2 = u**2 + (v / a) ** 2
        return (r2 <= 1.0) & (r2 >= (1.0 - params["thickness"]) ** 2)
    if fam == "blob":
        t = params["template"]
        n = t.shape[0]
        rows = (v + 1.25) / 2.5 * (n - 1)
        cols = (u + 1.25) / 2.5 * (n - 1)
        vals = ndimage.map_coordinates(t, [rows.ravel(), cols.ravel()], order=1, mode="constant", cval=-1.0)
        return vals.reshape(u.shape) > 0
    raise ConfigError(f"unknown shape family {fam!r}; known: {SHAPE_FAMILIES}")


def _unit_shape(
    params: dict[str, Any], theta: float, coefs: tuple[np.ndarray, np.ndarray], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Membership of image-frame offsets (x, y) in units of the shape scale: rotation by ``theta``, then the
    radius modulation ``1 + Σ_k a_k cos kφ + b_k sin kφ`` (k = 2..5)."""
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    xr, yr = c * x + s * y, -s * x + c * y
    phi = np.arctan2(yr, xr)
    modulation = np.ones_like(phi)
    for k, (ca, cb) in enumerate(zip(*coefs), start=2):
        modulation += np.float32(ca) * np.cos(k * phi) + np.float32(cb) * np.sin(k * phi)
    return _inside(params, xr / modulation, yr / modulation)


def _render(
    params: dict[str, Any], rng: np.random.Generator, size: int, area: float, wobble: float = 0.06
) -> np.ndarray:
    """A (size, size) bool mask of one instance: given area fraction, random rotation, position fully inside the
    image (2-pixel margin) and a smooth boundary perturbation (low-order Fourier modulation of the radius).

    The unit shape (scale 1) is measured once on a coarse grid (area, bounding box); the scale follows from the
    requested area (area ∝ scale²), shrunk if the bounding box would not fit; then the shape is drawn once."""
    theta = float(rng.uniform(0.0, 2 * np.pi))
    ks = np.arange(2, 6)
    coefs = (rng.uniform(-1, 1, ks.size) * wobble / ks, rng.uniform(-1, 1, ks.size) * wobble / ks)
    n, half = 160, 1.8  # coarse grid over [-1.8, 1.8]² unit coordinates
    cell = 2 * half / n
    axis = (np.arange(n, dtype=np.float32) + 0.5) * cell - half
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    unit = _unit_shape(params, theta, coefs, xx, yy)
    if not unit.any():
        return np.zeros((size, size), bool)
    rows, cols = np.nonzero(unit.any(axis=1))[0], np.nonzero(unit.any(axis=0))[0]
    y0, y1 = axis[rows[0]] - cell, axis[rows[-1]] + cell  # bounding box in unit coordinates (one cell margin)
    x0, x1 = axis[cols[0]] - cell, axis[cols[-1]] + cell
    scale = float(np.sqrt(area * size * size / (unit.sum() * cell * cell)))
    scale = min(scale, (size - 5) / float(y1 - y0), (size - 5) / float(x1 - x0))
    lo_y, lo_x = 2 - float(y0) * scale, 2 - float(x0) * scale
    cy = rng.uniform(lo_y, max(lo_y, size - 3 - float(y1) * scale))
    cx = rng.uniform(lo_x, max(lo_x, size - 3 - float(x1) * scale))
    py, px = np.mgrid[0:size, 0:size].astype(np.float32)
    return _unit_shape(
        params, theta, coefs, (px - np.float32(cx)) / np.float32(scale), (py - np.float32(cy)) / np.float32(scale)
    )


def _low_pass(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """A (size, size) smooth noise field with zero mean and unit standard deviation (coarse grid, upsampled)."""
    step = max(1, int(sigma // 2))
    n = size // step + 2
    coarse = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma=sigma / step, mode="wrap")
    field = ndimage.zoom(coarse, step, order=1)[:size, :size] if step > 1 else coarse[:size, :size]
    field = field - field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _draw_texture(rng: np.random.Generator, avoid: np.ndarray | None = None) -> dict[str, Any]:
    """Class-level texture: base colour (RGB distance >= 0.25 from ``avoid``) and kind with its parameters."""
    for _ in range(1000):
        colour = rng.uniform(0.05, 0.95, 3)
        if avoid is None or np.linalg.norm(colour - avoid) >= 0.25:
            break
    kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    t: dict[str, Any] = {"kind": kind, "colour": colour, "noise": float(rng.uniform(0.01, 0.04))}
    if kind == "stripes":
        t.update(
            freq=float(rng.uniform(4.0, 16.0)), angle=float(rng.uniform(0, np.pi)), amp=float(rng.uniform(0.08, 0.2))
        )
    elif kind == "lowpass":
        t.update(sigma=float(rng.uniform(3.0, 12.0)), amp=float(rng.uniform(0.06, 0.15)), tint=rng.uniform(0.5, 1.0, 3))
    elif kind == "dots":
        t.update(radius=float(rng.uniform(1.5, 4.0)), density=float(rng.uniform(0.002, 0.006)),
                 dot_shift=rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.3, 3))  # fmt: skip
    return t


def _paint_texture(t: dict[str, Any], rng: np.random.Generator, size: int, jitter: np.ndarray) -> np.ndarray:
    """(size, size, 3) texture of one instance (random phase / noise realisation, colour jitter)."""
    colour = np.clip(t["colour"] + jitter, 0.0, 1.0).astype(np.float32)
    img = np.broadcast_to(colour, (size, size, 3)).copy()
    kind = t["kind"]
    if kind == "stripes":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * t["freq"] * (xx * np.cos(t["angle"]) + yy * np.sin(t["angle"])) + phase)
        img += (t["amp"] * wave)[..., None]
    elif kind == "lowpass":
        img += (t["amp"] * _low_pass(rng, size, t["sigma"]))[..., None] * t["tint"][None, None, :]
    elif kind == "dots":
        n = max(1, int(t["density"] * size * size))
        centres = np.zeros((size, size), np.float32)
        centres[rng.integers(0, size, n), rng.integers(0, size, n)] = 1.0
        dots = ndimage.gaussian_filter(centres, sigma=t["radius"] / 1.5)
        dots = np.clip(dots / (dots.max() + 1e-8) * 2.5, 0.0, 1.0)
        img += dots[..., None] * t["dot_shift"][None, None, :].astype(np.float32)
    img += rng.normal(0.0, t["noise"], img.shape).astype(np.float32)
    return img


def make_shape_class(seed: int | Sequence[int]) -> dict[str, Any]:
    """Draw the definition of one synthetic class (fsms.md §1.2).

    Args:
        seed: the class seed, e.g. ``(base_seed, class_index)``.

    Returns:
        dict with ``shape`` (family parameters), ``foreground`` and ``background`` textures (base colours at an RGB
        distance >= 0.25), ``distractors`` (0–2 family parameter dicts of other families, with their texture) and
        ``illumination`` (gradient strength, 0 for none).
    """
    rng = _rng(*(seed if isinstance(seed, Sequence) else (seed,)))
    family = SHAPE_FAMILIES[int(rng.integers(len(SHAPE_FAMILIES)))]
    shape = _draw_family_params(rng, family)
    background = _draw_texture(rng)
    foreground = _draw_texture(rng, avoid=background["colour"])
    others = [f for f in SHAPE_FAMILIES if f != family]
    n_distractors = int(rng.integers(0, 3))
    distractors = []
    for _ in range(n_distractors):
        d = _draw_family_params(rng, others[int(rng.integers(len(others)))])
        d["texture"] = _draw_texture(rng, avoid=foreground["colour"])
        distractors.append(d)
    illumination = float(rng.uniform(0.1, 0.35)) if rng.uniform() < 0.5 else 0.0
    return {"shape": shape, "foreground": foreground, "background": background, "distractors": distractors,
            "illumination": illumination}  # fmt: skip


def render_shape_instance(
    cls: dict[str, Any], seed: int | Sequence[int], size: int = 224
) -> tuple[np.ndarray, np.ndarray]:
    """One instance of a class from :func:`make_shape_class`.

    Per instance: object area fraction U(0.05, 0.5), position fully inside the image, rotation U(0, 2π), a smooth
    boundary perturbation, colour jitter U(-0.05, 0.05) per channel; distractors (area U(0.02, 0.08)) lie under
    the object and are not part of the mask. The mask is redrawn (next sub-seed) in the rare case it is empty at
    the support grid (56×56 at 224).

    Args:
        cls: class definition.
        seed: instance seed, e.g. ``(base_seed, class_index, instance_index)``.
        size: image size.

    Returns:
        (image (size, size, 3) uint8 RGB, mask (size, size) uint8 0/255).
    """
    size = _check_size(size)
    base = tuple(seed) if isinstance(seed, Sequence) else (seed,)
    for attempt in range(_MAX_TRIES):
        rng = _rng(*base, attempt)
        mask = _render(cls["shape"], rng, size, float(rng.uniform(0.05, 0.5)))
        if _nonempty_on_grid(mask, size):
            break
    else:  # pragma: no cover - never observed; a centred ellipse guarantees a non-empty mask
        mask = _render({"family": "ellipse", "aspect": 1.0}, rng, size, 0.2)
    jitter_bg, jitter_fg = rng.uniform(-0.05, 0.05, 3), rng.uniform(-0.05, 0.05, 3)
    img = _paint_texture(cls["background"], rng, size, jitter_bg)
    for d in cls["distractors"]:
        dm = _render(d, rng, size, float(rng.uniform(0.02, 0.08)))
        alpha = ndimage.gaussian_filter(dm.astype(np.float32), 0.7)[..., None]
        img = img * (1 - alpha) + _paint_texture(d["texture"], rng, size, rng.uniform(-0.05, 0.05, 3)) * alpha
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)[..., None]
    img = img * (1 - alpha) + _paint_texture(cls["foreground"], rng, size, jitter_fg) * alpha
    if cls["illumination"] > 0:
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
        img = img * (1.0 + cls["illumination"] * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None]
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


# ---------------------------------------------------------------------------------------------- skin phantoms
_SKIN_TONES = np.array(
    [[0.93, 0.78, 0.72], [0.89, 0.70, 0.62], [0.84, 0.62, 0.52], [0.76, 0.55, 0.45], [0.62, 0.44, 0.34]], np.float32
)


def _draw_curve(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points of a quadratic Bézier curve crossing the image (row, col)."""
    side = rng.uniform(0, 2 * np.pi)
    start = size / 2 + 0.75 * size * np.array([np.sin(side), np.cos(side)])
    end = size / 2 - 0.75 * size * np.array(
        [np.sin(side + rng.uniform(-0.8, 0.8)), np.cos(side + rng.uniform(-0.8, 0.8))]
    )
    ctrl = rng.uniform(0.1, 0.9, 2) * size
    t = np.linspace(0, 1, 4 * size)[:, None]
    pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end
    return pts[:, 0], pts[:, 1]


def make_skin_phantom(seed: int | Sequence[int], size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like phantom (reconstruction; our design).

    Skin-tone background with low-frequency texture and pores; one pigmented irregular lesion (area fraction
    U(0.06, 0.4), irregular boundary) with a darker pigment network and blotches and a fuzzy border; dark curved
    hairs on about half of the images; vignetting (a dark circular field of view on some).

    Args:
        seed: image seed.
        size: image size.

    Returns:
        (image (size, size, 3) uint8 RGB, mask (size, size) uint8 0/255 of the lesion; never empty at the grid).
    """
    size = _check_size(size)
    base = tuple(seed) if isinstance(seed, Sequence) else (seed,)
    rng = _rng(*base)
    tone = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))] + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    img = np.broadcast_to(tone, (size, size, 3)).copy()
    img *= (1.0 + 0.05 * _low_pass(rng, size, size / 10))[..., None]
    img += (0.02 * _low_pass(rng, size, 1.5))[..., None] * np.array([1.0, 0.8, 0.8], np.float32)
    pores = np.zeros((size, size), np.float32)
    n_pores = int(rng.integers(size * size // 400, size * size // 150))
    pores[rng.integers(0, size, n_pores), rng.integers(0, size, n_pores)] = 1.0
    pores = ndimage.gaussian_filter(pores, 0.8)
    img *= (1.0 - 0.08 * np.clip(pores / (pores.max() + 1e-8), 0, 1))[..., None]
    # lesion
    lesion = {"family": "blob", "aspect": 1.0}
    field = ndimage.gaussian_filter(rng.standard_normal((65, 65)), sigma=7.0, mode="reflect")
    yy, xx = np.mgrid[-1.25:1.25:65j, -1.25:1.25:65j]
    lesion["template"] = (1.0 - (xx**2 + yy**2) * rng.uniform(0.8, 1.2) + 0.35 * field / (field.std() + 1e-8)).astype(
        np.float32
    )
    for _ in range(_MAX_TRIES):
        mask = _render(lesion, rng, size, float(rng.uniform(0.06, 0.4)), wobble=0.12)
        if _nonempty_on_grid(mask, size):
            break
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:  # one lesion: keep the largest component
        mask = labels == (1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1)))))
    brown = np.array([0.50, 0.32, 0.22], np.float32) * rng.uniform(0.55, 1.05) + rng.uniform(-0.04, 0.04, 3)
    dist_in = ndimage.distance_transform_edt(mask)
    depth = np.clip(dist_in / (0.25 * max(float(dist_in.max()), 1.0)), 0, 1)  # darker towards the centre
    lesion_rgb = brown[None, None, :] * (1.05 - 0.25 * depth)[..., None]
    band = _low_pass(rng, size, 1.2) - _low_pass(rng, size, 3.0)  # band-pass noise: network of thin dark lines
    network = np.clip(1.0 - np.abs(band) / 0.35, 0, 1) * rng.uniform(0.15, 0.35)
    blotches = np.clip(_low_pass(rng, size, size / 16) - 0.8, 0, None) * rng.uniform(0.2, 0.4)
    lesion_rgb = lesion_rgb * (1.0 - network - blotches)[..., None]
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(1.5, 4.0))
    alpha = np.clip(alpha * (0.8 + 0.2 * depth), 0, 1)[..., None] * rng.uniform(0.75, 0.95)
    img = img * (1 - alpha) + lesion_rgb * alpha
    # hairs
    if rng.uniform() < 0.5:
        hair = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(1, 7))):
            r, c = _draw_curve(rng, size)
            ok = (r >= 0) & (r < size) & (c >= 0) & (c < size)
            stroke = np.zeros((size, size), np.float32)
            stroke[r[ok].astype(int), c[ok].astype(int)] = 1.0
            width = rng.uniform(0.5, 1.1)
            stroke = ndimage.gaussian_filter(stroke, width)
            hair = np.maximum(hair, np.clip(stroke / (stroke.max() + 1e-8) * 2.0, 0, 1))
        hair_rgb = np.array([0.12, 0.08, 0.06], np.float32) * rng.uniform(0.5, 1.5)
        img = img * (1 - hair[..., None]) + hair_rgb * hair[..., None]
    # vignetting (and a dark circular field of view on some images)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    r2 = (xx**2 + yy**2) / 0.5
    img *= (1.0 - rng.uniform(0.15, 0.4) * r2)[..., None]
    if rng.uniform() < 0.3:
        fov = 1.0 / (1.0 + np.exp((np.sqrt(r2) - rng.uniform(0.92, 1.0)) / 0.02))
        img *= fov[..., None]
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


# ---------------------------------------------------------------------------------------------- writers
def _manifest_complete(root: Path, params: dict[str, Any]) -> bool:
    """Whether ``root`` holds a complete output written with ``params`` (manifest present, same params, all files)."""
    import json

    mf = root / _MANIFEST
    if not mf.is_file():
        return False
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params or manifest.get("version") != SYNTHETIC_VERSION:
        return False
    return all((root / f).is_file() for f in manifest.get("files", []))


def _class_name(index: int, n_classes: int) -> str:
    return f"shape_{index:0{max(3, len(str(n_classes - 1)))}d}"


def write_shape_classes(
    out_dir: str | os.PathLike, n_classes: int = 200, n_instances: int = 10, size: int = 224, seed: int = 0
) -> Path:
    """Write synthetic shape classes in layout A (fsms.md §1.2).

    Class ``c`` (folder ``shape_000`` ...) is :func:`make_shape_class` of ``(seed, c)``; instance ``j`` (files
    ``<j+1>.jpg``, JPEG quality 95, and ``<j+1>.png``, 0/255) is :func:`render_shape_instance` of ``(seed, c, j)``.
    An output folder whose ``manifest.json`` records the same parameters and whose files all exist is reused as is.

    Args:
        out_dir: destination folder (created if needed).
        n_classes: number of classes.
        n_instances: instances per class.
        size: image size.
        seed: base seed.

    Returns:
        The output folder.

    Raises:
        ConfigError: ``n_classes`` or ``n_instances`` < 1, ``size`` < 32.
    """
    n_classes, n_instances, size, seed = int(n_classes), int(n_instances), _check_size(size), int(seed)
    if n_classes < 1 or n_instances < 1:
        raise ConfigError(f"n_classes and n_instances must be >= 1, got {n_classes}, {n_instances}")
    root = Path(out_dir)
    params = {"kind": "shape_classes", "n_classes": n_classes, "n_instances": n_instances, "size": size, "seed": seed}
    if _manifest_complete(root, params):
        return root
    root.mkdir(parents=True, exist_ok=True)
    files, classes = [], []
    for c in range(n_classes):
        name = _class_name(c, n_classes)
        cls = make_shape_class((seed, c))
        classes.append({"name": name, "family": cls["shape"]["family"], "foreground": cls["foreground"]["kind"],
                        "background": cls["background"]["kind"], "distractors": len(cls["distractors"])})  # fmt: skip
        for j in range(n_instances):
            image, mask = render_shape_instance(cls, (seed, c, j), size)
            write_jpeg(image, root / name / f"{j + 1}.jpg")
            write_image2d(mask, root / name / f"{j + 1}.png", dtype=np.uint8)
            files += [f"{name}/{j + 1}.jpg", f"{name}/{j + 1}.png"]
    write_json_atomic(
        root / _MANIFEST, {"version": SYNTHETIC_VERSION, "params": params, "classes": classes, "files": files}
    )
    return root


def write_skin_phantoms(out_dir: str | os.PathLike, n_images: int = 40, size: int = 224, seed: int = 0) -> Path:
    """Write the synthetic dermoscopy-like target domain: ``images/SKIN_<i>.jpg`` + ``masks/SKIN_<i>_segmentation.png``.

    Image ``i`` is :func:`make_skin_phantom` of ``(seed, i)``; JPEG quality 95, masks 0/255. Read it with
    ``ImageFolderPool(out / "images", masks=out / "masks")``. A complete output (manifest) is reused.

    Args:
        out_dir: destination folder.
        n_images: number of images.
        size: image size.
        seed: base seed.

    Returns:
        The output folder.

    Raises:
        ConfigError: ``n_images`` < 1, ``size`` < 32.
    """
    n_images, size, seed = int(n_images), _check_size(size), int(seed)
    if n_images < 1:
        raise ConfigError(f"n_images must be >= 1, got {n_images}")
    root = Path(out_dir)
    params = {"kind": "skin_phantoms", "n_images": n_images, "size": size, "seed": seed}
    if _manifest_complete(root, params):
        return root
    files = []
    for i in range(n_images):
        pid = f"SKIN_{i:04d}"
        image, mask = make_skin_phantom((seed, i), size)
        write_jpeg(image, root / "images" / f"{pid}.jpg")
        write_image2d(mask, root / "masks" / f"{pid}_segmentation.png", dtype=np.uint8)
        files += [f"images/{pid}.jpg", f"masks/{pid}_segmentation.png"]
    write_json_atomic(root / _MANIFEST, {"version": SYNTHETIC_VERSION, "params": params, "files": files})
    return root


def _cached(dest: Path, writer, **kwargs) -> Path:
    """Write into a temporary sibling folder and rename into place (concurrent callers never see partial data)."""
    if (dest / _MANIFEST).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o755)
    try:
        writer(tmp, **kwargs)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / _MANIFEST).is_file():  # another process finished first: use its copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def default_fsms_data(
    cache_dir: str | os.PathLike | None = None,
    n_classes: int = 40,
    n_instances: int = 6,
    n_skin: int = 40,
    size: int = 224,
    seed: int = 0,
) -> dict[str, Path]:
    """The embedded default data of the FSMS bundle, generated once and cached.

    Folders ``<cache>/shapes-v<V>-c<n>-i<n>-s<size>-seed<seed>`` and ``<cache>/skin-v<V>-n<n>-s<size>-seed<seed>``
    under ``cache_dir`` (default ``<labelless cache>/fsms``, see :func:`labelless.data.phantoms.cache_root`).

    Args:
        cache_dir: cache folder.
        n_classes: synthetic classes (meta-training).
        n_instances: instances per class.
        n_skin: skin phantoms (target domain).
        size: image size.
        seed: base seed.

    Returns:
        ``{"classes": shape-class root (layout A), "skin": skin phantom root (images/, masks/)}``.
    """
    base = Path(cache_dir) if cache_dir is not None else cache_root() / "fsms"
    v = SYNTHETIC_VERSION
    classes = _cached(
        base / f"shapes-v{v}-c{int(n_classes)}-i{int(n_instances)}-s{int(size)}-seed{int(seed)}",
        write_shape_classes, n_classes=n_classes, n_instances=n_instances, size=size, seed=seed,
    )  # fmt: skip
    skin = _cached(
        base / f"skin-v{v}-n{int(n_skin)}-s{int(size)}-seed{int(seed)}", write_skin_phantoms,
        n_images=n_skin, size=size, seed=seed,
    )  # fmt: skip
    return {"classes": classes, "skin": skin}
