# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""A MONAI ``ImageReader`` backed by SimpleITK: NRRD, MHA/MHD, NIfTI and DICOM (single files or series folders).

MONAI's own ``ITKReader``/``NrrdReader`` need ``itk``/``pynrrd``; SimpleITK is what this project installs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from labelless.errors import DataError
from labelless.utils import path_suffix

from .geometry import affine_from_sitk
from .suffixes import SITK_SUFFIXES

__all__ = ["SimpleITKReader", "read_dicom_series", "dicom_series_files"]

logger = logging.getLogger(__name__)


def dicom_series_files(folder: str | os.PathLike, series_id: str | None = None) -> list[Path]:
    """Slice files of the DICOM series in ``folder``, sorted by position along the slice normal (GDCM).

    Args:
        folder: folder holding the slices (file names and extensions do not matter).
        series_id: SeriesInstanceUID to use when the folder holds several series.

    Raises:
        DataError: not a folder, no DICOM series in it, or several series and no ``series_id``.
    """
    import SimpleITK as sitk  # noqa: N813

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "DICOM folder does not exist")
    ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise DataError(folder, "no DICOM series found in this folder (empty or no readable DICOM files)")
    if series_id is None:
        if len(ids) > 1:
            raise DataError(folder, f"the folder holds {len(ids)} DICOM series {ids}; pass series_id to choose one")
        series_id = ids[0]
    elif series_id not in ids:
        raise DataError(folder, f"DICOM series {series_id!r} not found (available: {ids})")
    return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)]


def read_dicom_series(folder: str | os.PathLike, series_id: str | None = None):
    """Read a DICOM series folder with SimpleITK; slices are sorted by position along the slice normal.

    Args:
        folder: folder holding the slices.
        series_id: SeriesInstanceUID to read when the folder holds several series.

    Returns:
        ``(image, file_names)``: the 3D ``SimpleITK.Image`` and the slice files in the order of the z axis.

    Raises:
        DataError: as :func:`dicom_series_files`, and for unreadable slices.
    """
    import SimpleITK as sitk  # noqa: N813

    files = dicom_series_files(folder, series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise DataError(folder, f"cannot read the DICOM series ({str(e).strip().splitlines()[-1][:300]})") from e
    return img, files


class SimpleITKReader(ImageReader):
    """Load NRRD, MHA/MHD, NIfTI, TIFF and DICOM files or DICOM series folders with SimpleITK.

    Output follows MONAI's reader convention: the array is indexed (x, y, z[, channel]) and the metadata holds the
    RAS ``affine``/``original_affine``, ``spatial_shape``, ``original_channel_dim`` and ``space``; vector pixels
    (e.g. RGB) are a trailing channel. A folder is read as a DICOM series sorted by slice position.

    Args:
        series_id: SeriesInstanceUID to read when a DICOM folder holds several series.
        reverse_indexing: return (x, y, z) like the other MONAI readers (default). ``False`` keeps SimpleITK's
            (z, y, x) array order.

    Examples::

        from monai.transforms import LoadImage
        img = LoadImage(image_only=True)("ct.mha", reader=SimpleITKReader())
        series = LoadImage(image_only=True)("case1/DICOM_anon", reader=SimpleITKReader())
    """

    def __init__(self, series_id: str | None = None, reverse_indexing: bool = True) -> None:
        super().__init__()
        self.series_id = series_id
        self.reverse_indexing = reverse_indexing

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """True for folders (DICOM series) and the suffixes in ``SITK_SUFFIXES``."""
        for f in ensure_tuple(filename):
            if not (Path(f).is_dir() or path_suffix(f) in SITK_SUFFIXES):
                return False
        return True

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs):
        """Read one or several files / DICOM folders; returns a ``SimpleITK.Image`` or a list of them."""
        import SimpleITK as sitk  # noqa: N813

        imgs = []
        for name in ensure_tuple(data):
            p = Path(name)
            if p.is_dir():
                img, files = read_dicom_series(p, kwargs.get("series_id", self.series_id))
                img.SetMetaData("labelless_n_files", str(len(files)))
            else:
                img = sitk.ReadImage(str(p))
            imgs.append(img)
        return imgs if len(imgs) > 1 else imgs[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Array (x, y, z[, c]) and MONAI metadata of one image (or stacked images)."""
        import SimpleITK as sitk  # noqa: N813

        arrays, meta = [], {}
        for i in img if isinstance(img, (list, tuple)) else [img]:  # a SimpleITK image is itself iterable
            arr = sitk.GetArrayFromImage(i)
            sdim = i.GetDimension()
            has_channel = i.GetNumberOfComponentsPerPixel() > 1
            if self.reverse_indexing:
                axes = tuple(range(sdim))[::-1] + ((sdim,) if has_channel else ())
                arr = np.ascontiguousarray(arr.transpose(axes))
            affine = affine_from_sitk(i.GetSpacing(), i.GetOrigin(), i.GetDirection())
            if sdim == 2:  # MONAI convention: (spatial_dims + 1)-square affine
                affine = np.delete(np.delete(affine, 2, axis=0), 2, axis=1)
            header = {
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(i.GetSize()),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if has_channel else float("nan"),
                "spacing": np.asarray(i.GetSpacing()),
                "sitk_origin_lps": np.asarray(i.GetOrigin()),
                "sitk_direction_lps": np.asarray(i.GetDirection()),
                "pixel_type": i.GetPixelIDTypeAsString(),
            }
            arrays.append(arr)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta
