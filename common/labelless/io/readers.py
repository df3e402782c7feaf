# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Readers: NIfTI, NRRD/MHA/MHD, DICOM (files and series folders) and 2D PNG/JPG/GIF/BMP/TIFF into :class:`Volume`.

All formats go through MONAI's ``LoadImage`` with an explicit reader: ``NibabelReader`` for NIfTI, the
SimpleITK-backed :class:`~labelless.io.sitk_reader.SimpleITKReader` for NRRD/MHA/MHD/DICOM, and ``PILReader`` for
2D images. The result is always a (Z, H, W) array in SimpleITK order ``[z, row = y, col = x]`` with the RAS affine of
the voxel axes (x, y, z), so ``read -> write(reference=...) -> read`` keeps spacing, origin and direction.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from labelless.errors import DataError
from labelless.utils import path_suffix

from .geometry import affine_2d_to_3d
from .sitk_reader import SimpleITKReader
from .suffixes import NIFTI_SUFFIXES, PIL_SUFFIXES, SITK_FILE_SUFFIXES
from .volume import Volume

__all__ = ["read_volume", "read_image2d", "image_format"]


_LOADER = None


def _loader():
    """One shared ``monai.transforms.LoadImage`` (readers are passed per call)."""
    global _LOADER
    if _LOADER is None:
        from monai.transforms import LoadImage

        # the optional GPU DICOM decoder announces its absence (a warning and a log line); irrelevant here
        plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
        level = plugin_log.level
        plugin_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _LOADER = LoadImage(image_only=True, dtype=None)
        finally:
            plugin_log.setLevel(level)
    return _LOADER


def _nibabel_reader():
    """MONAI ``NibabelReader`` that also reads big-endian NIfTI files (MONAI 1.6.1 hands torch a byte-swapped array
    and fails)."""
    from monai.data import NibabelReader

    class _NativeOrderNibabelReader(NibabelReader):
        def _get_array_data(self, img, filename):
            data = np.asanyarray(super()._get_array_data(img, filename))
            if not data.dtype.isnative:
                data = data.astype(data.dtype.newbyteorder("="))
            return data

    return _NativeOrderNibabelReader()


def image_format(path: str | os.PathLike) -> str:
    """``"dicom_series"``, ``"nifti"``, ``"image2d"`` (PIL) or ``"sitk"`` for a path; ``DataError`` if unknown."""
    p = Path(path)
    if p.is_dir():
        return "dicom_series"
    suffix = path_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in PIL_SUFFIXES:
        return "image2d"
    if suffix in SITK_FILE_SUFFIXES or suffix.lstrip(".").isdigit():  # DICOM files are often named without suffix
        return "sitk"
    raise DataError(
        p,
        f"unsupported file type {suffix!r} (supported: folders of DICOM slices, "
        f"{', '.join(NIFTI_SUFFIXES + PIL_SUFFIXES + SITK_FILE_SUFFIXES[:-1])})",
    )


def _pil_converter(is_label: bool):
    """Normalise PIL modes: palette/bilevel/alpha/colour-space variants -> L, RGB or (labels) palette indices."""

    def convert(img):
        mode = img.mode
        if mode == "P" or mode == "PA":
            pal = np.asarray(img.convert("RGB"))
            if pal.ndim == 3 and np.array_equal(pal[..., 0], pal[..., 1]) and np.array_equal(pal[..., 0], pal[..., 2]):
                return img.convert("L")  # grey palette (e.g. 0/255 GIF masks): the grey values
            return img.convert("P") if is_label else img.convert("RGB")  # colour palette: class indices for labels
        if mode == "1" or mode == "LA":
            return img.convert("L")
        if mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
            return img.convert("RGB")
        return img

    return convert


def _load(path: Path, fmt: str, is_label: bool, series_id: str | None):
    """(data in MONAI/PIL order, affine, spatial ndim, has_channel) via MONAI LoadImage."""
    from monai.data import PILReader

    if fmt == "nifti":
        reader = _nibabel_reader()
    elif fmt == "image2d":
        reader = PILReader(converter=_pil_converter(is_label), reverse_indexing=False)
    else:
        reader = SimpleITKReader(series_id=series_id)
    try:
        with warnings.catch_warnings():  # PIL hands out read-only arrays; torch warns once, harmlessly
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            img = _loader()(path, reader=reader)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend failure becomes a DataError naming the file
        msg = str(e).strip().splitlines()
        detail = msg[-1] if msg else ""
        raise DataError(path, f"cannot read file ({type(e).__name__}: {detail[:300]})") from e
    data = np.asarray(img.detach().cpu().numpy())
    affine = np.asarray(img.affine.detach().cpu().numpy(), dtype=np.float64)
    meta = img.meta
    if fmt == "image2d":
        if not is_label and str(meta.get("mode", "")).startswith("I;16"):
            # 16-bit PNG/TIFF image: MONAI hands the values over as int32 (torch has no uint16); keep them 16-bit so
            # that they are scaled by 65535 and reported as 16-bit, not as "int32" (labels keep MONAI's int32)
            data = data.astype(np.uint16)
        has_channel = data.ndim == 3
        return data, np.eye(4), 2, has_channel
    has_channel = not np.isnan(float(meta.get("original_channel_dim", float("nan"))))
    if fmt == "nifti":
        # squeeze trailing singleton dimensions (e.g. x, y, z, 1); more than 3 real dimensions is an error
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim > 3:
            raise DataError(
                path, f"{data.ndim}D data of shape {data.shape}: expected a single 2D or 3D volume (not a 4D series)"
            )
        return data, affine_2d_to_3d(affine) if data.ndim == 2 else affine, data.ndim, False
    sdim = data.ndim - (1 if has_channel else 0)
    return data, affine_2d_to_3d(affine) if sdim == 2 else affine, sdim, has_channel


def read_volume(
    path: str | os.PathLike, *, is_label: bool = False, ndim: int | None = 3, series_id: str | None = None
) -> Volume:
    """Read an image or label file (or a DICOM series folder) into a :class:`Volume` with a (Z, H, W) array.

    Args:
        path: a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), DICOM file, a folder holding one DICOM
            series (slices sorted by position), or a 2D image (.png, .jpg, .bmp, .gif, .tif).
        is_label: labels keep their stored dtype (e.g. float64 or uint8 class values); images become float32.
        ndim: 3 requires a 3D volume (a one-slice 3D file, e.g. a single DICOM slice, is fine), 2 requires a 2D
            image (or a one-slice volume), ``None`` accepts both. 2D images are returned with Z = 1.
        series_id: DICOM SeriesInstanceUID when a folder holds several series.

    Returns:
        The volume. For RGB 2D images ``array`` holds the grey (ITU-R 601 luma) version, ``channels`` the
        (H, W, 3) colour data; RGB labels are accepted only when their three channels are equal.

    Raises:
        DataError: missing/unreadable/truncated file, unsupported type, NaN or infinite values, a 2D file where a
            3D volume is expected (or the reverse), 4D data, an empty DICOM folder, colour labels.

    Examples::

        vol = read_volume("image_1.nii.gz")                 # (Z, H, W) float32
        lab = read_volume("label_1.nii.gz", is_label=True)  # stored dtype, e.g. float64
        dcm = read_volume("CHAOS/1/T2SPIR/DICOM_anon")      # DICOM series folder
        rgb = read_volume("ISIC_0001.jpg", ndim=None)        # rgb.channels.shape == (H, W, 3)
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file does not exist")
    fmt = image_format(p)
    data, affine, sdim, has_channel = _load(p, fmt, is_label, series_id)
    channels = None
    if has_channel:
        if sdim != 2:
            raise DataError(p, f"multi-channel {sdim}D data of shape {data.shape} is not supported")
        if fmt != "image2d":  # MONAI (x, y, c) -> (y, x, c)
            data = data.transpose(1, 0, 2)
        data = data[..., :3] if data.shape[-1] >= 3 else data[..., :1].repeat(3, axis=-1)
        if is_label:
            if not (np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2])):
                raise DataError(p, "colour label image (channels differ); expected a grey or palette mask")
            grey = data[..., 0]
        else:
            channels = np.ascontiguousarray(data)
            grey = data.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        arr = grey[None]
    elif sdim == 2:
        arr = (data if fmt == "image2d" else data.T)[None]
    else:
        arr = data.transpose(2, 1, 0)
    if ndim == 3 and sdim == 2:
        raise DataError(p, f"2D image of shape {arr.shape[1:]} where a 3D volume is expected")
    if ndim == 2 and arr.shape[0] > 1:
        raise DataError(p, f"3D volume of shape {arr.shape} where a 2D image is expected")
    if ndim not in (None, 2, 3):
        raise ValueError(f"ndim must be 2, 3 or None, got {ndim!r}")
    orig_dtype = str(arr.dtype)
    arr = np.ascontiguousarray(arr)
    if not is_label:
        arr = arr.astype(np.float32, copy=False)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError(p, f"{'label' if is_label else 'image'} contains NaN or infinite values")
    meta = {"format": fmt, "dtype": orig_dtype, "spatial_ndim": sdim}
    return Volume(arr, np.asarray(affine, dtype=np.float64), p, channels, meta)


def read_image2d(path: str | os.PathLike, *, is_label: bool = False, mode: str | None = None) -> np.ndarray:
    """Read a 2D image as (H, W) (grey) or (H, W, 3) (colour), the layout 2D datasets use.

    Args:
        path: PNG/JPG/BMP/GIF/TIFF file, or any file :func:`read_volume` reads that holds one slice.
        is_label: masks: keep the stored dtype; palette masks give their grey values when the palette is grey
            (e.g. 0/255 GIF masks), else their palette indices.
        mode: ``None`` returns the data as stored (grey or RGB), ``"L"`` always grey (luma), ``"RGB"`` always
            (H, W, 3) (grey repeated).

    Returns:
        float32 array for images, the stored dtype for labels.

    Raises:
        DataError: as :func:`read_volume`, and for a volume with more than one slice.
    """
    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode must be None, 'L' or 'RGB', got {mode!r}")
    vol = read_volume(path, is_label=is_label, ndim=2)
    grey = vol.array[0]
    if vol.channels is not None and mode != "L":
        return vol.channels.astype(np.float32) if not is_label else vol.channels
    if mode == "RGB":
        return np.repeat(grey[..., None], 3, axis=-1)
    return grey
