# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Shared preparation steps (fewshot_protocol.md §2): intensity clipping/windowing, resampling, cropping, writing.

Every step takes and returns a :class:`~labelless.io.volume.Volume` ((Z, H, W) array + RAS affine) and keeps the
world geometry consistent: cropping, padding and flipping move the origin so that each voxel keeps its position.
Resampling uses SimpleITK (linear for images; labels as one-hot channels resampled linearly, then argmax).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labelless.errors import ConfigError, DataError
from labelless.io.geometry import affine_from_sitk, shift_origin, volume_to_sitk
from labelless.io.volume import Volume
from labelless.io.writers import write_volume

__all__ = [
    "SIZE_RULES",
    "clip_top_percentile",
    "window_to_range",
    "resampled_size",
    "resample_image",
    "resample_labels",
    "crop_or_pad_center",
    "crop_border",
    "as_size2d",
    "check_output_dir",
    "write_case",
    "finish_dataset",
]

logger = logging.getLogger("labelless.prepare")

SIZE_RULES = ("reference", "round")


def clip_top_percentile(array: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Cut the bright end of the histogram: values above the ``percentile``-th percentile are set to it."""
    arr = np.asarray(array, dtype=np.float32)
    if not 0 < percentile <= 100:
        raise ConfigError(f"clip percentile must be in (0, 100], got {percentile}")
    hi = float(np.percentile(arr, percentile))
    return np.minimum(arr, hi)


def window_to_range(
    array: np.ndarray, low: float = -125.0, high: float = 275.0, out_max: float = 255.0, source=None
) -> np.ndarray:
    """Clip to ``[low, high]`` then min-max scale the clipped volume to ``[0, out_max]`` (float32).

    As the reference, the scaling uses the clipped volume's own minimum and maximum (normally ``low``/``high``).

    Raises:
        DataError: the clipped volume is constant (nothing to scale), naming ``source``.
    """
    if high <= low:
        raise ConfigError(f"window high ({high}) must exceed low ({low})")
    arr = np.clip(np.asarray(array, dtype=np.float32), low, high)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise DataError(source, f"image is constant ({lo}) inside the window [{low}, {high}]")
    return ((arr - lo) / (hi - lo) * out_max).astype(np.float32)


def resampled_size(n: int, old_spacing: float, new_spacing: float, rule: str = "reference") -> int:
    """Number of voxels along an axis after resampling.

    ``"reference"``: ``int(n * old / new + 1)``, the SSL-ALPNet notebooks' rule (gives the distributed data's slice
    counts; the extra voxel lies outside the input and holds 0). ``"round"``: ``round(n * old / new)`` (at least 1).
    """
    if rule not in SIZE_RULES:
        raise ConfigError(f"size_rule must be one of {SIZE_RULES}, got {rule!r}")
    f = n * float(old_spacing) / float(new_spacing)
    return int(f + 1) if rule == "reference" else max(1, int(round(f)))


def _sitk_resample(array: np.ndarray, affine: np.ndarray, spacing, size, interpolator):
    import SimpleITK as sitk  # noqa: N813

    src = volume_to_sitk(array.astype(np.float32, copy=False), affine)
    f = sitk.ResampleImageFilter()
    f.SetInterpolator(interpolator)
    f.SetOutputDirection(src.GetDirection())
    f.SetOutputOrigin(src.GetOrigin())
    f.SetOutputSpacing([float(s) for s in spacing])
    f.SetSize([int(s) for s in size])
    f.SetDefaultPixelValue(0.0)
    out = f.Execute(src)
    return sitk.GetArrayFromImage(out), affine_from_sitk(out.GetSpacing(), out.GetOrigin(), out.GetDirection())


def _target_grid(vol: Volume, spacing: Sequence[float], size: Sequence[int] | None, size_rule: str):
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError(f"spacing must be 3 positive numbers (x, y, z) in mm, got {spacing}")
    if size is None:
        nz, ny, nx = vol.shape
        size = [resampled_size(n, o, s, size_rule) for n, o, s in zip((nx, ny, nz), vol.spacing, spacing)]
    return spacing, [int(s) for s in size]


def resample_image(
    vol: Volume, spacing: Sequence[float], size: Sequence[int] | None = None, size_rule: str = "reference"
) -> Volume:
    """Linear resampling to ``spacing`` (x, y, z) mm keeping origin and direction.

    Args:
        vol: the image.
        spacing: new voxel size (x, y, z) in mm.
        size: output size (x, y, z); default from :func:`resampled_size` with ``size_rule``.
        size_rule: ``"reference"`` or ``"round"``.

    Returns:
        float32 volume; points outside the input get 0 (as the reference).
    """
    import SimpleITK as sitk  # noqa: N813

    spacing, size = _target_grid(vol, spacing, size, size_rule)
    arr, aff = _sitk_resample(vol.array, vol.affine, spacing, size, sitk.sitkLinear)
    return Volume(arr.astype(np.float32), aff, vol.path, None, dict(vol.meta))


def resample_labels(
    vol: Volume,
    spacing: Sequence[float],
    size: Sequence[int] | None = None,
    size_rule: str = "reference",
    classes: Sequence[int] | None = None,
) -> Volume:
    """Resample a label volume: each class as a one-hot channel with linear interpolation, then argmax.

    Background (0) is always a class; ties go to the lower class value (fewshot_protocol §2.1 step 5). Outside
    the input every channel is 0, so the result is 0 there.

    Args:
        vol: integer-valued labels (any dtype).
        spacing, size, size_rule: as :func:`resample_image`.
        classes: label values to consider (default: those present).

    Returns:
        Labels with the input's dtype on the new grid.
    """
    import SimpleITK as sitk  # noqa: N813

    spacing, size = _target_grid(vol, spacing, size, size_rule)
    lab = np.asarray(vol.array)
    values = sorted(set(int(v) for v in (np.unique(lab) if classes is None else classes)) | {0})
    best = out = aff = None
    for v in values:
        prob, aff = _sitk_resample((lab == v).astype(np.float32), vol.affine, spacing, size, sitk.sitkLinear)
        if best is None:
            best, out = prob, np.full(prob.shape, v, dtype=np.int64)
        else:
            win = prob > best  # strict: ties keep the lower value
            best = np.where(win, prob, best)
            out[win] = v
    return Volume(out.astype(lab.dtype), aff, vol.path, None, dict(vol.meta))


def as_size2d(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    s = tuple(int(v) for v in size)
    if len(s) != 2 or min(s) <= 0:
        raise ConfigError(f"size must be an int or (H, W), got {size!r}")
    return s


def crop_or_pad_center(vol: Volume, size: int | Sequence[int], pad_value: float = 0.0) -> Volume:
    """Centre crop or pad in-plane to ``size`` (H, W), as the reference ``image_crop``.

    Output row ``r`` is input row ``r + H_in // 2 - H_out // 2`` (same for columns); rows outside the input get
    ``pad_value``. The affine origin moves accordingly.
    """
    h_out, w_out = as_size2d(size)
    arr = np.asarray(vol.array)
    z, h, w = arr.shape
    oy, ox = h // 2 - h_out // 2, w // 2 - w_out // 2
    out = np.full((z, h_out, w_out), pad_value, dtype=arr.dtype)
    sy0, sy1 = max(oy, 0), min(h, oy + h_out)
    sx0, sx1 = max(ox, 0), min(w, ox + w_out)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = arr[:, sy0:sy1, sx0:sx1]
    return Volume(out, shift_origin(vol.affine, (ox, oy, 0)), vol.path, None, dict(vol.meta))


def crop_border(vol: Volume, border: int) -> Volume:
    """Remove ``border`` pixels from every in-plane edge (origin moved accordingly)."""
    b = int(border)
    z, h, w = vol.shape
    if b < 0 or 2 * b >= min(h, w):
        raise DataError(vol.path, f"cannot crop {b} px borders from a {h}x{w} image")
    if b == 0:
        return vol
    arr = np.ascontiguousarray(vol.array[:, b : h - b, b : w - b])
    return Volume(arr, shift_origin(vol.affine, (b, b, 0)), vol.path, None, dict(vol.meta))


def check_output_dir(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``out_dir``; refuse the raw folder itself (or a folder inside it) and existing prepared files.

    Raises:
        DataError: missing raw folder, output inside the raw folder, or existing ``image_*.nii.gz`` files when
            ``overwrite`` is false.
    """
    raw, out = Path(raw_dir).resolve(), Path(out_dir).resolve()
    if not raw.is_dir():
        raise DataError(raw, "raw data folder does not exist")
    if out == raw or raw in out.parents:
        raise DataError(out, f"the output folder must be outside the raw data folder {raw} (inputs are never modified)")
    if out.exists() and not overwrite and any(out.glob("image_*.nii*")):
        raise DataError(out, "output folder already holds prepared images; pass overwrite=True to replace them")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_case(
    out_dir: str | os.PathLike,
    pid: str | int,
    image: Volume,
    label: Volume | None = None,
    label_dtype: np.dtype = np.uint8,
) -> list[Path]:
    """Write ``image_<pid>.nii.gz`` (float32) and ``label_<pid>.nii.gz`` atomically; returns the paths."""
    out = Path(out_dir)
    paths = [write_volume(image.array.astype(np.float32), out / f"image_{pid}.nii.gz", reference=image)]
    if label is not None:
        if label.shape != image.shape or not np.allclose(label.affine, image.affine, atol=1e-4):
            raise DataError(label.path, "internal error: prepared label and image grids differ")
        paths.append(write_volume(label.array, out / f"label_{pid}.nii.gz", reference=image, dtype=label_dtype))
    return paths


def finish_dataset(out_dir: str | os.PathLike, preset: str) -> Path | None:
    """Compute and write ``classmap_1.json`` from the prepared labels (``None`` when there are no labels)."""
    from labelless.data.layouts import PreparedVolumeDataset

    ds = PreparedVolumeDataset(out_dir, preset=preset, cache=False)
    if not any(ds.has_label(pid) for pid in ds.pids):
        logger.warning("%s: no labels, classmap_1.json not written", out_dir)
        return None
    return ds.write_classmap(out_dir)
