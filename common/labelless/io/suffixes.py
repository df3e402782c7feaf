# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The one table of file suffixes the package reads and writes (lower case, with the leading dot).

Every module that lists, matches or dispatches files by suffix takes its tuple from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from labelless.utils import path_suffix

__all__ = [
    "NIFTI_SUFFIXES",
    "DICOM_SUFFIXES",
    "PIL_SUFFIXES",
    "SITK_FILE_SUFFIXES",
    "SITK_SUFFIXES",
    "IMAGE_2D_SUFFIXES",
    "MASK_2D_SUFFIXES",
    "JPEG_SUFFIXES",
    "VOLUME_SUFFIXES",
    "SITK_WRITABLE_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "has_suffix",
    "strip_suffix",
]

#: NIfTI (read with nibabel).
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: DICOM files (single frames are read as 2D images).
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Files read with PIL.
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
#: Files read with SimpleITK by :func:`labelless.io.read_volume` (``""``: DICOM files named without suffix).
SITK_FILE_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima", ".vtk", "")
#: Suffixes the SimpleITK ``ImageReader`` claims in MONAI's reader selection.
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz", ".dcm", ".dicom", ".tif", ".tiff", ".vtk")
#: 2D images of image folders (pools, class folders layout B, queries).
IMAGE_2D_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: 2D masks, in the order they are tried for a mask of a given stem.
MASK_2D_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff")
#: JPEG images (FSS-1000 layout A).
JPEG_SUFFIXES = (".jpg", ".jpeg")
#: Volumes (and 2D slices) accepted as few-shot queries.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg")
#: Volumes :func:`labelless.io.write_volume` writes with SimpleITK.
SITK_WRITABLE_SUFFIXES = (".nrrd", ".mha")
#: Files :func:`labelless.io.write_volume` writes.
WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".png")


def has_suffix(path: str | os.PathLike, suffixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is a visible file name ending with one of ``suffixes`` (case-insensitive)."""
    name = Path(path).name
    return not name.startswith(".") and path_suffix(name) in suffixes


def strip_suffix(path: str | os.PathLike) -> str:
    """The file name without its full suffix (``image_1.nii.gz`` -> ``image_1``)."""
    name = Path(path).name
    return name[: len(name) - len(path_suffix(name))]
