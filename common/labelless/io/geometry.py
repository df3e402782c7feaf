# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Geometry helpers: RAS affines (MONAI/nibabel) <-> SimpleITK spacing/origin/direction (LPS).

A :class:`~labelless.io.volume.Volume` stores a 4×4 RAS affine of the voxel axes (x, y, z); SimpleITK stores
spacing, origin and a direction matrix in LPS. The two are related by ``A_ras = diag(-1, -1, 1, 1) @ A_lps``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LPS_TO_RAS",
    "affine_from_sitk",
    "sitk_geometry_from_affine",
    "volume_to_sitk",
    "affine_2d_to_3d",
    "flip_rows",
    "shift_origin",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_sitk(spacing, origin, direction) -> np.ndarray:
    """4×4 RAS affine of voxel axes (x, y, z) from SimpleITK (LPS) spacing, origin and flat direction.

    2D geometries (2 spacings, 4 direction entries) are embedded in 3D with a unit z axis.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    n = spacing.size
    direction = np.asarray(direction, dtype=np.float64).reshape(n, n)
    lps = np.eye(4)
    lps[:n, :n] = direction * spacing[None, :]
    lps[:n, 3] = origin
    return LPS_TO_RAS @ lps


def sitk_geometry_from_affine(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """SimpleITK (spacing, origin, flat direction) in LPS from a 4×4 RAS affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    m = lps[:3, :3]
    spacing = np.sqrt((m**2).sum(axis=0))
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = m / spacing[None, :]
    origin = tuple(float(o) for o in lps[:3, 3])
    return tuple(float(s) for s in spacing), origin, tuple(float(d) for d in direction.ravel())


def volume_to_sitk(array: np.ndarray, affine: np.ndarray):
    """A 3D SimpleITK image from a (Z, H, W) array and a RAS affine (array order z, y, x = SimpleITK order)."""
    import SimpleITK as sitk  # noqa: N813

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    spacing, origin, direction = sitk_geometry_from_affine(affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def affine_2d_to_3d(affine: np.ndarray) -> np.ndarray:
    """Embed a 3×3 (2D) affine in a 4×4 one with a unit z axis; 4×4 affines are returned as a copy."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (4, 4):
        return a.copy()
    if a.shape != (3, 3):
        raise ValueError(f"expected a 3x3 or 4x4 affine, got shape {a.shape}")
    out = np.eye(4)
    out[:2, :2] = a[:2, :2]
    out[:2, 3] = a[:2, 2]
    return out


def flip_rows(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip the row axis (axis 1 of a (Z, H, W) array, voxel axis y) and update the affine so that every voxel
    keeps its world position."""
    a = np.asarray(affine, dtype=np.float64).copy()
    h = array.shape[1]
    a[:3, 3] = a[:3, 3] + a[:3, 1] * (h - 1)
    a[:3, 1] = -a[:3, 1]
    return np.ascontiguousarray(np.flip(array, axis=1)), a


def shift_origin(affine: np.ndarray, offset_xyz) -> np.ndarray:
    """Affine of a grid whose voxel 0 is voxel ``offset_xyz`` (may be negative or fractional) of ``affine``'s grid."""
    a = np.asarray(affine, dtype=np.float64).copy()
    a[:3, 3] = a[:3, :3] @ np.asarray(offset_xyz, dtype=np.float64) + a[:3, 3]
    return a
