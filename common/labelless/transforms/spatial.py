# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""In-plane resizing and slice selection of the inference runners, as MONAI array/dict twins.

- :class:`ResizeInPlane`: resize the last two axes (to the network's grid before the forward pass, back to the
  input's size after it). It reproduces the resizes the runners always did, bit for bit: bilinear without corner
  alignment (antialiased only when shrinking, if asked), nearest, optional clipping, and either one multi-channel
  image (``[1, C, H, W]``, as :func:`labelless.data.images.resize_image`) or a stack of slices resized one by one
  (``[Z, 1, H, W]``, ``slice_wise``). The two layouts are equal in exact arithmetic but not always in the last bit
  of float32, which is why the choice is explicit.
- :class:`ZeroSlices`: zero some slices of a ``(Z, H, W)`` mask (the few-shot volume runner's clean-up of the
  query's empty slices).

The dictionary twins read sizes and slice lists from the item: ``ResizeInPlaned(size_of="image")`` resizes back to
the size ``image`` had when :class:`~labelless.io.loading.LoadFiled` read it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from labelless.errors import ConfigError, DataError
from labelless.io.loading import META_POSTFIX, loaded_meta
from labelless.options import as_float, as_int

__all__ = [
    "ResizeInPlane",
    "ResizeInPlaned",
    "ResizeInPlaneD",
    "ResizeInPlaneDict",
    "ZeroSlices",
    "ZeroSlicesd",
    "ZeroSlicesD",
    "ZeroSlicesDict",
]

_MODES = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")


def _size_pair(size: Any, name: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        s = as_int(size, name, 1)
        return (s, s)
    if isinstance(size, (Sequence, np.ndarray)) and not isinstance(size, (str, bytes)) and len(size) >= 2:
        return (as_int(size[-2], name, 1), as_int(size[-1], name, 1))
    raise ConfigError(f"{name} must be an integer or an (H, W) pair, got {size!r}")


def _source(data: Mapping[Hashable, Any], key: Hashable | None) -> str | None:
    """The file ``key`` was loaded from (its meta dict), for error messages; ``None`` when unknown."""
    meta = data.get(f"{key}_{META_POSTFIX}") if key is not None else None
    return meta.get("filename_or_obj") if isinstance(meta, Mapping) else None


class ResizeInPlane(Transform):
    """Resize the last two axes of ``(H, W)``, ``(C, H, W)`` or ``(Z, H, W)`` data (numpy in → numpy out, tensor in →
    tensor out on the same device; float32).

    Args:
        spatial_size: the output ``(H, W)`` or one side for a square; ``None`` keeps the size.
        mode: ``torch.nn.functional.interpolate`` mode (``bilinear``, ``nearest``, ...); linear modes use
            ``align_corners=False``.
        antialias: antialias (bilinear/bicubic only) when the data shrinks along an axis.
        clip: ``(low, high)`` to clamp the result to, or ``None``.
        slice_wise: resize the leading planes as a batch of one-channel images (``[Z, 1, H, W]``) instead of one
            multi-channel image (``[1, C, H, W]``).
        divisible_by: with ``spatial_size=None``, the kept height and width must be multiples of this (e.g. 8 for the
            few-shot encoders); a clear error otherwise.

    Data already at the output size is returned unchanged (as float32; clipped if asked).

    Raises:
        ConfigError: an unknown mode, a bad size.
        DataError: data with fewer than 2 axes; with ``spatial_size=None``, a size that is not a multiple of
            ``divisible_by``.

    Examples::

        net_in = ResizeInPlane(256, slice_wise=True)(volume)            # (Z, H, W) -> (Z, 256, 256)
        image = ResizeInPlane(224, antialias=True, clip=(0, 1))(rgb)   # [3, H, W] -> [3, 224, 224]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        spatial_size: int | Sequence[int] | None = None,
        mode: str = "bilinear",
        antialias: bool = False,
        clip: Sequence[float] | None = None,
        slice_wise: bool = False,
        divisible_by: int = 1,
    ) -> None:
        self.spatial_size = _size_pair(spatial_size, "spatial_size")
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.antialias = bool(antialias)
        if clip is not None:
            if isinstance(clip, (str, bytes)) or len(clip) != 2:
                raise ConfigError(f"clip must be a (low, high) pair or null, got {clip!r}")
            clip = (as_float(clip[0], "clip low"), as_float(clip[1], "clip high"))
        self.clip = clip
        self.slice_wise = bool(slice_wise)
        self.divisible_by = as_int(divisible_by, "divisible_by", 1)

    def __call__(
        self, img: NdarrayOrTensor, spatial_size: int | Sequence[int] | None = None, source: Any = None
    ) -> NdarrayOrTensor:
        """Resize ``img``; ``spatial_size`` overrides the constructor's, ``source`` names the data in errors."""
        size = _size_pair(spatial_size, "spatial_size") if spatial_size is not None else self.spatial_size
        is_numpy = not isinstance(img, torch.Tensor)
        t = torch.as_tensor(np.ascontiguousarray(img) if is_numpy else img)
        if t.ndim < 2:
            raise DataError(source, f"expected (H, W) or (C, H, W) data to resize, got shape {tuple(t.shape)}")
        in_size = (int(t.shape[-2]), int(t.shape[-1]))
        if size is None:
            if in_size[0] % self.divisible_by or in_size[1] % self.divisible_by:
                raise DataError(
                    source, f"slice size {in_size} is not a multiple of {self.divisible_by}; set image_size to resample"
                )
            size = in_size
        t = t.to(torch.float32)
        if in_size != size:
            lead = t.shape[:-2]
            planes = t.reshape(-1, 1, *in_size) if self.slice_wise else t.reshape(1, -1, *in_size)
            kw: dict[str, Any] = {}
            if self.mode in ("bilinear", "bicubic"):
                shrink = in_size[0] > size[0] or in_size[1] > size[1]
                kw = {"align_corners": False, "antialias": self.antialias and shrink}
            t = F.interpolate(planes, size=size, mode=self.mode, **kw).reshape(*lead, *size)
        if self.clip is not None:
            t = t.clamp(self.clip[0], self.clip[1])
        return t.cpu().numpy() if is_numpy else t


class ResizeInPlaned(MapTransform):
    """Dictionary version of :class:`ResizeInPlane`.

    Args:
        keys: keys to resize.
        spatial_size: the output size (see :class:`ResizeInPlane`); ignored with ``size_of``.
        size_of: resize to the in-plane size that this key had when :class:`~labelless.io.loading.LoadFiled` read it
            (e.g. ``"image"`` to bring a prediction back to its input's size).
        mode, antialias, clip, slice_wise, divisible_by: see :class:`ResizeInPlane`.
        allow_missing_keys: skip missing keys instead of raising.

    Examples::

        to_net = ResizeInPlaned("image", spatial_size=256, slice_wise=True, divisible_by=8)
        back = ResizeInPlaned("pred", size_of="image", mode="nearest", slice_wise=True)
    """

    backend = ResizeInPlane.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int | Sequence[int] | None = None,
        size_of: str | None = None,
        mode: str = "bilinear",
        antialias: bool = False,
        clip: Sequence[float] | None = None,
        slice_wise: bool = False,
        divisible_by: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size_of = size_of
        self.resizer = ResizeInPlane(spatial_size, mode, antialias, clip, slice_wise, divisible_by)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        size = None
        if self.size_of is not None:
            size = tuple(loaded_meta(d, self.size_of)["spatial_shape"][-2:])
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key], size, _source(d, key) or _source(d, self.size_of))
        return d


class ZeroSlices(Transform):
    """Zero some slices (first axis) of a mask: ``slices`` is a list of slice indices or a ``(Z,)`` boolean mask;
    ``None`` changes nothing. The input is not modified.

    Examples::

        pred = ZeroSlices()(pred, slices=[0, 1])                 # slices 0 and 1 become 0
        pred = ZeroSlices()(pred, slices=empty_slices(volume))   # the slices without image content become 0
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor, slices: Any = None) -> NdarrayOrTensor:
        if slices is None:
            return img
        sel = np.asarray(slices.detach().cpu() if isinstance(slices, torch.Tensor) else slices)
        n = int(img.shape[0])
        if sel.dtype == bool:
            if sel.shape != (n,):
                raise DataError(None, f"a slice mask of shape {sel.shape} for {n} slices")
            zero = sel
        else:
            zero = np.zeros(n, dtype=bool)
            zero[sel.astype(np.int64).reshape(-1)] = True
        out = img.clone() if isinstance(img, torch.Tensor) else np.array(img, copy=True)
        out[torch.as_tensor(zero) if isinstance(out, torch.Tensor) else zero] = 0
        return out


class ZeroSlicesd(MapTransform):
    """Dictionary version of :class:`ZeroSlices`: the slices are ``data[slices_key]`` (``None`` or absent: nothing
    changes). The few-shot volume runners' ``preprocessing`` stores the query's empty slices (no image content) under
    ``"empty_slices"`` so that the prediction stays empty there on the query's own grid.

    Args:
        keys: masks to clean.
        slices_key: the item key holding the slices to zero.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = ZeroSlices.backend

    def __init__(
        self, keys: KeysCollection, slices_key: str = "empty_slices", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slices_key = slices_key
        self.zeroer = ZeroSlices()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        slices = d.get(self.slices_key)
        for key in self.key_iterator(d):
            d[key] = self.zeroer(d[key], slices)
        return d


ResizeInPlaneD = ResizeInPlaneDict = ResizeInPlaned
ZeroSlicesD = ZeroSlicesDict = ZeroSlicesd
