# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Superpixel pseudo-labels and body masks (fewshot_protocol.md §3) as functions and MONAI transforms.

Array convention: every function and transform takes a volume ``(Z, H, W)`` in the project's slice orientation
(``volume[z]`` is an axial slice indexed [row = y, col = x], i.e. :attr:`labelless.io.Volume.array`) or a single
slice ``(H, W)``; numpy arrays and torch tensors are accepted and the output has the input's type. MONAI
channel-first arrays (``(1, Z, H, W)`` or ``(1, X, Y, Z)`` from ``LoadImage``) are rejected with a clear error:
squeeze the channel and bring the axes to (Z, H, W) first (the in-plane orientation changes the superpixels).

The superpixels must be computed on the **preprocessed, not z-scored** intensities (CT in [0, 255], MR the
percentile-clipped raw values): Felzenszwalb's ``scale`` acts on raw intensity differences. Slices are passed to
scikit-image as float64, like the reference (which reads the float64 files with SimpleITK).

Pipeline of the protocol (per axial slice):

1. ``raw = felzenszwalb(slice, scale=1, sigma=1, min_size=400)`` (:func:`compute_superpixels`);
2. ``body = body_mask_slice(slice, t)``: ``slice > t``, largest 8-connected component, 2D hole filling, the raw
   threshold map when there is no component (:func:`body_mask`);
3. ``labels, R = relabel_within_body(raw, body)``: ids outside the body -> 0, the others -> contiguous 1..R, every
   superpixel inside the body kept (the reference drops Felzenszwalb region 0 and leaves an id gap: not copied).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy
from scipy import ndimage
from skimage.segmentation import felzenszwalb, slic

from labelless.data.presets import DatasetPreset, get_preset
from labelless.errors import ConfigError, DataError

__all__ = [
    "SUPERPIXEL_METHODS",
    "felzenszwalb_slices",
    "slic_slices",
    "slic_volume",
    "compute_superpixels",
    "body_threshold",
    "preset_body_threshold",
    "body_mask_slice",
    "body_mask",
    "relabel_within_body",
    "mask_superpixels",
    "Superpixels",
    "BodyMask",
    "Superpixelsd",
    "SuperpixelsD",
    "SuperpixelsDict",
    "BodyMaskd",
    "BodyMaskD",
    "BodyMaskDict",
]

SUPERPIXEL_METHODS = ("felzenszwalb", "slic", "slic3d")


# ---------------------------------------------------------------------------------------------------- checks
def _as_volume(img: Any, name: str = "image") -> tuple[np.ndarray, bool]:
    """(Z, H, W) float64 numpy copy of ``img`` and whether the input was a single (H, W) slice."""
    arr = convert_to_numpy(img)
    if arr.ndim == 2:
        arr, single = arr[None], True
    elif arr.ndim == 3:
        single = False
    else:
        raise DataError(
            name,
            f"expected a (Z, H, W) volume or an (H, W) slice, got shape {tuple(arr.shape)} "
            "(squeeze MONAI's channel axis and use the (Z, H, W) slice orientation)",
        )
    if arr.size == 0:
        raise DataError(name, f"empty array of shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "biuf":
        raise DataError(name, f"expected numeric intensities, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise DataError(name, "contains NaN or infinite intensities")
    return arr, single


def _restore(out: np.ndarray, single: bool, like: Any, dtype: Any) -> NdarrayOrTensor:
    out = out[0] if single else out
    if isinstance(like, torch.Tensor):
        tdtype = {np.int32: torch.int32, np.uint8: torch.uint8}[dtype]
        return convert_to_dst_type(out, dst=like, dtype=tdtype)[0]
    return out.astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------------- superpixels
def felzenszwalb_slices(volume: np.ndarray, scale: float = 1.0, sigma: float = 1.0, min_size: int = 400) -> np.ndarray:
    """Felzenszwalb–Huttenlocher superpixels of every axial slice (unmasked, scikit-image ids 0..n-1 per slice).

    Args:
        volume: (Z, H, W) preprocessed (not z-scored) intensities.
        scale, sigma, min_size: scikit-image ``felzenszwalb`` parameters (protocol: 1, 1, 400).

    Returns:
        (Z, H, W) int32, ``out[z] == felzenszwalb(volume[z].astype(float64), scale, sigma, min_size)``.
    """
    vol, _ = _as_volume(volume, "volume")
    out = np.empty(vol.shape, dtype=np.int32)
    for z in range(vol.shape[0]):
        out[z] = felzenszwalb(vol[z], scale=float(scale), sigma=float(sigma), min_size=int(min_size))
    return out


def slic_slices(volume: np.ndarray, n_segments: int = 100, compactness: float = 10.0, sigma: float = 1.0) -> np.ndarray:
    """SLIC superpixels of every axial slice (unmasked, ids 0..n-1 per slice).

    ``compactness`` is in intensity units (skimage applies no rescaling to float grey images): scale it with the
    intensity range (e.g. ~10 for [0, 255] CT, ~30 for CHAOS MR).
    """
    vol, _ = _as_volume(volume, "volume")
    out = np.empty(vol.shape, dtype=np.int32)
    for z in range(vol.shape[0]):
        out[z] = slic(
            vol[z], n_segments=int(n_segments), compactness=float(compactness), sigma=float(sigma),
            start_label=0, channel_axis=None,
        )  # fmt: skip
    return out


def slic_volume(
    volume: np.ndarray,
    n_segments: int = 1000,
    compactness: float = 10.0,
    sigma: float = 1.0,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """3D SLIC supervoxels of the whole volume (ADNet / Q-Net style; not the 2D superpixels of SSL-ALPNet).

    Args:
        volume: (Z, H, W) intensities.
        n_segments, compactness, sigma: scikit-image ``slic`` parameters (sigma in voxels of the finest axis).
        spacing: voxel size (z, y, x) in mm; anisotropic volumes should pass it (e.g. (7.7, 1.25, 1.25)).

    Returns:
        (Z, H, W) int32 supervoxel ids 0..n-1, shared across slices.
    """
    vol, _ = _as_volume(volume, "volume")
    sp = None if spacing is None else np.asarray(spacing, dtype=np.float64)
    if sp is not None and (sp.shape != (3,) or np.any(sp <= 0)):
        raise ConfigError(f"spacing must be three positive voxel sizes (z, y, x), got {spacing!r}")
    sig = float(sigma) if sp is None else float(sigma) * sp.min() / sp  # smooth by ``sigma`` voxels in-plane
    out = slic(
        vol, n_segments=int(n_segments), compactness=float(compactness), sigma=sig, spacing=sp,
        start_label=0, channel_axis=None,
    )  # fmt: skip
    return out.astype(np.int32)


def compute_superpixels(
    volume: np.ndarray,
    method: str = "felzenszwalb",
    scale: float = 1.0,
    sigma: float = 1.0,
    min_size: int = 400,
    n_segments: int | None = None,
    compactness: float = 10.0,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Unmasked superpixels of a (Z, H, W) volume with ``method`` ``felzenszwalb`` (default), ``slic``, ``slic3d``.

    Args:
        volume: (Z, H, W) preprocessed (not z-scored) intensities.
        method: ``"felzenszwalb"`` (per slice, the protocol), ``"slic"`` (per slice) or ``"slic3d"`` (supervoxels).
        scale, min_size: Felzenszwalb parameters.
        sigma: Gaussian pre-smoothing of every method.
        n_segments: SLIC segments per slice (default 100) or per volume (``slic3d``, default 1000).
        compactness: SLIC compactness (intensity units).
        spacing: (z, y, x) voxel size for ``slic3d``.

    Returns:
        (Z, H, W) int32 ids (per slice for the 2D methods, per volume for ``slic3d``).

    Raises:
        ConfigError: unknown method.
        DataError: bad volume (shape, NaN).
    """
    m = str(method).lower()
    if m == "felzenszwalb":
        return felzenszwalb_slices(volume, scale=scale, sigma=sigma, min_size=min_size)
    if m == "slic":
        return slic_slices(volume, n_segments=n_segments or 100, compactness=compactness, sigma=sigma)
    if m == "slic3d":
        return slic_volume(volume, n_segments=n_segments or 1000, compactness=compactness, sigma=sigma, spacing=spacing)
    raise ConfigError(f"unknown superpixel method {method!r}; expected one of {SUPERPIXEL_METHODS}")


# ---------------------------------------------------------------------------------------------------- body mask
def body_threshold(volume: np.ndarray, threshold: float | None = None, threshold_rel: float = 0.05) -> float:
    """Body-mask threshold: ``threshold`` when given, else ``threshold_rel`` × the 99.5th percentile (+ 1e-4).

    The relative rule is the Card-MRI decision of fewshot_protocol.md §3 (reconstruction); the percentile is taken
    over the whole array given (a volume, or one slice when a slice is given).
    """
    if threshold is not None:
        return float(threshold)
    arr = convert_to_numpy(volume)
    if arr.size == 0:
        raise DataError("volume", "empty array: cannot compute a body threshold")
    return 1e-4 + float(threshold_rel) * float(np.percentile(arr, 99.5))


def preset_body_threshold(volume: np.ndarray, preset: str | DatasetPreset) -> float:
    """Body threshold of a dataset preset (``body_threshold``, or ``body_threshold_rel`` × 99.5th percentile)."""
    p = get_preset(preset)
    return body_threshold(volume, p.body_threshold, p.body_threshold_rel)


_EIGHT = np.ones((3, 3), dtype=bool)


def body_mask_slice(slice2d: np.ndarray, threshold: float) -> np.ndarray:
    """Body mask of one (H, W) slice: ``slice > threshold``, largest 8-connected component, holes filled (2D).

    When nothing exceeds the threshold the raw threshold map (all false) is returned, as in the reference.

    Returns:
        (H, W) bool.
    """
    raw = np.asarray(slice2d) > threshold
    if not raw.any():
        return raw
    lab, n = ndimage.label(raw, structure=_EIGHT)
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    counts[0] = 0
    largest = lab == int(np.argmax(counts))  # ties -> lowest label (first in raster order), like the reference
    return ndimage.binary_fill_holes(largest)


def body_mask(volume: np.ndarray, threshold: float) -> np.ndarray:
    """Per-slice body masks of a (Z, H, W) volume as uint8 (0/1); see :func:`body_mask_slice`."""
    vol, single = _as_volume(volume, "volume")
    out = np.empty(vol.shape, dtype=np.uint8)
    for z in range(vol.shape[0]):
        out[z] = body_mask_slice(vol[z], threshold)
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------------- relabelling
def relabel_within_body(sp_slice: np.ndarray, body_slice: np.ndarray) -> tuple[np.ndarray, int]:
    """Mask one slice's superpixels with the body and relabel them to contiguous ids 1..R.

    Every superpixel with at least one pixel inside the body is kept (including the one scikit-image numbers 0);
    new ids follow the order of the old ones. Pixels outside the body get 0.

    Args:
        sp_slice: (H, W) integer superpixel ids (any values, e.g. Felzenszwalb's 0..n-1).
        body_slice: (H, W) body mask (nonzero = body).

    Returns:
        ``(labels, R)``: int32 (H, W) ids in 0..R with every id 1..R present, and R.

    Raises:
        DataError: shape mismatch or non-integer superpixel ids.
    """
    sp = convert_to_numpy(sp_slice)
    body = convert_to_numpy(body_slice).astype(bool)
    if sp.shape != body.shape or sp.ndim != 2:
        raise DataError("superpixels", f"superpixel slice {sp.shape} and body mask {body.shape} must be equal (H, W)")
    if sp.dtype.kind == "f":
        if not np.all(np.equal(np.mod(sp, 1), 0)):
            raise DataError("superpixels", "superpixel ids must be integers")
        sp = sp.astype(np.int64)
    out = np.zeros(sp.shape, dtype=np.int32)
    inside = sp[body]
    if inside.size == 0:
        return out, 0
    uniq, inv = np.unique(inside, return_inverse=True)
    out[body] = inv.reshape(-1).astype(np.int32) + 1
    return out, int(uniq.size)


def mask_superpixels(
    superpixels: np.ndarray, body: np.ndarray, per_slice: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Mask and relabel a (Z, H, W) superpixel volume with its body mask.

    Args:
        superpixels: (Z, H, W) ids.
        body: (Z, H, W) body mask.
        per_slice: relabel every slice to 1..R(z) (the protocol); ``False`` relabels the whole volume to 1..R
            (ids shared across slices, for 3D supervoxels).

    Returns:
        ``(labels, counts)``: int32 (Z, H, W) ids and int64 (Z,) numbers of superpixels per slice (for
        ``per_slice=False``: the number of distinct ids present in each slice).
    """
    sp = convert_to_numpy(superpixels)
    bm = convert_to_numpy(body)
    if sp.ndim != 3 or sp.shape != bm.shape:
        raise DataError("superpixels", f"superpixels {sp.shape} and body mask {bm.shape} must be equal (Z, H, W)")
    out = np.zeros(sp.shape, dtype=np.int32)
    counts = np.zeros(sp.shape[0], dtype=np.int64)
    if per_slice:
        for z in range(sp.shape[0]):
            out[z], counts[z] = relabel_within_body(sp[z], bm[z])
    else:
        flat, _ = relabel_within_body(sp.reshape(-1, sp.shape[-1]), bm.reshape(-1, bm.shape[-1]))
        out = flat.reshape(sp.shape)
        for z in range(sp.shape[0]):
            counts[z] = np.unique(out[z][out[z] > 0]).size
    return out, counts


# ---------------------------------------------------------------------------------------------------- transforms
class BodyMask(Transform):
    """Per-slice body mask (fewshot_protocol.md §3) of a (Z, H, W) volume or an (H, W) slice.

    Args:
        threshold: absolute threshold (CHAOS MR ``1e-4 + 50``, CT ``1e-4``); ``None`` uses ``threshold_rel``.
        threshold_rel: fraction of the 99.5th percentile of the input used when ``threshold`` is ``None``.

    Returns (from ``__call__``) a uint8 0/1 array of the input's shape and type.

    Examples::

        mask = BodyMask(threshold=50.0001)(volume)              # (Z, H, W) uint8
        mask = BodyMask.from_preset("cmr")(volume)              # 0.05 x 99.5th percentile
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, threshold: float | None = None, threshold_rel: float = 0.05) -> None:
        self.threshold = threshold
        self.threshold_rel = threshold_rel

    @classmethod
    def from_preset(cls, preset: str | DatasetPreset) -> BodyMask:
        """The body mask rule of a dataset preset (``chaos``, ``synapse``, ``cmr``, phantoms)."""
        p = get_preset(preset)
        return cls(p.body_threshold, p.body_threshold_rel)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        vol, single = _as_volume(img, "image")
        t = body_threshold(vol, self.threshold, self.threshold_rel)
        return _restore(body_mask(vol, t), single, img, np.uint8)


class Superpixels(Transform):
    """Superpixel pseudo-label map of a (Z, H, W) volume or an (H, W) slice (fewshot_protocol.md §3).

    Without a body mask the output is the unmasked map (scikit-image ids). With ``body_mask`` the ids outside the
    body are 0 and the others are relabelled to contiguous 1..R per slice (:func:`relabel_within_body`), or per
    volume when ``per_slice_ids=False``.

    Args:
        method: ``"felzenszwalb"`` (default; protocol), ``"slic"`` (per slice) or ``"slic3d"`` (supervoxels).
        scale: Felzenszwalb scale (protocol: 1).
        sigma: Gaussian pre-smoothing (protocol: 1).
        min_size: Felzenszwalb minimum component size (protocol: 400).
        n_segments: SLIC segments (per slice, or per volume for ``slic3d``).
        compactness: SLIC compactness (intensity units).
        spacing: (z, y, x) voxel size for ``slic3d``.
        per_slice_ids: relabel per slice (the protocol) or over the whole volume.

    Examples::

        sp = Superpixels()(volume)                                # unmasked, per-slice felzenszwalb
        sp = Superpixels()(volume, body_mask=BodyMask(50.0001)(volume))  # masked, ids 1..R per slice
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        method: str = "felzenszwalb",
        scale: float = 1.0,
        sigma: float = 1.0,
        min_size: int = 400,
        n_segments: int | None = None,
        compactness: float = 10.0,
        spacing: Sequence[float] | None = None,
        per_slice_ids: bool = True,
    ) -> None:
        if str(method).lower() not in SUPERPIXEL_METHODS:
            raise ConfigError(f"unknown superpixel method {method!r}; expected one of {SUPERPIXEL_METHODS}")
        self.method = str(method).lower()
        self.kwargs = dict(
            scale=scale, sigma=sigma, min_size=min_size, n_segments=n_segments, compactness=compactness,
            spacing=spacing,
        )  # fmt: skip
        self.per_slice_ids = per_slice_ids

    def __call__(self, img: NdarrayOrTensor, body_mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        vol, single = _as_volume(img, "image")
        if single and self.method == "slic3d":
            raise DataError("image", "slic3d needs a (Z, H, W) volume, got a single slice")
        sp = compute_superpixels(vol, self.method, **self.kwargs)
        if body_mask is not None:
            bm = convert_to_numpy(body_mask)
            bm = bm[None] if single and bm.ndim == 2 else bm
            if bm.shape != sp.shape:
                raise DataError("body_mask", f"body mask shape {bm.shape} does not match the image {sp.shape}")
            sp, _ = mask_superpixels(sp, bm, per_slice=self.per_slice_ids)
        return _restore(sp, single, img, np.int32)


def _out_keys(keys: tuple, output_keys: KeysCollection | None, what: str) -> tuple:
    if output_keys is None:
        return keys
    out = (
        (output_keys,)
        if isinstance(output_keys, (str, bytes)) or not isinstance(output_keys, Sequence)
        else tuple(output_keys)
    )
    if len(out) != len(keys):
        raise ConfigError(f"{what}: {len(out)} output keys for {len(keys)} keys")
    return out


class BodyMaskd(MapTransform):
    """Dictionary twin of :class:`BodyMask`.

    Args:
        keys: image keys.
        threshold, threshold_rel: see :class:`BodyMask`.
        output_keys: where to store each mask (default: replace the image).
        allow_missing_keys: skip missing keys instead of raising.

    Examples::

        d = BodyMaskd("image", threshold=50.0001, output_keys="body")({"image": volume})
    """

    backend = BodyMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float | None = None,
        threshold_rel: float = 0.05,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = BodyMask(threshold, threshold_rel)
        self.output_keys = _out_keys(self.keys, output_keys, "BodyMaskd")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key])
        return d


class Superpixelsd(MapTransform):
    """Dictionary twin of :class:`Superpixels`.

    Args:
        keys: image keys.
        mask_keys: body-mask key per image key (``None``: unmasked map).
        output_keys: where to store each map (default: replace the image).
        allow_missing_keys: skip missing keys instead of raising.
        method, scale, sigma, min_size, n_segments, compactness, spacing, per_slice_ids: see :class:`Superpixels`.

    Examples::

        t = Compose([BodyMaskd("image", 50.0001, output_keys="body"),
                     Superpixelsd("image", mask_keys="body", output_keys="superpixels")])
        d = t({"image": volume})
    """

    backend = Superpixels.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: KeysCollection | None = None,
        output_keys: KeysCollection | None = None,
        method: str = "felzenszwalb",
        scale: float = 1.0,
        sigma: float = 1.0,
        min_size: int = 400,
        n_segments: int | None = None,
        compactness: float = 10.0,
        spacing: Sequence[float] | None = None,
        per_slice_ids: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = Superpixels(method, scale, sigma, min_size, n_segments, compactness, spacing, per_slice_ids)
        self.mask_keys = None if mask_keys is None else _out_keys(self.keys, mask_keys, "Superpixelsd mask_keys")
        self.output_keys = _out_keys(self.keys, output_keys, "Superpixelsd")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        masks = self.mask_keys or (None,) * len(self.keys)
        for key, out_key, mask_key in self.key_iterator(d, self.output_keys, masks):
            if mask_key is not None and mask_key not in d:
                raise DataError(str(mask_key), f"body-mask key {mask_key!r} missing from the data dictionary")
            d[out_key] = self.transform(d[key], None if mask_key is None else d[mask_key])
        return d


SuperpixelsD = SuperpixelsDict = Superpixelsd
BodyMaskD = BodyMaskDict = BodyMaskd
