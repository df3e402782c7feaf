# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Writers: (Z, H, W) arrays to NIfTI, NRRD/MHA or PNG, atomically, with the geometry of a reference volume.

NIfTI files are built with MONAI's ``NibabelWriter`` (qform and sform both set to the affine, code 1 = scanner, as
SimpleITK writes them), NRRD/MHA with SimpleITK, PNG with PIL. Writing with ``reference=`` a volume read by
:func:`~labelless.io.readers.read_volume` gives a file that reads back with the reference's affine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from labelless.errors import DataError
from labelless.utils import atomic_path, path_suffix

from .geometry import volume_to_sitk
from .suffixes import NIFTI_SUFFIXES, SITK_WRITABLE_SUFFIXES, WRITABLE_SUFFIXES
from .volume import Volume

__all__ = ["write_volume", "write_image2d", "write_jpeg"]


def _png_dtype(arr: np.ndarray, path: Path) -> np.dtype:
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr.dtype
    if arr.size == 0:
        return np.dtype(np.uint8)
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.rint(arr)):
        raise DataError(path, "PNG stores integers: round or scale the data, or pass dtype=np.uint8")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 255:
        return np.dtype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return np.dtype(np.uint16)
    raise DataError(path, f"values in [{lo}, {hi}] do not fit a PNG (0..65535)")


def write_image2d(array: np.ndarray, path: str | os.PathLike, dtype: np.dtype | None = None) -> Path:
    """Write a 2D (H, W) grey or (H, W, 3) RGB array to a PNG (or any PIL format) atomically.

    Args:
        array: (H, W), (1, H, W) or (H, W, 3) integer-valued data (e.g. a 0/1 or 0/255 mask).
        path: destination; the format follows the suffix (.png recommended for masks).
        dtype: ``np.uint8`` or ``np.uint16``; by default the smallest that holds the values.

    Returns:
        ``Path(path)``.

    Raises:
        DataError: wrong shape, non-integer or out-of-range values.
    """
    from PIL import Image

    p = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise DataError(p, f"a 2D image must be (H, W), (1, H, W) or (H, W, 3); got shape {arr.shape}")
    dt = np.dtype(dtype) if dtype is not None else _png_dtype(arr, p)
    if arr.ndim == 3 and dt != np.uint8:
        raise DataError(p, "RGB images are written as 8-bit")
    img = Image.fromarray(np.ascontiguousarray(arr.astype(dt)))
    with atomic_path(p) as tmp:
        img.save(str(tmp), format=None if path_suffix(p) != ".png" else "PNG")
    return p


def write_volume(
    array: np.ndarray,
    path: str | os.PathLike,
    reference: Volume | None = None,
    dtype: np.dtype | None = None,
    *,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a (Z, H, W) array atomically with the geometry of ``reference``.

    Args:
        array: (Z, H, W) data in the orientation of :class:`Volume` (a (H, W) array is taken as Z = 1); numpy array
            or CPU tensor.
        path: destination; the format follows the suffix: ``.nii.gz``/``.nii`` (NIfTI), ``.nrrd``, ``.mha``, or
            ``.png`` (2D, Z = 1 only; the geometry is not stored).
        reference: volume whose affine (spacing, origin, direction) the file gets; its shape must equal the array's
            (a reference with an empty array carries geometry only and is not checked).
        dtype: output dtype (e.g. ``np.uint8`` for masks); default: the array's dtype.
        affine: explicit 4×4 RAS affine when there is no reference (identity if both are ``None``).

    Returns:
        ``Path(path)``.

    Raises:
        DataError: shape differs from the reference, unsupported suffix, data that the format cannot hold.

    Examples::

        ref = read_volume("CHAOS/1/T2SPIR/DICOM_anon")
        write_volume(pred.astype("uint8"), "out/pred_1.nii.gz", reference=ref)  # same affine as the DICOM series
    """
    p = Path(path)
    arr = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(p, f"expected a (Z, H, W) array, got shape {arr.shape}")
    if reference is not None:
        # a reference with an empty array carries geometry only (e.g. Volume(np.zeros((0, 0, 0)), affine))
        if np.asarray(reference.array).size and tuple(reference.shape) != tuple(arr.shape):
            raise DataError(
                p, f"array shape {arr.shape} differs from the reference's {reference.shape} ({reference.path})"
            )
        aff = np.asarray(reference.affine, dtype=np.float64)
    else:
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if dtype is not None:
        arr = arr.astype(dtype)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    suffix = path_suffix(p)
    if suffix == ".png":
        if arr.shape[0] != 1:
            raise DataError(p, f"PNG holds one slice; got {arr.shape[0]} slices")
        return write_image2d(arr[0], p, dtype=dtype)
    if suffix in NIFTI_SUFFIXES:
        from monai.data import NibabelWriter

        img = NibabelWriter.create_backend_obj(np.ascontiguousarray(arr.transpose(2, 1, 0)), affine=aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        with atomic_path(p) as tmp:
            img.to_filename(str(tmp))
        return p
    if suffix in SITK_WRITABLE_SUFFIXES:
        import SimpleITK as sitk  # noqa: N813

        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        img = volume_to_sitk(arr, aff)
        with atomic_path(p) as tmp:
            sitk.WriteImage(img, str(tmp), True)
        return p
    raise DataError(p, f"cannot write {suffix!r} files (supported: {', '.join(WRITABLE_SUFFIXES)})")


def write_jpeg(image: np.ndarray, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write an RGB uint8 ``(H, W, 3)`` array as a JPEG atomically (encoded in memory first, so the bytes are
    deterministic)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image), mode="RGB").save(buf, format="JPEG", quality=int(quality))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)
