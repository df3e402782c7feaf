# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Image readers and writers that keep geometry (spacing, origin, direction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelless.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first access (labelless.lazy)
    from .checkpoint import WRAPPER_KEYS, average_checkpoints, load_network_weights, read_state_dict
    from .geometry import (
        LPS_TO_RAS,
        affine_2d_to_3d,
        affine_from_sitk,
        flip_rows,
        shift_origin,
        sitk_geometry_from_affine,
        volume_to_sitk,
    )
    from .loading import META_POSTFIX, LoadFile, LoadFileD, LoadFiled, LoadFileDict, loaded_meta
    from .readers import image_format, read_image2d, read_volume
    from .sitk_reader import SimpleITKReader, dicom_series_files, read_dicom_series
    from .suffixes import (
        DICOM_SUFFIXES,
        IMAGE_2D_SUFFIXES,
        JPEG_SUFFIXES,
        MASK_2D_SUFFIXES,
        NIFTI_SUFFIXES,
        PIL_SUFFIXES,
        SITK_FILE_SUFFIXES,
        SITK_SUFFIXES,
        SITK_WRITABLE_SUFFIXES,
        VOLUME_SUFFIXES,
        WRITABLE_SUFFIXES,
        has_suffix,
        strip_suffix,
    )
    from .volume import Volume
    from .writers import write_image2d, write_jpeg, write_volume

_EXPORTS = {
    "read_state_dict": "checkpoint",
    "load_network_weights": "checkpoint",
    "WRAPPER_KEYS": "checkpoint",
    "average_checkpoints": "checkpoint",
    "LPS_TO_RAS": "geometry",
    "affine_from_sitk": "geometry",
    "sitk_geometry_from_affine": "geometry",
    "volume_to_sitk": "geometry",
    "affine_2d_to_3d": "geometry",
    "flip_rows": "geometry",
    "shift_origin": "geometry",
    "META_POSTFIX": "loading",
    "loaded_meta": "loading",
    "LoadFile": "loading",
    "LoadFiled": "loading",
    "LoadFileD": "loading",
    "LoadFileDict": "loading",
    "read_volume": "readers",
    "read_image2d": "readers",
    "image_format": "readers",
    "SimpleITKReader": "sitk_reader",
    "read_dicom_series": "sitk_reader",
    "dicom_series_files": "sitk_reader",
    "NIFTI_SUFFIXES": "suffixes",
    "DICOM_SUFFIXES": "suffixes",
    "PIL_SUFFIXES": "suffixes",
    "SITK_FILE_SUFFIXES": "suffixes",
    "SITK_SUFFIXES": "suffixes",
    "IMAGE_2D_SUFFIXES": "suffixes",
    "MASK_2D_SUFFIXES": "suffixes",
    "JPEG_SUFFIXES": "suffixes",
    "VOLUME_SUFFIXES": "suffixes",
    "SITK_WRITABLE_SUFFIXES": "suffixes",
    "WRITABLE_SUFFIXES": "suffixes",
    "has_suffix": "suffixes",
    "strip_suffix": "suffixes",
    "Volume": "volume",
    "write_volume": "writers",
    "write_image2d": "writers",
    "write_jpeg": "writers",
}
_SUBMODULES = (
    "checkpoint",
    "geometry",
    "loading",
    "readers",
    "sitk_reader",
    "suffixes",
    "volume",
    "writers",
)

__all__ = [
    "read_state_dict",
    "load_network_weights",
    "average_checkpoints",
    "WRAPPER_KEYS",
    "LPS_TO_RAS",
    "affine_from_sitk",
    "sitk_geometry_from_affine",
    "volume_to_sitk",
    "affine_2d_to_3d",
    "flip_rows",
    "shift_origin",
    "META_POSTFIX",
    "loaded_meta",
    "LoadFile",
    "LoadFiled",
    "LoadFileD",
    "LoadFileDict",
    "read_volume",
    "read_image2d",
    "image_format",
    "SimpleITKReader",
    "read_dicom_series",
    "dicom_series_files",
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
    "Volume",
    "write_volume",
    "write_image2d",
    "write_jpeg",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, __all__)
