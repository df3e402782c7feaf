# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The in-memory volume: a (Z, H, W) array in the reference's slice orientation plus the file geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Volume"]


@dataclass
class Volume:
    """An image or label volume with its geometry.

    ``array`` is indexed ``[z, row = y, col = x]``: the orientation of the SSL-ALPNet reference (SimpleITK array
    order), so ``array[z]`` is an axial slice as the reference sees it. The file's voxel axes are (x, y, z), i.e.
    ``array == file_data.transpose(2, 1, 0)`` for 3D files. 2D images are stored with ``Z = 1``.

    Args:
        array: (Z, H, W) data (float32 for images, int16 class ids for mapped labels).
        affine: 4×4 voxel (x, y, z) -> world RAS mm matrix, as MONAI and nibabel use it.
        path: the file or folder it was read from (``None`` for arrays made in memory).
        channels: for RGB 2D images the channel-last data (H, W, 3); ``array`` then holds the grey version.
        meta: extra reader metadata (original dtype, format, ...).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: Path | None = None
    channels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in mm from the affine."""
        return tuple(float(v) for v in np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0)))

    def same_grid(self, other: Volume, atol: float = 1e-3) -> bool:
        """True when both volumes have the same shape and the same affine (within ``atol`` mm)."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume on the same grid with other data."""
        return Volume(np.asarray(array), np.array(self.affine, copy=True), self.path, None, dict(self.meta))
