# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The embedded synthetic ultrasound set of the semi-supervised task (used when the user gives no dataset).

Two kinds of B-mode-like phantoms (:func:`make_ultrasound_phantom`):

- ``"head"`` (HC18-like fetal head): a sector (fan) field of view whose apex lies above the image (black outside the
  fan), tissue echo with smoothed Rayleigh speckle and depth attenuation, dark amniotic fluid, a bright uterine wall
  band, and a fetal head: a bright elliptical skull ring (brighter where the beam meets it head-on) around a darker
  brain with a faint midline echo. The mask is the filled ellipse (outer skull edge), as in HC18.
- ``"nodule"`` (thyroid-like, full frame, no fan): a fine homogeneous parenchyma texture under a darker muscle band,
  an anechoic vessel, and one irregular nodule (hypo- or hyperechoic, sometimes with a halo or bright calcifications);
  optionally an acoustic-shadow-like dark band below it. The mask is the nodule.

They are smoke-test data, not a benchmark: a small U-Net (MONAI ``BasicUNet``, features 8–64) trained on 33 images
at 96×96 for 300 iterations reached a test Dice of about 0.98 (heads) and 0.87 (nodules) on CPU.
:func:`write_synthetic_ultrasound` writes the HC18 layout (``head``) or the folders layout (``nodule``) that
:func:`labelless.semisup.data.build_split` reads; :func:`default_ultrasound_dir` builds it once in the cache.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from labelless.errors import ConfigError
from labelless.io.writers import write_image2d
from labelless.paths import cache_root
from labelless.utils import write_json_atomic, write_text_atomic

from .hc import Ellipse, ellipse_circumference, ellipse_mask

__all__ = [
    "ULTRASOUND_PHANTOM_KINDS",
    "SYNTHETIC_ULTRASOUND_VERSION",
    "make_ultrasound_phantom",
    "write_synthetic_ultrasound",
    "default_ultrasound_dir",
]

#: Kinds of :func:`make_ultrasound_phantom`.
ULTRASOUND_PHANTOM_KINDS = ("head", "nodule")
#: Bump when the generator changes so cached default sets are regenerated.
SYNTHETIC_ULTRASOUND_VERSION = 1

_MANIFEST = "manifest.json"


def _rng(rng_or_seed: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(None if rng_or_seed is None else int(rng_or_seed))


def _shape(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise ConfigError(f"phantom size must be at least 32×32, got {size!r}")
    return h, w


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation (wide kernels: drawn on a coarser grid and
    linearly upsampled, which looks the same and is much faster)."""
    h, w = shape
    k = max(1, int(sigma // 3))
    if k == 1:
        f = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), sigma)
    else:
        small = rng.normal(0.0, 1.0, (-(-h // k) + 2, -(-w // k) + 2))
        f = ndimage.zoom(ndimage.gaussian_filter(small, sigma / k), k, order=1)[:h, :w]
    return f / (f.std() + 1e-8)


def _speckle(rng: np.random.Generator, shape: tuple[int, int], grain: float) -> np.ndarray:
    """Multiplicative speckle: Rayleigh amplitudes smoothed to a grain elongated laterally (mean ~1)."""
    r = rng.rayleigh(1.0, shape)
    r = ndimage.gaussian_filter(r, (0.6 * grain, 1.3 * grain))
    return r / r.mean()


def _to_uint8(img: np.ndarray, gamma: float = 0.8) -> np.ndarray:
    """Log-like compression of echo amplitudes in [0, ~1.5] to 8 bits."""
    return np.round(np.clip(img, 0.0, 1.0) ** gamma * 255.0).astype(np.uint8)


def _head(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Ellipse]:
    """The head phantom and its ellipse (pixels)."""
    h, w = shape
    s = min(h, w)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    # fan: apex above the image, half-angle 30-40°, from a near radius to the bottom of the image
    ax, ay = w / 2 + rng.uniform(-0.05, 0.05) * w, -rng.uniform(0.15, 0.35) * h
    half = math.radians(rng.uniform(30.0, 40.0))
    r = np.hypot(xx - ax, yy - ay)
    theta = np.arctan2(xx - ax, yy - ay)  # 0 straight down
    r0 = -ay + rng.uniform(0.0, 0.04) * h
    r1 = r0 + rng.uniform(0.9, 1.05) * h
    fan = (np.abs(theta) <= half) & (r >= r0) & (r <= r1)
    depth = np.clip((r - r0) / (r1 - r0), 0.0, 1.0)

    # head ellipse, centred near the fan axis, inside the image
    a = rng.uniform(0.22, 0.32) * s
    b = a * rng.uniform(0.72, 0.9)
    angle = rng.uniform(0.0, math.pi)
    ext_x = math.sqrt((a * math.cos(angle)) ** 2 + (b * math.sin(angle)) ** 2)
    ext_y = math.sqrt((a * math.sin(angle)) ** 2 + (b * math.cos(angle)) ** 2)
    lo_y, hi_y = max(0.30 * h, ext_y + 2), min(0.70 * h, h - ext_y - 3)
    cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else h / 2
    lo_x, hi_x = max(ax - 0.15 * w, ext_x + 2), min(ax + 0.15 * w, w - ext_x - 3)
    cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else w / 2
    ell = Ellipse(float(cx), float(cy), float(a), float(b), float(angle))
    c, sn = math.cos(angle), math.sin(angle)
    u, v = ((xx - cx) * c + (yy - cy) * sn) / a, (-(xx - cx) * sn + (yy - cy) * c) / b
    rho = np.sqrt(u * u + v * v)  # 1 on the ellipse

    # tissue: heterogeneous echo, anechoic amniotic fluid around the head (irregular), a bright wall band at the top
    level = 0.34 + 0.1 * _smooth_noise(rng, shape, s / 14) + 0.05 * _smooth_noise(rng, shape, s / 40)
    fluid = rho + 0.35 * _smooth_noise(rng, shape, s / 9) < rng.uniform(1.3, 1.8)
    fluid |= _smooth_noise(rng, shape, s / 10) > rng.uniform(0.8, 1.6)
    level = np.where(fluid, 0.03, level)
    wall_r = r0 + rng.uniform(0.04, 0.12) * h
    level += 0.4 * np.exp(-(((r - wall_r) / (0.025 * h)) ** 2)) * (1 + 0.3 * _smooth_noise(rng, shape, s / 15))
    level = ndimage.gaussian_filter(level, 1.5)

    # head: skull ring (outer edge = the ellipse) brightest where the beam meets it head-on, darker brain
    inside = rho <= 1.0
    thick = rng.uniform(0.022, 0.035) * s
    inner = ellipse_mask(shape, Ellipse(cx, cy, a - thick, b - thick, angle))
    ring = inside & ~inner
    nx, ny = u / a * c - v / b * sn, u / a * sn + v / b * c  # gradient of the ellipse function (normal)
    bx, by = (xx - ax) / np.maximum(r, 1e-6), (yy - ay) / np.maximum(r, 1e-6)
    incidence = np.abs(nx * bx + ny * by) / (np.hypot(nx, ny) + 1e-12)
    skull = (0.2 + 0.9 * incidence**2) * (1 + 0.15 * _smooth_noise(rng, shape, s / 30))
    brain = 0.14 + 0.05 * _smooth_noise(rng, shape, s / 25)
    for _ in range(int(rng.integers(1, 4))):  # choroid-plexus-like echoes
        pu, pv = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)
        brain += rng.uniform(0.1, 0.25) * np.exp(-(((u - pu) / 0.12) ** 2 + ((v - pv) / 0.06) ** 2))
    midline = np.exp(-((v * b / (0.008 * s + 0.5)) ** 2)) * (np.abs(u) < 0.75) * rng.uniform(0.15, 0.35)
    level = np.where(inner, brain + midline, level)
    ring_soft = ndimage.gaussian_filter(ring.astype(np.float64), 0.8)
    level = level * (1 - ring_soft) + skull * ring_soft
    # the skull attenuates: the far half of the brain is darker
    r_c = math.hypot(cx - ax, cy - ay)
    level = np.where(inner, level * (1.0 - 0.35 * np.clip((r - r_c) / b, 0.0, 1.0)), level)

    speckle = _speckle(rng, shape, grain=max(s / 256, 0.5) * rng.uniform(0.9, 1.4))
    atten = np.exp(-rng.uniform(0.6, 1.4) * depth)
    img = level * speckle * atten * rng.uniform(1.0, 1.3)
    img = np.where(fan, img, 0.0)
    return _to_uint8(img), inside.astype(np.uint8) * 255, ell


def _nodule(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The thyroid-nodule phantom and its mask."""
    h, w = shape
    s = min(h, w)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    level = 0.45 + 0.05 * _smooth_noise(rng, shape, s / 30) + 0.03 * _smooth_noise(rng, shape, s / 8)
    # muscle band (darker, striated) at the top
    top = rng.uniform(0.08, 0.2) * h + 0.04 * h * np.sin(xx / w * math.pi * rng.uniform(0.5, 2) + rng.uniform(0, 6))
    band = yy < top
    striae = 0.05 * np.sin(yy / max(1.0, 0.015 * h) * math.pi + 0.2 * _smooth_noise(rng, shape, s / 20))
    level = np.where(band, 0.22 + striae, level)
    # irregular nodule: a radius modulated by a few harmonics
    r0 = rng.uniform(0.14, 0.26) * s
    cx = rng.uniform(0.35, 0.65) * w
    cy = rng.uniform(0.38, 0.62) * h
    theta = np.arctan2(yy - cy, xx - cx)
    elong = rng.uniform(0.7, 1.0)
    rad = np.ones_like(theta)
    for k in range(2, 6):
        rad += rng.uniform(0.0, 0.12 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    dist = np.hypot((xx - cx), (yy - cy) / elong)
    nodule = dist <= r0 * rad
    nodule = ndimage.binary_opening(nodule, iterations=1) if nodule.sum() > 50 else nodule
    # anechoic vessel on the other side (left out when it would touch the nodule)
    vx = (rng.uniform(0.05, 0.2) if cx > w / 2 else rng.uniform(0.8, 0.95)) * w
    vy, vr = rng.uniform(0.4, 0.8) * h, rng.uniform(0.06, 0.1) * s
    vessel = np.hypot(xx - vx, yy - vy) < vr
    if not (vessel & ndimage.binary_dilation(nodule, iterations=3)).any():
        level = np.where(vessel, 0.04, level)
    hypo = rng.uniform() < 0.7
    inner_level = rng.uniform(0.12, 0.3) if hypo else rng.uniform(0.62, 0.8)
    inner_level = inner_level + 0.06 * _smooth_noise(rng, shape, s / 40)
    soft = ndimage.gaussian_filter(nodule.astype(np.float64), rng.uniform(0.8, 2.0))
    level = level * (1 - soft) + inner_level * soft
    if rng.uniform() < 0.4:  # dark halo
        halo = ndimage.binary_dilation(nodule, iterations=max(1, int(0.015 * s))) & ~nodule
        level = np.where(halo, level * 0.35, level)
    if rng.uniform() < 0.35:  # bright calcifications
        ys, xs = np.nonzero(nodule)
        for i in rng.integers(0, len(ys), int(rng.integers(1, 5))):
            level += 0.7 * np.exp(-(((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2) / (2 * (0.006 * s + 0.5) ** 2)))
    if rng.uniform() < 0.35:  # acoustic shadow-like dark band under the nodule
        cols = np.nonzero(nodule.any(axis=0))[0]
        x0, x1 = cols.min(), cols.max()
        bottom = np.where(nodule.any(axis=0), h - 1 - np.argmax(nodule[::-1], axis=0), h)  # per column
        edge = np.clip(np.minimum(xx - x0, x1 - xx) / max(2.0, 0.05 * s), 0.0, 1.0)
        shadow = np.clip((yy - bottom[None, :]) / max(2.0, 0.04 * s), 0.0, 1.0) * edge
        level = level * (1 - rng.uniform(0.5, 0.8) * shadow)
    depth = yy / h
    img = level * _speckle(rng, shape, grain=max(s / 256, 0.5) * rng.uniform(0.8, 1.2))
    img = img * np.exp(-rng.uniform(0.2, 0.6) * depth) * rng.uniform(1.0, 1.25)
    return _to_uint8(img), nodule.astype(np.uint8) * 255


def make_ultrasound_phantom(
    rng_or_seed: np.random.Generator | int | None, kind: str = "head", size: int | Sequence[int] = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic B-mode image and its mask.

    Args:
        rng_or_seed: a numpy generator (advanced in place) or a seed.
        kind: ``"head"`` (HC18-like, fan-shaped field of view) or ``"nodule"`` (thyroid-like, full frame).
        size: side of a square image, or ``(H, W)``.

    Returns:
        ``(image, mask)``: (H, W) uint8 grey image and (H, W) uint8 mask with values 0/255.

    Raises:
        ConfigError: unknown kind, image smaller than 32×32.

    Examples::

        image, mask = make_ultrasound_phantom(0, "head")        # (256, 256) each
        image, mask = make_ultrasound_phantom(rng, "nodule", (200, 300))
    """
    kind = str(kind).lower()
    if kind not in ULTRASOUND_PHANTOM_KINDS:
        raise ConfigError(f"unknown ultrasound phantom kind {kind!r}; expected one of {ULTRASOUND_PHANTOM_KINDS}")
    rng, shape = _rng(rng_or_seed), _shape(size)
    if kind == "head":
        image, mask, _ = _head(rng, shape)
        return image, mask
    return _nodule(rng, shape)


def _options(kind: str, n_labeled: int, n_unlabeled: int, seed: int, size: int | Sequence[int]) -> dict[str, Any]:
    kind = str(kind).lower()
    if kind not in ULTRASOUND_PHANTOM_KINDS:
        raise ConfigError(f"unknown ultrasound phantom kind {kind!r}; expected one of {ULTRASOUND_PHANTOM_KINDS}")
    if int(n_labeled) < 3 or int(n_unlabeled) < 0:
        raise ConfigError(f"need n_labeled >= 3 and n_unlabeled >= 0, got {n_labeled!r}, {n_unlabeled!r}")
    h, w = _shape(size)
    return {"version": SYNTHETIC_ULTRASOUND_VERSION, "kind": kind, "n_labeled": int(n_labeled),
            "n_unlabeled": int(n_unlabeled), "seed": int(seed), "size": [h, w]}  # fmt: skip


def _write_set(out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Write the set described by ``opts`` into the (empty) folder ``out``; returns the manifest."""
    kind, shape = opts["kind"], (opts["size"][0], opts["size"][1])
    rng = np.random.default_rng(opts["seed"])
    records: list[dict[str, Any]] = []
    if kind == "head":
        # one fetus per image; every sixth image is a repeat (NNN_2HC) of the previous fetus, as in HC18
        rows = []
        fetus, names = -1, []
        for i in range(opts["n_labeled"]):
            if i % 6 == 5 and fetus >= 0:
                name = f"{fetus:03d}_2HC"
            else:
                fetus += 1
                name = f"{fetus:03d}_HC"
            names.append(name)
        for name in names:
            image, mask, ell = _head(rng, shape)
            pixel_mm = float(rng.uniform(0.08, 0.16) * 800.0 / max(shape))  # HC18-like head sizes in mm
            hc_mm = float(ellipse_circumference(ell.a, ell.b) * pixel_mm)
            write_image2d(image, out / "labeled" / "images" / f"{name}.png", dtype=np.uint8)
            write_image2d(mask, out / "labeled" / "masks" / f"{name}.png", dtype=np.uint8)
            rows.append((f"{name}.png", f"{pixel_mm:.9f}", f"{hc_mm:.2f}"))
            records.append({"name": name, "part": "labeled", "pixel_size_mm": pixel_mm, "hc_mm": hc_mm,
                            "ellipse_px": ell.as_dict()})  # fmt: skip
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
        writer.writerows(rows)
        write_text_atomic(out / "labeled" / "pixel_size_and_hc.csv", buf.getvalue())
        (out / "unlabeled").mkdir(parents=True, exist_ok=True)
        for j in range(opts["n_unlabeled"]):
            image, _, _ = _head(rng, shape)
            write_image2d(image, out / "unlabeled" / f"{j:03d}_HC.png", dtype=np.uint8)
            records.append({"name": f"{j:03d}_HC", "part": "unlabeled"})
    else:
        for i in range(opts["n_labeled"]):
            image, mask = _nodule(rng, shape)
            name = f"{i + 1:03d}_1"
            write_image2d(image, out / "images" / f"{name}.png", dtype=np.uint8)
            write_image2d(mask, out / "masks" / f"{name}.png", dtype=np.uint8)
            records.append({"name": name, "part": "labeled"})
        for j in range(opts["n_unlabeled"]):
            image, _ = _nodule(rng, shape)
            write_image2d(image, out / "unlabeled" / f"u{j + 1:03d}.png", dtype=np.uint8)
            records.append({"name": f"u{j + 1:03d}", "part": "unlabeled"})
    manifest = {**opts, "layout": "hc18" if kind == "head" else "folders", "images": records}
    write_json_atomic(out / _MANIFEST, manifest)
    return manifest


def _matches(folder: Path, opts: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a complete set written with ``opts``."""
    try:
        found = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(found.get(k) == v for k, v in opts.items())


def write_synthetic_ultrasound(
    out_dir: str | os.PathLike,
    kind: str = "head",
    n_labeled: int = 40,
    n_unlabeled: int = 40,
    seed: int = 0,
    size: int | Sequence[int] = 256,
) -> Path:
    """Write a synthetic ultrasound set.

    ``head`` writes the HC18 layout::

        <out>/labeled/images/NNN_HC.png        (and NNN_2HC.png repeats of fetus NNN: every sixth image)
        <out>/labeled/masks/NNN_HC.png         0/255 filled head ellipse
        <out>/labeled/pixel_size_and_hc.csv    filename, pixel size(mm), head circumference (mm) (true ellipse)
        <out>/unlabeled/NNN_HC.png

    ``nodule`` writes the folders layout (``images/NNN_1.png``, ``masks/NNN_1.png``, ``unlabeled/uNNN.png`` when
    ``n_unlabeled > 0``). Both add ``manifest.json`` (the options and, per image, its part and, for heads, pixel
    size, HC and ellipse).

    The set is written into a temporary sibling folder and renamed onto ``out_dir`` when complete. Idempotent: when
    ``out_dir`` already holds the set of the same options, it is returned untouched.

    Args:
        out_dir: destination folder (absent or empty).
        kind: ``"head"`` or ``"nodule"``.
        n_labeled: labelled images (≥ 3).
        n_unlabeled: extra unlabelled images.
        seed: seed of every draw.
        size: image side or ``(H, W)``.

    Returns:
        ``Path(out_dir)``.

    Raises:
        ConfigError: bad options, or ``out_dir`` is not empty and holds something else.
    """
    opts = _options(kind, n_labeled, n_unlabeled, seed, size)
    out = Path(out_dir)
    if _matches(out, opts):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} exists, is not empty and is not this synthetic set; choose another")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the set is an ordinary readable folder
        _write_set(tmp, opts)
        try:
            if out.exists():
                out.rmdir()  # empty (checked above)
            os.replace(tmp, out)
        except OSError:
            if not _matches(out, opts):  # another process finished first with the same set: keep its copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_ultrasound_dir(
    kind: str = "head",
    n_labeled: int = 40,
    n_unlabeled: int = 40,
    seed: int = 0,
    size: int | Sequence[int] = 256,
) -> Path:
    """The default synthetic set of ``kind``, written once into the cache and reused afterwards.

    The folder is ``<cache_root()>/semisup/<kind>-v<SYNTHETIC_ULTRASOUND_VERSION>`` (``-n<labeled>-u<unlabeled>-s<seed>
    -<H>x<W>`` is appended when the options differ from the defaults).

    Returns:
        the data set folder (HC18 layout for ``head``, folders layout for ``nodule``).
    """
    opts = _options(kind, n_labeled, n_unlabeled, seed, size)
    name = f"{opts['kind']}-v{SYNTHETIC_ULTRASOUND_VERSION}"
    if (opts["n_labeled"], opts["n_unlabeled"], opts["seed"], opts["size"]) != (40, 40, 0, [256, 256]):
        name += f"-n{opts['n_labeled']}-u{opts['n_unlabeled']}-s{opts['seed']}-{opts['size'][0]}x{opts['size'][1]}"
    dest = cache_root() / "semisup" / name
    if _matches(dest, opts):
        return dest
    return write_synthetic_ultrasound(dest, opts["kind"], opts["n_labeled"], opts["n_unlabeled"], opts["seed"], size)
