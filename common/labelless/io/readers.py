# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Readers (INTERIM minimal NIfTI version; the IO owner replaces it keeping the signatures)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from labelless.errors import DataError

from .volume import Volume

__all__ = ["read_volume"]


def read_volume(path: str | os.PathLike, *, is_label: bool = False, ndim: int | None = 3) -> Volume:
    """Read an image/label file (or DICOM series folder) into a :class:`Volume` ((Z, H, W) array)."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file does not exist")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj)
    except Exception as e:  # noqa: BLE001
        raise DataError(p, f"cannot read file ({type(e).__name__}: {e})") from e
    if data.ndim == 2:
        data = data[:, :, None]
    arr = data.transpose(2, 1, 0)
    if not is_label:
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise DataError(p, "image contains NaN or infinite intensities")
    return Volume(arr, np.asarray(img.affine, dtype=np.float64), p)
