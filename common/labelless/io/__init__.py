# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Image readers and writers that keep geometry (spacing, origin, direction)."""

from __future__ import annotations

from .checkpoint import read_state_dict
from .readers import image_format, read_image2d, read_volume
from .sitk_reader import SimpleITKReader, dicom_series_files, read_dicom_series
from .volume import Volume
from .writers import write_image2d, write_volume

__all__ = [
    "Volume",
    "read_volume",
    "read_image2d",
    "image_format",
    "write_volume",
    "write_image2d",
    "SimpleITKReader",
    "read_dicom_series",
    "dicom_series_files",
    "read_state_dict",
]
