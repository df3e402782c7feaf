# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Folders of 2D classes for episodic meta-training, and the skin-lesion pools of FSMS (fsms.md §1.1, §1.4, §1.5).

- :class:`ClassFolderDataset`: any folder of classes, one sub-folder per class, in layout A (FSS-1000 style,
  ``<class>/<id>.jpg`` + ``<class>/<id>.png``) or layout B (``<class>/images/<id>.{jpg,jpeg,png,...}`` +
  ``<class>/masks/<id>.png``), detected per class folder.
- :func:`skin_pools`: the skin-lesion pools of the shared development data.

Images, masks and pools follow the rules of the 2D data layer :mod:`labelless.data.images`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from labelless.data.images import (
    ImageFolderPool,
    find_mask,
    list_images,
    mask_on_grid,
    read_mask,
    read_rgb,
    resize_image,
    resize_mask,
    split_pool,
)
from labelless.errors import ConfigError, DataError
from labelless.io.suffixes import JPEG_SUFFIXES
from labelless.utils import LRUCache, as_bool, sort_ids

__all__ = ["read_exclude_list", "ClassFolderDataset", "skin_pools"]

logger = logging.getLogger(__name__)


def read_exclude_list(exclude: Sequence[str] | str | os.PathLike | None) -> set[str]:
    """Class names to exclude: a list of names, or the path of a text file with one name per line.

    Blank lines and text after ``#`` are ignored.

    Raises:
        DataError: the text file does not exist.
    """
    if exclude is None:
        return set()
    if isinstance(exclude, (str, os.PathLike)):
        p = Path(exclude)
        if not p.is_file():
            raise DataError(p, "class exclusion file does not exist")
        names = [line.split("#", 1)[0].strip() for line in p.read_text(encoding="utf-8").splitlines()]
        return {n for n in names if n}
    return {str(n).strip() for n in exclude if str(n).strip()}


# ---------------------------------------------------------------------------------------------- class folders
class ClassFolderDataset:
    """A folder of 2D segmentation classes for episodic meta-training (fsms.md §1.1).

    Each visible sub-folder of ``root`` is a class; its layout is detected independently:

    - layout A (FSS-1000): ``<class>/<id>.jpg`` (or ``.jpeg``) images and ``<class>/<id>.png`` masks;
    - layout B: ``<class>/images/<id>.{jpg,jpeg,png,bmp,tif,tiff}`` and ``<class>/masks/<id>.png`` (``.gif``,
      ``.bmp``, ``.tif`` masks are accepted too).

    At construction every pair is read once and checked: unreadable files, missing masks and image/mask size
    mismatches raise a :class:`DataError` naming the file (or are skipped with a warning when ``skip_bad_pairs``);
    pairs whose mask is empty at the ``grid × grid`` support resolution (after resizing to ``size``) are skipped
    and listed in :attr:`skipped`. A class with fewer than ``min_pairs`` valid pairs is an error naming the class
    folder, or is dropped with a warning when ``drop_small_classes``. Afterwards pairs are read lazily, with a small
    LRU cache of the resized tensors.

    Args:
        root: folder of class folders.
        min_pairs: minimum number of valid pairs per class (K + 1 for K-shot episodes).
        exclude: class names to leave out, or the path of a text file listing them (one per line).
        skip_bad_pairs: skip unreadable / unmatched / mismatched pairs with a warning instead of raising.
        size: output image size (square).
        grid: support-mask grid used for the emptiness check (56 for 224 inputs).
        drop_small_classes: drop classes with fewer than ``min_pairs`` valid pairs (warning) instead of raising.
        cache_size: number of resized pairs kept in memory (0 disables the cache).

    Attributes:
        classes: sorted class names.
        ids: class -> sorted pair ids (file stems) of its valid pairs.
        pairs: class -> list of (image path, mask path), in the order of ``ids``.
        layouts: class -> ``"A"`` or ``"B"``.
        skipped: list of (file, reason) for every skipped pair.
        dropped: class -> number of valid pairs, for classes dropped by ``drop_small_classes``.

    Raises:
        DataError: ``root`` missing, bad files (see above), small classes, no class left.
        ConfigError: ``min_pairs < 1``, ``size`` or ``grid`` not positive.

    Examples::

        ds = ClassFolderDataset("fss1000", min_pairs=2, exclude="fss_test_classes.txt")
        image, mask = ds.load_pair(ds.classes[0], 0)   # [3, 224, 224] RGB in [0, 1], [1, 224, 224] in {0, 1}
        print(len(ds), ds.num_pairs(ds.classes[0]), ds.skipped[:3])
    """

    def __init__(
        self,
        root: str | os.PathLike,
        min_pairs: int = 2,
        exclude: Sequence[str] | str | os.PathLike | None = None,
        skip_bad_pairs: bool | str = False,
        size: int = 224,
        grid: int = 56,
        drop_small_classes: bool | str = False,
        cache_size: int = 256,
    ) -> None:
        self.root = Path(root)
        self.min_pairs = int(min_pairs)
        self.size = int(size)
        self.grid = int(grid)
        self.skip_bad_pairs = as_bool(skip_bad_pairs, "skip_bad_pairs")
        self.drop_small_classes = as_bool(drop_small_classes, "drop_small_classes")
        if self.min_pairs < 1:
            raise ConfigError(f"min_pairs must be >= 1, got {min_pairs!r}")
        if self.size < 1 or self.grid < 1:
            raise ConfigError(f"size and grid must be positive, got size={size!r}, grid={grid!r}")
        if not self.root.is_dir():
            raise DataError(self.root, "class folder root does not exist")
        excluded = read_exclude_list(exclude)
        self.excluded = sorted(excluded)
        self.classes: list[str] = []
        self.ids: dict[str, list[str]] = {}
        self.pairs: dict[str, list[tuple[Path, Path]]] = {}
        self.layouts: dict[str, str] = {}
        self.skipped: list[tuple[str, str]] = []
        self.dropped: dict[str, int] = {}
        self._cache = LRUCache(cache_size)

        folders = {f.name: f for f in self.root.iterdir() if f.is_dir() and not f.name.startswith(".")}
        found_excluded = excluded & set(folders)
        if excluded - found_excluded:
            logger.info("%d excluded class name(s) not present under %s", len(excluded - found_excluded), self.root)
        for name in sort_ids(n for n in folders if n not in excluded):
            layout, candidates = self._scan_class(folders[name])
            valid = self._check_pairs(candidates)
            if len(valid) < self.min_pairs:
                msg = (
                    f"class has {len(valid)} valid image/mask pair(s), fewer than the {self.min_pairs} required (K + 1)"
                )
                if not self.drop_small_classes:
                    raise DataError(folders[name], msg + "; exclude it or set drop_small_classes")
                warnings.warn(f"{folders[name]}: {msg}; class dropped", stacklevel=2)
                self.dropped[name] = len(valid)
                continue
            self.classes.append(name)
            self.layouts[name] = layout
            self.ids[name] = [pid for pid, _, _ in valid]
            self.pairs[name] = [(img, msk) for _, img, msk in valid]
        if not self.classes:
            raise DataError(self.root, f"no class folder with at least {self.min_pairs} valid image/mask pairs")
        n_empty = sum(1 for _, why in self.skipped if why.startswith("mask empty"))
        if n_empty:
            logger.info("%s: %d pair(s) with an empty %d×%d mask skipped", self.root, n_empty, self.grid, self.grid)

    # ------------------------------------------------------------------ scanning
    def _bad(self, path: Path, problem: str) -> None:
        """Raise (default) or record-and-warn (``skip_bad_pairs``) a bad pair."""
        if not self.skip_bad_pairs:
            raise DataError(path, problem)
        warnings.warn(f"{path}: {problem}; pair skipped", stacklevel=3)
        self.skipped.append((str(path), problem))

    def _scan_class(self, folder: Path) -> tuple[str, list[tuple[str, Path, Path | None]]]:
        """Layout and (id, image, mask or None) candidates of one class folder, sorted by id."""
        img_dir, msk_dir = folder / "images", folder / "masks"
        found: dict[str, tuple[Path, Path | None]] = {}
        if img_dir.is_dir() and msk_dir.is_dir():
            layout = "B"
            for pid, f in list_images(img_dir).items():
                found[pid] = (f, find_mask(msk_dir, pid))
        else:
            layout = "A"
            for pid, f in list_images(folder, JPEG_SUFFIXES).items():
                found[pid] = (f, find_mask(folder, pid, exclude=f))
        return layout, [(pid, *found[pid]) for pid in sort_ids(found)]

    def _check_pairs(self, candidates: list[tuple[str, Path, Path | None]]) -> list[tuple[str, Path, Path]]:
        """Read every candidate pair once; keep the valid ones (and warm the cache)."""
        valid = []
        for pid, img_path, msk_path in candidates:
            if msk_path is None:
                self._bad(img_path, "no mask found for this image (expected a .png mask with the same id)")
                continue
            try:
                rgb = read_rgb(img_path)
            except DataError as e:
                self._bad(img_path, e.problem)
                continue
            try:
                msk = read_mask(msk_path)
            except DataError as e:
                self._bad(msk_path, e.problem)
                continue
            if rgb.shape[:2] != msk.shape:
                self._bad(msk_path, f"mask size {msk.shape} differs from the image size {rgb.shape[:2]} ({img_path})")
                continue
            image, mask = self._to_tensors(rgb, msk)
            if not bool(mask_on_grid(mask, self.grid).any()):
                self.skipped.append((str(msk_path), f"mask empty at {self.grid}×{self.grid}"))
                continue
            self._cache.put((img_path, msk_path), (image, mask))
            valid.append((pid, img_path, msk_path))
        return valid

    def _to_tensors(self, rgb: np.ndarray, msk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image = resize_image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), self.size)
        mask = resize_mask(torch.from_numpy(msk.astype(np.float32))[None], self.size)
        return image, mask

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.ids.values())
        return (
            f"ClassFolderDataset(root={str(self.root)!r}, classes={len(self)}, pairs={n}, skipped={len(self.skipped)})"
        )

    def _class_name(self, cls: str | int) -> str:
        if isinstance(cls, (int, np.integer)):
            if not 0 <= int(cls) < len(self.classes):
                raise IndexError(f"class index {cls} out of range (0..{len(self.classes) - 1})")
            return self.classes[int(cls)]
        if cls not in self.ids:
            raise KeyError(f"unknown class {cls!r} under {self.root}")
        return str(cls)

    def num_pairs(self, cls: str | int) -> int:
        """Number of valid pairs of a class (name or index into :attr:`classes`)."""
        return len(self.ids[self._class_name(cls)])

    def pair_paths(self, cls: str | int, idx: int) -> tuple[Path, Path]:
        """(image path, mask path) of pair ``idx`` of a class."""
        return self.pairs[self._class_name(cls)][int(idx)]

    def load_pair(self, cls: str | int, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair ``idx`` (position in ``ids[cls]``) of a class.

        Args:
            cls: class name or index into :attr:`classes`.
            idx: pair index.

        Returns:
            (image [3, size, size] float32 RGB in [0, 1], mask [1, size, size] float32 in {0, 1}); fresh copies.

        Raises:
            DataError: the files became unreadable since construction.
        """
        img_path, msk_path = self.pair_paths(cls, idx)
        hit = self._cache.get((img_path, msk_path))
        if hit is None:
            rgb, msk = read_rgb(img_path), read_mask(msk_path)
            if rgb.shape[:2] != msk.shape:
                raise DataError(msk_path, f"mask size {msk.shape} differs from the image size {rgb.shape[:2]}")
            hit = self._to_tensors(rgb, msk)
            self._cache.put((img_path, msk_path), hit)
        return hit[0].clone(), hit[1].clone()


def skin_pools(
    data_root: str | os.PathLike, size: int = 224, unlabeled_fraction: float = 0.4
) -> dict[str, ImageFolderPool]:
    """The skin-lesion pools of the shared development data (fsms.md §1.4).

    Layouts read as they are:

    - ``isic2016/images/ISIC_<id>.jpg`` + ``isic2016/masks/ISIC_<id>.png`` -> ``"isic2016_unlabeled"`` (first 40 %
      of the sorted ids, masks never read) and ``"isic2016_test"`` (the rest, with masks);
    - ``ham10000/images/ISIC_<id>.jpg`` + ``ham10000/masks/ISIC_<id>.png`` -> ``"ham10000_test"``;
    - ``weak_samples/ISIC/isic_1/{testA,val}/images/ISIC_<id>.png`` + ``.../labels/ISIC_<id>_segmentation.png``
      (interpolated RGB masks, thresholded at 128) -> ``"isic_samples_test"`` and ``"isic_samples_val"`` (a
      validation pool disjoint from the test pools).

    Missing folders are left out with a warning.

    Args:
        data_root: the shared data folder.
        size: image size.
        unlabeled_fraction: fraction of the sorted ISIC-2016 ids in the unlabelled pool.

    Returns:
        name -> pool.

    Raises:
        DataError: ``data_root`` missing, or none of the pools found.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(root, "data folder does not exist")
    pools: dict[str, ImageFolderPool] = {}
    isic = root / "isic2016"
    if (isic / "images").is_dir() and (isic / "masks").is_dir():
        files = list_images(isic / "images")
        unl, test = split_pool(list(files), unlabeled_fraction)
        if unl:
            pools["isic2016_unlabeled"] = ImageFolderPool([files[i] for i in unl], size=size)
        if test:
            pools["isic2016_test"] = ImageFolderPool([files[i] for i in test], size=size, masks=isic / "masks")
    else:
        warnings.warn(f"{isic}: ISIC-2016 images/masks folders not found; pools left out", stacklevel=2)
    extra = {
        "ham10000_test": (root / "ham10000" / "images", root / "ham10000" / "masks"),
        "isic_samples_test": (
            root / "weak_samples/ISIC/isic_1/testA/images",
            root / "weak_samples/ISIC/isic_1/testA/labels",
        ),
        "isic_samples_val": (
            root / "weak_samples/ISIC/isic_1/val/images",
            root / "weak_samples/ISIC/isic_1/val/labels",
        ),
    }
    for name, (img_dir, msk_dir) in extra.items():
        if img_dir.is_dir() and msk_dir.is_dir():
            pools[name] = ImageFolderPool(img_dir, size=size, masks=msk_dir)
        else:
            warnings.warn(f"{img_dir.parent}: images/masks folders not found; pool {name!r} left out", stacklevel=2)
    if not pools:
        raise DataError(root, "no skin-lesion pool found (expected isic2016/, ham10000/ or weak_samples/ISIC/)")
    return pools
