# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""File loading as a MONAI transform: the first step of every inference runner's ``preprocessing``.

:class:`LoadFiled` reads the file named by ``data[key]`` with a labelless reader (so a bad file stops the run with
one line naming it) and records where the data came from in ``data["<key>_meta_dict"]`` (MONAI's meta-dict naming):

- ``"filename_or_obj"``: the file, as a string;
- ``"spatial_shape"``: the spatial shape of the data as read (``(Z, H, W)`` for a :class:`~labelless.io.Volume`,
  the last two axes of an image);
- ``"original"``: the object the reader returned (the :class:`~labelless.io.Volume` with its geometry, or the image
  at its stored size), for the steps that go back to the input: resizing back, overlays, writing with the input's
  geometry.

Readers that fit (each a callable ``reader(path, **kwargs)``): :func:`labelless.io.readers.read_volume`
(``ndim=None``), :func:`labelless.data.images.load_rgb` (``size=None``), :func:`labelless.semisup.data.read_ultrasound`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from labelless.errors import ConfigError

from .volume import Volume

__all__ = ["META_POSTFIX", "loaded_meta", "LoadFile", "LoadFiled", "LoadFileD", "LoadFileDict"]

#: postfix of the meta dict :class:`LoadFiled` writes next to each key (``"image"`` → ``"image_meta_dict"``)
META_POSTFIX = "meta_dict"


def loaded_meta(data: Mapping[Hashable, Any], key: Hashable) -> dict[str, Any]:
    """The meta dict :class:`LoadFiled` recorded for ``key`` in the item ``data``.

    Raises:
        ConfigError: ``key`` was not loaded by :class:`LoadFiled` (no ``"<key>_meta_dict"`` in the item).
    """
    meta = data.get(f"{key}_{META_POSTFIX}")
    if not isinstance(meta, Mapping) or "original" not in meta:
        raise ConfigError(
            f"the item has no '{key}_{META_POSTFIX}': load '{key}' with labelless.io.loading.LoadFiled in the "
            f"preprocessing (keys present: {sorted(map(str, data))})"
        )
    return dict(meta)


class LoadFile(Transform):
    """Read one file with a labelless reader.

    Args:
        reader: ``reader(path, **kwargs)`` returning a :class:`~labelless.io.Volume`, an array or a tensor (errors
            are the reader's: a :class:`~labelless.errors.DataError` naming the file).
        ensure_channel_first: give a 2D array ``(H, W)`` a leading channel axis (``(1, H, W)``).
        kwargs: further arguments of ``reader`` (e.g. ``ndim=None`` for ``read_volume``, ``size=None`` for
            ``load_rgb``).

    Returns (``__call__(path)``):
        ``(data, original)``: the array to process (a volume's ``array``; otherwise what the reader returned, with a
        channel axis added when asked) and the reader's result itself.

    Examples::

        data, vol = LoadFile(read_volume, ndim=None)("image_2.nii.gz")  # (Z, H, W) float32 and the Volume
    """

    def __init__(self, reader: Callable[..., Any], ensure_channel_first: bool = False, **kwargs: Any) -> None:
        if not callable(reader):
            raise ConfigError(
                f"LoadFile reader must be a callable (e.g. labelless.io.readers.read_volume), got {reader!r}"
            )
        self.reader = reader
        self.ensure_channel_first = bool(ensure_channel_first)
        self.kwargs = kwargs

    def __call__(self, path: str | os.PathLike) -> tuple[Any, Any]:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"LoadFile expects a file path, got a {type(path).__name__}")
        original = self.reader(Path(path), **self.kwargs)
        data = original.array if isinstance(original, Volume) else original
        if self.ensure_channel_first and getattr(data, "ndim", 0) == 2:
            data = data[None]
        return data, original


class LoadFiled(MapTransform):
    """Dictionary version of :class:`LoadFile`: ``data[key]`` (a path) becomes the data read, and
    ``data["<key>_meta_dict"]`` records the file, the spatial shape and the reader's result (module docstring).

    Args:
        keys: keys holding file paths.
        reader, ensure_channel_first, kwargs: see :class:`LoadFile`.
        allow_missing_keys: skip missing keys instead of raising.

    Examples::

        load = LoadFiled("image", reader=read_volume, ndim=None)
        d = load({"image": "image_2.nii.gz"})  # d["image"]: (Z, H, W); d["image_meta_dict"]["original"]: the Volume
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: Callable[..., Any],
        ensure_channel_first: bool = False,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadFile(reader, ensure_channel_first, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            array, original = self.loader(path)
            shape = original.shape if isinstance(original, Volume) else tuple(np.shape(original))[-2:]
            d[key] = array
            d[f"{key}_{META_POSTFIX}"] = {"filename_or_obj": str(path), "spatial_shape": tuple(int(s) for s in shape),
                                          "original": original}  # fmt: skip
        return d


LoadFileD = LoadFileDict = LoadFiled
