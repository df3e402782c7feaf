# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The embedded default data of the weak-supervision bundle: synthetic "lesion / normal" images.

Each image is a textured grey ellipse ("organ") on a black background, replicated to RGB; domain-A images carry one
to three bright, blurred blobs ("lesions") inside the organ, whose masks are kept for the test and validation images
only. The set is written once into the cache in the weak-domain layout (:class:`~labelless.weak.domains.
WeakDomainFolders`) so a new user sees every workflow run without data. It is a smoke-test domain, not a benchmark.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from labelless.errors import ConfigError
from labelless.io.writers import write_image2d
from labelless.paths import cache_root
from labelless.utils import write_json_atomic

__all__ = ["SYNTHETIC_WEAK_VERSION", "make_weak_image", "write_weak_phantoms", "default_weak_data"]

SYNTHETIC_WEAK_VERSION = 1


def make_weak_image(rng: np.random.Generator, size: int = 64, lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image: ``(size, size, 3)`` uint8 and its ``(size, size)`` bool lesion mask (empty when
    ``lesion`` is false)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64) / size
    cy, cx = rng.uniform(0.42, 0.58, 2)
    ry, rx = rng.uniform(0.30, 0.40, 2)
    organ = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=size / 24)
    grey = 0.35 + 0.08 * texture / (np.abs(texture).max() + 1e-8) + 0.05 * (1 - yy)
    mask = np.zeros((size, size), bool)
    if lesion:
        for _ in range(int(rng.integers(1, 4))):
            for _attempt in range(20):
                ly, lx = rng.uniform(0.2, 0.8, 2)
                r = rng.uniform(0.06, 0.12)
                blob = ((yy - ly) ** 2 + (xx - lx) ** 2) <= r**2
                if (blob & organ).sum() == blob.sum() and blob.any():
                    mask |= blob
                    break
        soft = ndimage.gaussian_filter(mask.astype(np.float64), sigma=max(size / 96, 0.5))
        grey = grey + 0.45 * soft
    grey = np.where(organ, grey + rng.normal(0, 0.02, grey.shape), 0.0)
    mask &= organ
    rgb = np.round(np.clip(np.repeat(grey[..., None], 3, axis=-1), 0, 1) * 255).astype(np.uint8)
    return rgb, mask


def write_weak_phantoms(
    out_dir: str | os.PathLike, n_train: int = 40, n_test: int = 8, n_val: int = 8, size: int = 64, seed: int = 0
) -> Path:
    """Write the synthetic set in the weak-domain layout (``trainA``, ``trainB``, ``testA/images|labels``,
    ``val/images|labels``, ``testB``) into ``out_dir`` (created; refused when it exists and is not empty).

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty; give a new folder")
    if min(int(n_train), int(n_test), int(n_val)) < 1 or int(size) < 16:
        raise ConfigError("n_train, n_test, n_val must be >= 1 and size >= 16")
    rng = np.random.default_rng(int(seed))
    for i in range(int(n_train)):
        write_image2d(make_weak_image(rng, size, True)[0], out / "trainA" / f"a{i:03d}.png")
        write_image2d(make_weak_image(rng, size, False)[0], out / "trainB" / f"b{i:03d}.png")
    for folder, n in (("testA", n_test), ("val", n_val)):
        for i in range(int(n)):
            rgb, mask = make_weak_image(rng, size, True)
            write_image2d(rgb, out / folder / "images" / f"{folder}{i:03d}.png")
            label = out / folder / "labels" / f"{folder}{i:03d}_segmentation.png"
            write_image2d(mask.astype(np.uint8) * 255, label)
    for i in range(int(n_test)):
        write_image2d(make_weak_image(rng, size, False)[0], out / "testB" / f"nb{i:03d}.png")
    info = {
        "synthetic_weak_version": SYNTHETIC_WEAK_VERSION,
        "n_train": n_train,
        "n_test": n_test,
        "n_val": n_val,
        "size": size,
        "seed": seed,
    }
    write_json_atomic(out / "manifest.json", info)
    return out


def default_weak_data() -> Path:
    """The embedded default set, written once into ``<cache_root()>/weak/phantoms-v<version>`` (atomically: into a
    temporary sibling folder, then renamed) and reused afterwards."""
    dest = cache_root() / "weak" / f"phantoms-v{SYNTHETIC_WEAK_VERSION}"
    if (dest / "manifest.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".phantoms.", dir=dest.parent))
    try:
        write_weak_phantoms(tmp / "set")
        try:
            os.replace(tmp / "set", dest)
        except OSError:  # another process finished first
            if not (dest / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
