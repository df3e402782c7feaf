# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Synthetic abdominal and cardiac phantoms: the embedded default data set of the few-shot bundles.

The phantoms imitate the preprocessed layouts of fewshot_protocol.md §1 (``image_<pid>.nii.gz``,
``label_<pid>.nii.gz``, ``classmap_1.json``) so that every few-shot pipeline can run end to end without any
download:

- ``kind="abdomen"``: an axial abdominal volume (body ellipse, spine, aorta, bowel, liver 1, right kidney 2, left
  kidney 3, spleen 4) at spacing (1.25, 1.25, 7.7) mm, laid out like the shared CHAOS volumes (``array[z]`` is an
  axial slice [row = y, col = x]; the liver is on the low-column side, the kidneys on the low-row (posterior) side).
  ``modality="mr"`` gives CHAOS-like T2-SPIR intensities (integer values about 0..1000, air exactly 0 so the CHAOS
  body threshold 50 works, top 0.5 % clipped as in the preprocessing); ``modality="ct"`` gives HU values already
  windowed to [-125, 275] and scaled to [0, 255] (air 0) as in the Synapse preparation.
- ``kind="cardiac"``: a short-axis bSSFP-like volume (thorax, lungs, LV blood pool, myocardium ring, RV crescent)
  at spacing (1.25, 1.25, 7.99) mm with the raw MS-CMRSeg label coding 200 (LV myocardium), 500 (LV blood pool),
  600 (RV); the ``phantom_cardiac`` preset maps them to 1/2/3.

Every structure is a smooth random shape (an ellipsoid whose radius is modulated by low-frequency noise) at an
anatomically plausible, slightly jittered position, with an organ-specific mean intensity and texture, a smooth
multiplicative bias field and noise. The intensity ranking of the structures is the same in every case, so a
structure looks alike across cases and differs from its surroundings: few-shot segmentation can succeed on them.
Everything is deterministic given the seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from labelless.data.layouts import compute_classmap
from labelless.data.presets import get_preset
from labelless.errors import ConfigError
from labelless.io.volume import Volume
from labelless.io.writers import write_volume
from labelless.paths import cache_root, claim_output_folder
from labelless.utils import write_json_atomic

__all__ = [
    "PHANTOM_KINDS",
    "PHANTOM_VERSION",
    "phantom_spacing",
    "phantom_affine",
    "make_phantom",
    "write_phantom_dataset",
    "default_dataset_dir",
]

PHANTOM_KINDS = ("abdomen", "cardiac")
#: Bump when the generator changes so cached default data sets are regenerated.
PHANTOM_VERSION = 1
# marker file of a folder written by write_phantom_dataset (it may be rewritten; any other non-empty folder may not)
PHANTOM_MARKER = ".labelless_phantoms"

_SPACING = {"abdomen": (1.25, 1.25, 7.7), "cardiac": (1.25, 1.25, 7.99)}
_DEFAULT_SHAPE = {"abdomen": (256, 256, 32), "cardiac": (256, 256, 16)}
_PRESET = {"abdomen": "phantom_abdomen", "cardiac": "phantom_cardiac"}

# Raw label values.
LIVER, RKIDNEY, LKIDNEY, SPLEEN = 1, 2, 3, 4
LV_MYO, LV_BP, RV = 200, 500, 600

# Mean intensity per tissue: MR (CHAOS-like T2-SPIR raw values) and CT (Hounsfield units, windowed later).
_ABDOMEN_TISSUE = {
    #               mr     ct
    "tissue": (150.0, 30.0),
    "fat": (90.0, -95.0),
    "wall": (260.0, 50.0),
    "spine": (70.0, 420.0),
    "canal": (820.0, 15.0),
    "aorta": (40.0, 190.0),
    "bowel": (470.0, 10.0),
    "liver": (330.0, 65.0),
    "rkidney": (700.0, 175.0),
    "lkidney": (700.0, 175.0),
    "spleen": (560.0, 110.0),
}
_CT_WINDOW = (-125.0, 275.0)


def _check_kind(kind: str, modality: str) -> tuple[str, str]:
    kind, modality = str(kind).lower(), str(modality).lower()
    if kind not in PHANTOM_KINDS:
        raise ConfigError(f"unknown phantom kind {kind!r}; expected one of {PHANTOM_KINDS}")
    if modality not in ("mr", "ct"):
        raise ConfigError(f"unknown phantom modality {modality!r}; expected 'mr' or 'ct'")
    if kind == "cardiac" and modality != "mr":
        raise ConfigError("cardiac phantoms exist only as MR (bSSFP-like); use modality='mr'")
    return kind, modality


def _check_shape(kind: str, shape: Sequence[int] | None) -> tuple[int, int, int]:
    if shape is None:
        return _DEFAULT_SHAPE[kind]
    shp = tuple(int(s) for s in shape)
    if len(shp) != 3 or min(shp) < 1 or shp[0] < 16 or shp[1] < 16:
        raise ConfigError(f"phantom shape must be (H, W, Z) with H, W >= 16 and Z >= 1, got {tuple(shape)}")
    return shp  # type: ignore[return-value]


def phantom_spacing(kind: str) -> tuple[float, float, float]:
    """Voxel size (x, y, z) in mm of a phantom kind: (1.25, 1.25, 7.7) abdomen, (1.25, 1.25, 7.99) cardiac."""
    return _SPACING[_check_kind(kind, "mr")[0]]


def phantom_affine(kind: str, shape: Sequence[int]) -> np.ndarray:
    """RAS affine of a phantom of ``shape`` (H, W, Z): CHAOS-like axes (-x, +y, +z), centred on the origin."""
    sx, sy, sz = phantom_spacing(kind)
    h, w, z = (int(s) for s in shape)
    aff = np.diag([-sx, sy, sz, 1.0])
    aff[:3, 3] = [sx * (w - 1) / 2.0, -sy * (h - 1) / 2.0, -sz * (z - 1) / 2.0]
    return aff


# ---------------------------------------------------------------------------------------------------- helpers
class _Grid:
    """Normalised voxel-centre coordinates of a (Z, H, W) volume: w (z), v (row), u (col), all in (0, 1)."""

    def __init__(self, nz: int, nh: int, nw: int) -> None:
        self.shape = (nz, nh, nw)
        self.w = ((np.arange(nz, dtype=np.float32) + 0.5) / nz)[:, None, None]
        self.v = ((np.arange(nh, dtype=np.float32) + 0.5) / nh)[None, :, None]
        self.u = ((np.arange(nw, dtype=np.float32) + 0.5) / nw)[None, None, :]


def _box(centre: float, half: float, n: int) -> slice:
    lo = int(np.floor((centre - half) * n - 1))
    hi = int(np.ceil((centre + half) * n + 1))
    return slice(max(lo, 0), min(max(hi, 0), n))


def _blob(
    rng: np.random.Generator,
    grid: _Grid,
    centre: Sequence[float],
    axes: Sequence[float],
    angle: float = 0.0,
    amp: float = 0.12,
    n_waves: int = 3,
) -> np.ndarray:
    """Boolean mask of a smoothly deformed ellipsoid.

    ``centre`` = (w, v, u) and ``axes`` = semi-axes (z, row, col) in normalised units; ``angle`` rotates in-plane
    (radians). The radius is modulated by ``amp`` × a sum of ``n_waves`` random cosines of ~1 cycle per organ size.
    """
    cw, cv, cu = centre
    az, ar, ac = axes
    reach = (1.0 + 1.5 * amp) * max(ar, ac)
    sz = _box(cw, az * (1.0 + 1.5 * amp), grid.shape[0])
    sr = _box(cv, reach, grid.shape[1])
    sc = _box(cu, reach, grid.shape[2])
    out = np.zeros(grid.shape, dtype=bool)
    if sz.start >= sz.stop or sr.start >= sr.stop or sc.start >= sc.stop:
        return out
    dz = (grid.w[sz] - cw) / az
    dv = grid.v[:, sr] - cv
    du = grid.u[:, :, sc] - cu
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dr = (ca * dv - sa * du) / ar
    dc = (sa * dv + ca * du) / ac
    d = np.sqrt(dz * dz + dr * dr + dc * dc)
    wobble = np.zeros_like(d)
    for _ in range(n_waves):
        f = rng.normal(0.0, 1.0, size=3).astype(np.float32)
        f *= np.float32(rng.uniform(0.6, 1.3) / max(np.linalg.norm(f), 1e-6))
        phase = np.float32(rng.uniform(0.0, 2.0 * np.pi))
        wobble += np.cos(np.float32(2.0 * np.pi) * (f[0] * dz + f[1] * dr + f[2] * dc) + phase)
    out[sz, sr, sc] = d < 1.0 + np.float32(amp / np.sqrt(n_waves)) * wobble
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field smoothed in-plane by ``sigma`` pixels (slices independent)."""
    nz, nh, nw = shape
    if sigma >= 3:
        # Coarse field: draw on a reduced grid and interpolate (much faster than a wide Gaussian filter).
        step = max(int(sigma), 1)
        small = rng.standard_normal((nz, nh // step + 2, nw // step + 2)).astype(np.float32)
        small = ndimage.gaussian_filter(small, sigma=(0.0, 1.0, 1.0))
        rows = (np.arange(nh, dtype=np.float32) + 0.5) / step
        cols = (np.arange(nw, dtype=np.float32) + 0.5) / step
        r0 = np.clip(rows.astype(int), 0, small.shape[1] - 2)
        c0 = np.clip(cols.astype(int), 0, small.shape[2] - 2)
        fr = (rows - r0)[None, :, None]
        fc = (cols - c0)[None, None, :]
        a = small[:, r0][:, :, c0]
        b = small[:, r0 + 1][:, :, c0]
        c = small[:, r0][:, :, c0 + 1]
        d = small[:, r0 + 1][:, :, c0 + 1]
        field = (a * (1 - fr) + b * fr) * (1 - fc) + (c * (1 - fr) + d * fr) * fc
    else:
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=(0.0, sigma, sigma))
    std = float(field.std())
    return (field - float(field.mean())) / (std if std > 0 else 1.0)


def _bias_field(rng: np.random.Generator, grid: _Grid, strength: float = 0.15) -> np.ndarray:
    """Smooth multiplicative field around 1 (product of low-order cosines along the three axes)."""
    field = np.ones(grid.shape, dtype=np.float32)
    for coord in (grid.v, grid.u, grid.w):
        a = np.float32(rng.uniform(-strength, strength))
        ph = np.float32(rng.uniform(0, np.pi))
        field = field * (1.0 + a * np.cos(np.float32(np.pi) * coord + ph))
    return field


def _jit(rng: np.random.Generator, scale: float) -> float:
    return float(rng.uniform(-scale, scale))


def _rng(seed: int | Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(list(seed) if isinstance(seed, Sequence) else int(seed))


# ---------------------------------------------------------------------------------------------------- abdomen
def _abdomen(rng: np.random.Generator, shape: tuple[int, int, int], modality: str) -> tuple[np.ndarray, np.ndarray]:
    nh, nw, nz = shape
    g = _Grid(nz, nh, nw)
    col = 0 if modality == "mr" else 1
    mean = {k: v[col] for k, v in _ABDOMEN_TISSUE.items()}
    label = np.zeros(g.shape, dtype=np.int16)
    image = np.zeros(g.shape, dtype=np.float32)

    # Body: an elliptic cylinder, slightly larger at the bottom (z small = inferior) and jittered per case.
    bv, bu = 0.5 + _jit(rng, 0.02), 0.5 + _jit(rng, 0.01)
    br, bc = 0.40 + _jit(rng, 0.03), 0.47 + _jit(rng, 0.02)
    taper = 1.0 + 0.04 * (0.5 - g.w)
    body_d = np.sqrt(((g.v - bv) / (br * taper)) ** 2 + ((g.u - bu) / (bc * taper)) ** 2)
    body = body_d < 1.0
    wall = body & (body_d > 0.93)
    fat_field = _smooth_noise(rng, g.shape, 6.0)
    fine = _smooth_noise(rng, g.shape, 1.0)
    coarse = _smooth_noise(rng, g.shape, 12.0)
    # Background tissue: a mix of fat-like and muscle-like areas.
    is_fat = fat_field > 0.6
    image[body] = mean["tissue"]
    image[body & is_fat] = mean["fat"]
    image[wall] = mean["wall"]
    tex = np.where(body, 1.0 + 0.10 * coarse + 0.06 * fine, 0.0).astype(np.float32)
    image *= tex

    def paint(mask: np.ndarray, key: str, lab: int | None, coarse_amp: float, fine_amp: float) -> None:
        mask = mask & body
        image[mask] = mean[key] * (1.0 + coarse_amp * coarse[mask] + fine_amp * fine[mask])
        if lab is not None:
            label[mask] = lab

    # Spine (vertebral body with a bright spinal canal) and aorta: posterior midline (low rows).
    sv = bv - br * 0.62 + _jit(rng, 0.01)
    su = bu + _jit(rng, 0.01)
    paint(_blob(rng, g, (0.5, sv, su), (5.0, 0.075, 0.07), amp=0.03), "spine", None, 0.05, 0.05)
    paint(_blob(rng, g, (0.5, sv - 0.07, su), (5.0, 0.022, 0.02), amp=0.02), "canal", None, 0.02, 0.03)
    paint(_blob(rng, g, (0.5, sv + 0.11, su + 0.035), (5.0, 0.028, 0.028), amp=0.02), "aorta", None, 0.02, 0.03)
    # Bowel loops: anterior (high rows), heterogeneous.
    for _ in range(2):
        c = (0.35 + _jit(rng, 0.15), bv + 0.22 + _jit(rng, 0.05), bu + _jit(rng, 0.15))
        paint(_blob(rng, g, c, (0.25, 0.07, 0.09), amp=0.2), "bowel", None, 0.25, 0.15)

    # Organs (painted last so they are never covered): positions follow the shared CHAOS volumes.
    rot = _jit(rng, 0.15)
    lc = (0.64 + _jit(rng, 0.04), 0.55 + _jit(rng, 0.03), 0.25 + _jit(rng, 0.02))
    liver = _blob(rng, g, lc, (0.34, 0.21, 0.16), angle=rot, amp=0.12)
    liver |= _blob(rng, g, (lc[0] + 0.06, lc[1] + 0.08, lc[2] + 0.17), (0.22, 0.10, 0.12), angle=rot, amp=0.12)
    spc = (0.66 + _jit(rng, 0.04), 0.42 + _jit(rng, 0.03), 0.83 + _jit(rng, 0.02))
    spleen = _blob(rng, g, spc, (0.18, 0.12, 0.07), angle=-0.4 + _jit(rng, 0.15), amp=0.12)
    rkc = (0.48 + _jit(rng, 0.04), 0.36 + _jit(rng, 0.02), 0.28 + _jit(rng, 0.02))
    lkc = (0.56 + _jit(rng, 0.04), 0.35 + _jit(rng, 0.02), 0.71 + _jit(rng, 0.02))
    rk = _blob(rng, g, rkc, (0.20, 0.10, 0.068), angle=0.3 + _jit(rng, 0.15), amp=0.08)
    lk = _blob(rng, g, lkc, (0.20, 0.10, 0.068), angle=-0.3 + _jit(rng, 0.15), amp=0.08)
    paint(liver & ~rk, "liver", LIVER, 0.06, 0.05)
    paint(spleen & ~lk, "spleen", SPLEEN, 0.04, 0.07)
    paint(rk, "rkidney", RKIDNEY, 0.03, 0.10)
    paint(lk, "lkidney", LKIDNEY, 0.03, 0.10)

    if modality == "mr":
        image *= _bias_field(rng, g, 0.12)
        noise = rng.standard_normal(g.shape).astype(np.float32)
        image = np.where(body, image + 18.0 * noise, 0.0)
        image = np.clip(image, 0.0, None)
        # Preprocessing of the real data: clip the top 0.5 %, integer-valued like the DICOM source.
        top = float(np.percentile(image, 99.5))
        image = np.rint(np.minimum(image, top))
    else:
        noise = rng.standard_normal(g.shape).astype(np.float32)
        hu = np.where(body, image + 12.0 * noise, -1000.0)
        lo, hi = _CT_WINDOW
        image = (np.clip(hu, lo, hi) - lo) / (hi - lo) * 255.0
    return image.astype(np.float32), label


# ---------------------------------------------------------------------------------------------------- cardiac
def _cardiac(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    nh, nw, nz = shape
    g = _Grid(nz, nh, nw)
    label = np.zeros(g.shape, dtype=np.int16)
    image = np.zeros(g.shape, dtype=np.float32)
    fine = _smooth_noise(rng, g.shape, 1.0)
    coarse = _smooth_noise(rng, g.shape, 10.0)

    # Thorax with two lungs (dark) and mediastinal tissue.
    bv, bu = 0.5 + _jit(rng, 0.02), 0.5 + _jit(rng, 0.02)
    body = ((g.v - bv) / (0.38 + _jit(rng, 0.02))) ** 2 + ((g.u - bu) / (0.46 + _jit(rng, 0.02))) ** 2 < 1.0
    body = np.broadcast_to(body, g.shape)
    image[body] = 260.0 * (1.0 + 0.12 * coarse[body] + 0.06 * fine[body])
    for side in (-1.0, 1.0):
        c = (0.5, bv - 0.04 + _jit(rng, 0.02), bu + side * 0.24 + _jit(rng, 0.02))
        lung = _blob(rng, g, c, (3.0, 0.22, 0.13), amp=0.08) & body
        image[lung] = 35.0 * (1.0 + 0.3 * coarse[lung])

    # Heart, base (z = 0) to apex (z = Z - 1). In-plane polar coordinates around the LV centre.
    cv, cu = bv + 0.02 + _jit(rng, 0.02), bu + 0.06 + _jit(rng, 0.02)
    dv, du = g.v - cv, g.u - cu
    rad = np.sqrt(dv * dv + du * du)
    theta = np.arctan2(dv, du)

    def wobble(amp: float) -> np.ndarray:
        out = np.zeros_like(theta)
        for k in (2, 3):
            out = out + np.float32(amp * rng.uniform(0.3, 1.0)) * np.cos(k * theta + np.float32(rng.uniform(0, 6.3)))
        return 1.0 + out

    w = g.w
    r_bp = (0.072 + _jit(rng, 0.006)) * np.clip(1.0 - 0.75 * w**2, 0.0, None)
    thick = 0.036 + _jit(rng, 0.004)
    r_epi = (r_bp + thick) * np.where(w > 0.93, np.clip((1.0 - w) / 0.07, 0.2, 1.0), 1.0)
    bp = rad < r_bp * wobble(0.04)
    epi = rad < r_epi * wobble(0.03)
    myo = epi & ~bp
    # Epicardial fat: a thin bright ring around the heart.
    fatring = (rad < (r_epi + 0.012) * wobble(0.05)) & ~epi
    image[fatring] = 520.0 * (1.0 + 0.05 * fine[fatring])
    # RV: a crescent on the low-column, high-row side, wrapped around the septum; vanishes towards the apex.
    ang = np.float32(np.pi * (0.80 + _jit(rng, 0.05)))
    rv_off = r_epi * 1.0
    rv_cv, rv_cu = cv + rv_off * np.sin(ang), cu + rv_off * np.cos(ang)
    rv_r = (r_epi * 1.3) * np.clip(1.0 - 1.1 * w**2, 0.0, None)
    rv_d = np.sqrt((g.v - rv_cv) ** 2 / 0.8 + (g.u - rv_cu) ** 2)
    rv = (rv_d < rv_r * wobble(0.05)) & ~(rad < r_epi + 0.010)
    for mask, val, lab, tex in ((rv, 700.0, RV, 0.05), (myo, 150.0, LV_MYO, 0.08), (bp, 800.0, LV_BP, 0.04)):
        mask &= body
        image[mask] = val * (1.0 + tex * fine[mask] + 0.03 * coarse[mask])
        label[mask] = lab
    # Papillary muscles: two small dark dots inside the blood pool (labelled as blood pool, as in MS-CMRSeg).
    for k in range(2):
        a = np.float32(np.pi * (0.25 + 0.5 * k) + _jit(rng, 0.2))
        pap = (
            np.sqrt((g.v - cv - 0.6 * r_bp * np.sin(a)) ** 2 + (g.u - cu - 0.6 * r_bp * np.cos(a)) ** 2) < 0.012
        ) & bp
        image[pap] = 260.0

    image *= _bias_field(rng, g, 0.15)
    image = np.where(body, image + 20.0 * rng.standard_normal(g.shape).astype(np.float32), 0.0)
    image = np.clip(image, 0.0, None)
    top = float(np.percentile(image, 99.5))
    image = np.rint(np.minimum(image, top))
    return image.astype(np.float32), label


# ---------------------------------------------------------------------------------------------------- public API
def make_phantom(
    kind: str = "abdomen",
    seed: int | Sequence[int] = 0,
    shape: Sequence[int] | None = None,
    modality: str = "mr",
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one phantom volume in memory.

    Args:
        kind: ``"abdomen"`` (labels 1 liver, 2 right kidney, 3 left kidney, 4 spleen) or ``"cardiac"`` (raw labels
            200 LV myocardium, 500 LV blood pool, 600 RV).
        seed: integer (or sequence of integers) seeding the generator; the same seed gives the same volume.
        shape: (H, W, Z); defaults to (256, 256, 32) for the abdomen and (256, 256, 16) for the heart. Organ
            positions and sizes are relative to the field of view, so small shapes give scaled-down phantoms.
        modality: ``"mr"`` (CHAOS / bSSFP-like raw values) or ``"ct"`` (abdomen only; windowed HU in [0, 255]).

    Returns:
        ``(image, label)``: float32 image and int16 raw label, both (Z, H, W) (``array[z]`` is an axial slice).

    Raises:
        ConfigError: unknown kind or modality, CT cardiac phantom, or an invalid shape.

    Examples::

        image, label = make_phantom("abdomen", seed=3, shape=(128, 128, 16))
    """
    kind, modality = _check_kind(kind, modality)
    shp = _check_shape(kind, shape)
    rng = _rng(seed)
    if kind == "abdomen":
        return _abdomen(rng, shp, modality)
    return _cardiac(rng, shp)


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    kind: str = "abdomen",
    n_volumes: int = 8,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    modality: str = "mr",
) -> Path:
    """Write a phantom data set in the prepared layout of fewshot_protocol.md §1.

    Writes ``image_<pid>.nii.gz`` (float32), ``label_<pid>.nii.gz`` (int16 raw label values) for pids 1..n and
    ``classmap_1.json`` (class-slice index of the mapped labels), each atomically. Volume ``pid`` is generated
    from the seed ``(seed, pid)``; the affine carries the realistic spacing of the kind.

    Args:
        out_dir: destination folder (created if needed); an existing one must be empty or written by this function
            before (it holds ``.labelless_phantoms``): a user's own ``image_1.nii.gz`` is never replaced.
        kind: ``"abdomen"`` or ``"cardiac"``.
        n_volumes: number of scans.
        seed: base seed.
        shape: (H, W, Z) of every volume (kind default when ``None``).
        modality: ``"mr"`` or ``"ct"`` (abdomen only).

    Returns:
        The output folder.

    Raises:
        ConfigError: bad kind, modality, shape or ``n_volumes``; ``out_dir`` holds other files.
    """
    kind, modality = _check_kind(kind, modality)
    shp = _check_shape(kind, shape)
    if int(n_volumes) < 1:
        raise ConfigError(f"n_volumes must be >= 1, got {n_volumes!r}")
    out = claim_output_folder(out_dir, PHANTOM_MARKER, "phantom out_dir")
    preset = get_preset(_PRESET[kind])
    ref = Volume(np.zeros((0, 0, 0)), phantom_affine(kind, shp))
    labels: dict[str, np.ndarray] = {}
    for pid in range(1, int(n_volumes) + 1):
        image, label = make_phantom(kind, (int(seed), pid), shp, modality)
        write_volume(image, out / f"image_{pid}.nii.gz", reference=ref, dtype=np.float32)
        write_volume(label, out / f"label_{pid}.nii.gz", reference=ref, dtype=np.int16)
        labels[str(pid)] = preset.label_map.apply(label)
    write_json_atomic(out / "classmap_1.json", compute_classmap(labels, preset.label_map, threshold=1))
    return out


def default_dataset_dir(kind: str = "abdomen", modality: str = "mr", n_volumes: int = 8, seed: int = 0) -> Path:
    """The default phantom data set of ``kind``, written once into the cache and reused afterwards.

    The folder is ``<cache_root()>/phantoms/<kind>-v<PHANTOM_VERSION>`` (``<kind>-ct-v1`` for CT;
    ``-n<n>-s<seed>`` is appended when ``n_volumes``/``seed`` differ from the defaults). It is written into a
    temporary folder beside it and renamed into place, so concurrent callers never see a partial data set.

    Args:
        kind: ``"abdomen"`` or ``"cardiac"``.
        modality: ``"mr"`` or ``"ct"`` (abdomen only).
        n_volumes: number of scans (8 by default).
        seed: base seed (0 by default).

    Returns:
        The data set folder.
    """
    kind, modality = _check_kind(kind, modality)
    name = kind + ("-ct" if modality == "ct" else "") + f"-v{PHANTOM_VERSION}"
    if int(n_volumes) != 8 or int(seed) != 0:
        name += f"-n{int(n_volumes)}-s{int(seed)}"
    dest = cache_root() / "phantoms" / name
    if (dest / "classmap_1.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any ordinary folder
    try:
        write_phantom_dataset(tmp, kind=kind, n_volumes=n_volumes, seed=seed, modality=modality)
        try:
            os.replace(tmp, dest)
        except OSError:
            # Another process finished first (dest exists and is not empty): use its copy.
            if not (dest / "classmap_1.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
