# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Writers (INTERIM minimal NIfTI version; the IO owner replaces it keeping the signatures)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from labelless.utils import atomic_path

from .volume import Volume

__all__ = ["write_volume"]


def write_volume(
    array: np.ndarray, path: str | os.PathLike, reference: Volume | None = None, dtype: np.dtype | None = None
) -> Path:
    """Write a (Z, H, W) array atomically with the geometry of ``reference`` (identity affine if ``None``)."""
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    affine = np.eye(4) if reference is None else reference.affine
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0), affine), str(tmp))
    return Path(path)
