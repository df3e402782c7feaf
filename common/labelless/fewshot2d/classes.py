# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Folders of 2D classes for episodic meta-training, and target-domain image pools (fsms.md §1.1, §1.4, §1.5).

- :class:`ClassFolderDataset`: any folder of classes, one sub-folder per class, in layout A (FSS-1000 style,
  ``<class>/<id>.jpg`` + ``<class>/<id>.png``) or layout B (``<class>/images/<id>.{jpg,jpeg,png,...}`` +
  ``<class>/masks/<id>.png``), detected per class folder.
- :class:`ImageFolderPool`: a pool of target-domain images (e.g. skin lesions), optionally with masks.
- :func:`split_pool`: the deterministic unlabelled/test split of a pool (sorted ids, first 40 % unlabelled).
- :func:`skin_pools`: the skin-lesion pools of the shared development data.

Every image is returned as a float32 RGB tensor ``[3, size, size]`` in [0, 1] (grey images replicated, alpha
dropped, always RGB order; bilinear resizing with antialiasing when shrinking) and every mask as a float32
``[1, size, size]`` tensor of 0/1 (bilinear resizing, then ``> 0.5``). Mask rule: a stored mask whose maximum is
≤ 1 is taken as 0/1 (``> 0.5``); otherwise it is binarised with ``value / 255 > 0.5`` (0/255 masks, and masks
resized with interpolation, thresholded at 128).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.errors import ConfigError, DataError
from labelless.io.readers import read_image2d, read_volume
from labelless.utils import as_bool, sort_ids

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "binarize_mask",
    "mask_on_grid",
    "resize_image",
    "resize_mask",
    "load_rgb",
    "load_mask",
    "read_exclude_list",
    "ClassFolderDataset",
    "ImageFolderPool",
    "split_pool",
    "skin_pools",
]

logger = logging.getLogger(__name__)

#: Image file suffixes of layout B and of image pools (layout A images are ``.jpg``/``.jpeg`` only).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: Mask file suffixes tried, in order, for a mask of a given stem.
MASK_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff")
_LAYOUT_A_IMAGE_SUFFIXES = (".jpg", ".jpeg")
#: Mask stems tried for an image ``<id>`` in pools: ``<id>``, ``<id>_segmentation`` (ISIC), ``<id>_mask``.
_POOL_MASK_STEMS = ("{id}", "{id}_segmentation", "{id}_Segmentation", "{id}_mask")


# ---------------------------------------------------------------------------------------------- pixel helpers
def binarize_mask(mask: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
    """Binarise a stored mask with the rule of fsms.md §1.1.

    Args:
        mask: (H, W) mask as stored (any numeric dtype).
        source: the file, for error messages.

    Returns:
        (H, W) bool array: ``mask > 0.5`` when ``mask.max() <= 1``, else ``mask / 255 > 0.5``.

    Raises:
        DataError: NaN values, negative values, or a mask whose maximum is in (1, 127.5] (e.g. class ids 0/1/2):
            the 0/255 rule would silently give an empty mask.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(source, f"a mask must be 2D (H, W), got shape {m.shape}")
    if m.size == 0:
        raise DataError(source, "empty mask array")
    m = m.astype(np.float64, copy=False)
    if not np.all(np.isfinite(m)):
        raise DataError(source, "mask contains NaN or infinite values")
    lo, hi = float(m.min()), float(m.max())
    if lo < 0:
        raise DataError(source, f"mask has negative values (min {lo:g}); expected 0/1 or 0/255")
    if hi <= 1:
        return m > 0.5
    if hi <= 127.5:
        raise DataError(
            source,
            f"mask maximum is {hi:g}: neither a 0/1 nor a 0/255 mask (class ids?); the 0/255 rule would give an "
            "empty mask",
        )
    return m / 255.0 > 0.5


def _resize(t: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Bilinear resize of a [C, H, W] float tensor to [C, size, size] (no-op when already that size)."""
    if tuple(t.shape[-2:]) == (size, size):
        return t
    shrink = t.shape[-2] > size or t.shape[-1] > size
    out = F.interpolate(
        t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=antialias and shrink
    )
    return out[0]


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of a [C, H, W] float image to [C, size, size], clipped to [0, 1]."""
    return _resize(image, int(size), antialias=True).clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of a [1, H, W] 0/1 mask to [1, size, size], then ``> 0.5``."""
    return (_resize(mask.float(), int(size), antialias=True) > 0.5).float()


def mask_on_grid(mask: torch.Tensor | np.ndarray, grid: int = 56) -> torch.Tensor:
    """The support mask at the feature grid (fsms.md §2.2): plain bilinear resize to ``grid × grid``, then ``> 0.5``.

    Args:
        mask: [..., H, W] 0/1 mask (e.g. [1, 224, 224] or [T, K, 1, 224, 224]).
        grid: feature grid size (56 for 224 inputs and output stride 4).

    Returns:
        float 0/1 tensor [..., grid, grid].
    """
    m = torch.as_tensor(mask).float()
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, m.shape[-2], m.shape[-1])
    out = F.interpolate(flat, size=(int(grid), int(grid)), mode="bilinear", align_corners=False)
    return (out > 0.5).float().reshape(*lead, int(grid), int(grid))


def _unit_range(arr: np.ndarray, dtype: str, path: Path) -> np.ndarray:
    """Scale stored image values to [0, 1]: 8-bit / 255, 16-bit / 65535, floats must already lie in [0, 1]."""
    if dtype == "uint8":
        return arr / 255.0
    if dtype == "uint16":
        return arr / 65535.0
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 1:
        return arr
    if lo >= 0 and hi <= 255 and np.array_equal(arr, np.rint(arr)):
        return arr / 255.0
    raise DataError(path, f"image of type {dtype} with values in [{lo:g}, {hi:g}]: expected 8-bit, 16-bit or [0, 1]")


def _read_rgb_native(path: Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] at the stored size (grey replicated, alpha dropped)."""
    vol = read_volume(path, ndim=2)
    if vol.channels is not None:
        rgb = _unit_range(np.asarray(vol.channels, dtype=np.float32), str(np.asarray(vol.channels).dtype), path)
    else:
        grey = _unit_range(np.asarray(vol.array[0], dtype=np.float32), str(vol.meta.get("dtype", "")), path)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def load_rgb(path: str | os.PathLike, size: int | None = 224) -> torch.Tensor:
    """Read an image as a float32 RGB tensor [3, size, size] in [0, 1] (``size=None``: stored size).

    Raises:
        DataError: missing or unreadable file, unsupported value range.
    """
    p = Path(path)
    t = torch.from_numpy(_read_rgb_native(p)).permute(2, 0, 1).contiguous()
    return t if size is None else resize_image(t, size)


def _read_mask_native(path: Path) -> np.ndarray:
    """(H, W) bool mask at the stored size (binarised with :func:`binarize_mask`)."""
    return binarize_mask(read_image2d(path, is_label=True), path)


def load_mask(path: str | os.PathLike, size: int | None = 224) -> torch.Tensor:
    """Read a mask as a float32 0/1 tensor [1, size, size] (``size=None``: stored size).

    Raises:
        DataError: missing or unreadable file, colour mask, values that are neither 0/1 nor 0/255.
    """
    p = Path(path)
    t = torch.from_numpy(_read_mask_native(p).astype(np.float32))[None]
    return t if size is None else resize_mask(t, size)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - any PIL failure becomes a DataError naming the file
        raise DataError(path, f"cannot read image header ({type(e).__name__}: {e})") from e
    return int(h), int(w)


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


class _LRU:
    """A tiny least-recently-used cache of (image, mask) tensor pairs."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = int(maxsize)
        self._d: OrderedDict = OrderedDict()

    def get(self, key):
        if key not in self._d:
            return None
        self._d.move_to_end(key)
        return self._d[key]

    def put(self, key, value) -> None:
        if self.maxsize <= 0:
            return
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.maxsize:
            self._d.popitem(last=False)


def _visible_files(folder: Path) -> list[Path]:
    return [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]


def _find_mask(folder: Path, stems: Sequence[str], exclude: Path | None = None) -> Path | None:
    for stem in stems:
        for suffix in MASK_SUFFIXES:
            p = folder / f"{stem}{suffix}"
            if p != exclude and p.is_file():
                return p
    return None


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
        self._cache = _LRU(cache_size)

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
            for f in _visible_files(img_dir):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    if f.stem in found:
                        raise DataError(f, f"two images with the id {f.stem!r} ({found[f.stem][0].name})")
                    found[f.stem] = (f, _find_mask(msk_dir, [f.stem]))
        else:
            layout = "A"
            for f in _visible_files(folder):
                if f.suffix.lower() in _LAYOUT_A_IMAGE_SUFFIXES:
                    if f.stem in found:
                        raise DataError(f, f"two images with the id {f.stem!r} ({found[f.stem][0].name})")
                    found[f.stem] = (f, _find_mask(folder, [f.stem], exclude=f))
        return layout, [(pid, *found[pid]) for pid in sort_ids(found)]

    def _check_pairs(self, candidates: list[tuple[str, Path, Path | None]]) -> list[tuple[str, Path, Path]]:
        """Read every candidate pair once; keep the valid ones (and warm the cache)."""
        valid = []
        for pid, img_path, msk_path in candidates:
            if msk_path is None:
                self._bad(img_path, "no mask found for this image (expected a .png mask with the same id)")
                continue
            try:
                rgb = _read_rgb_native(img_path)
            except DataError as e:
                self._bad(img_path, e.problem)
                continue
            try:
                msk = _read_mask_native(msk_path)
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
            rgb, msk = _read_rgb_native(img_path), _read_mask_native(msk_path)
            if rgb.shape[:2] != msk.shape:
                raise DataError(msk_path, f"mask size {msk.shape} differs from the image size {rgb.shape[:2]}")
            hit = self._to_tensors(rgb, msk)
            self._cache.put((img_path, msk_path), hit)
        return hit[0].clone(), hit[1].clone()


# ---------------------------------------------------------------------------------------------- target pools
class ImageFolderPool:
    """A pool of target-domain images (fsms.md §1.4), optionally with masks.

    Images are the files with an image suffix (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.tif``) directly in
    ``root`` (other files, e.g. ``LICENSE.md``, are ignored), or an explicit list of files. The id of an image is its
    file stem; ids are sorted naturally. With ``masks``, the mask of ``<id>`` is looked up in that folder as
    ``<id>``, ``<id>_segmentation`` or ``<id>_mask`` with suffix ``.png``, ``.gif``, ``.bmp`` or ``.tif``; every mask
    is read at construction (existence, readability, value rule, size against the image header) and
    :attr:`support_ids` lists the images whose mask is non-empty at the ``grid`` resolution (only those may serve as
    supports; all may be queries). Without ``masks`` nothing but the file list is touched until an image is loaded.

    Args:
        root: folder of images, or a sequence of image files.
        size: output image size (square).
        masks: folder of masks, or ``None`` for an unlabelled pool.
        grid: support-mask grid for :attr:`support_ids`.
        skip_bad_pairs: skip images without a readable, same-size mask (warning) instead of raising.
        cache_size: number of resized images (and masks) kept in memory.

    Raises:
        DataError: missing folder or file, no image, duplicate ids, missing/unreadable/mismatched masks.

    Examples::

        pool = ImageFolderPool("isic2016/images", masks="isic2016/masks")
        image, mask = pool.load(pool.image_ids[0])   # [3, 224, 224], [1, 224, 224]
        unlabelled = ImageFolderPool("isic2016/images").subset(split_pool(pool.image_ids)[0])
    """

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        size: int = 224,
        masks: str | os.PathLike | None = None,
        grid: int = 56,
        skip_bad_pairs: bool | str = False,
        cache_size: int = 256,
    ) -> None:
        self.size = int(size)
        self.grid = int(grid)
        self.skip_bad_pairs = as_bool(skip_bad_pairs, "skip_bad_pairs")
        if self.size < 1 or self.grid < 1:
            raise ConfigError(f"size and grid must be positive, got size={size!r}, grid={grid!r}")
        if isinstance(root, (str, os.PathLike)):
            self.root: Path | None = Path(root)
            if not self.root.is_dir():
                raise DataError(self.root, "image folder does not exist")
            files = [f for f in _visible_files(self.root) if f.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise DataError(self.root, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        else:
            self.root = None
            files = [Path(f) for f in root]
            for f in files:
                if not f.is_file():
                    raise DataError(f, "image file does not exist")
            if not files:
                raise DataError(None, "empty list of image files")
        by_id: dict[str, Path] = {}
        for f in files:
            if f.stem in by_id:
                raise DataError(f, f"two images with the id {f.stem!r} ({by_id[f.stem]})")
            by_id[f.stem] = f
        self.masks_dir = None if masks is None else Path(masks)
        self._images = by_id
        self._masks: dict[str, Path] = {}
        self.support_ids: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._cache = _LRU(cache_size)
        ids = sort_ids(by_id)
        if self.masks_dir is not None:
            if not self.masks_dir.is_dir():
                raise DataError(self.masks_dir, "mask folder does not exist")
            ids = [i for i in ids if self._check_mask(i)]
            if not ids:
                raise DataError(self.masks_dir, "no image of the pool has a valid mask")
        self.image_ids: list[str] = ids

    def _bad(self, path: Path, problem: str) -> bool:
        if not self.skip_bad_pairs:
            raise DataError(path, problem)
        warnings.warn(f"{path}: {problem}; image skipped", stacklevel=3)
        self.skipped.append((str(path), problem))
        return False

    def _check_mask(self, pid: str) -> bool:
        img = self._images[pid]
        stems = [s.format(id=pid) for s in _POOL_MASK_STEMS]
        mpath = _find_mask(self.masks_dir, stems, exclude=img)
        if mpath is None:
            return self._bad(img, f"no mask in {self.masks_dir} (looked for {stems[0]}{MASK_SUFFIXES[0]} and variants)")
        try:
            h, w = _image_size(img)
            m = _read_mask_native(mpath)
        except DataError as e:
            return self._bad(Path(e.source) if e.source else mpath, e.problem)
        if m.shape != (h, w):
            return self._bad(mpath, f"mask size {m.shape} differs from the image size {(h, w)} ({img})")
        self._masks[pid] = mpath
        if bool(mask_on_grid(resize_mask(torch.from_numpy(m.astype(np.float32))[None], self.size), self.grid).any()):
            self.support_ids.append(pid)
        return True

    # ------------------------------------------------------------------ access
    @property
    def has_masks(self) -> bool:
        """Whether the pool has masks."""
        return self.masks_dir is not None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        src = str(self.root) if self.root is not None else f"{len(self._images)} files"
        return f"ImageFolderPool({src!r}, n={len(self)}, masks={str(self.masks_dir) if self.masks_dir else None!r})"

    def image_path(self, pid: str) -> Path:
        """Path of image ``pid``."""
        if pid not in self._images:
            raise KeyError(f"unknown image id {pid!r}")
        return self._images[pid]

    def mask_path(self, pid: str) -> Path:
        """Path of the mask of image ``pid``."""
        if self.masks_dir is None:
            raise DataError(self.image_path(pid), "the pool has no masks")
        if pid not in self._masks:
            raise KeyError(f"no mask for image id {pid!r}")
        return self._masks[pid]

    def load_image(self, pid: str) -> torch.Tensor:
        """Image ``pid`` as a float32 RGB tensor [3, size, size] in [0, 1] (fresh copy)."""
        key = ("image", pid)
        hit = self._cache.get(key)
        if hit is None:
            hit = load_rgb(self.image_path(pid), self.size)
            self._cache.put(key, hit)
        return hit.clone()

    def load_mask(self, pid: str) -> torch.Tensor:
        """Mask of image ``pid`` as a float32 0/1 tensor [1, size, size] (fresh copy)."""
        key = ("mask", pid)
        hit = self._cache.get(key)
        if hit is None:
            hit = load_mask(self.mask_path(pid), self.size)
            self._cache.put(key, hit)
        return hit.clone()

    def load(self, pid: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image, mask) of ``pid``; the mask is ``None`` for an unlabelled pool."""
        return self.load_image(pid), (self.load_mask(pid) if self.has_masks else None)

    def subset(self, ids: Sequence[str], with_masks: bool | str = True) -> ImageFolderPool:
        """A pool of some of the images (e.g. one side of :func:`split_pool`).

        Args:
            ids: image ids of this pool.
            with_masks: keep the masks (when the pool has them); ``False`` gives an unlabelled pool whose masks are
                never read again.

        Raises:
            DataError: an id not in the pool.
        """
        unknown = [i for i in ids if i not in self._images or (self.has_masks and i not in self._masks)]
        if unknown:
            raise DataError(self.root or self.masks_dir, f"ids not in the pool: {unknown[:5]}")
        keep_masks = as_bool(with_masks, "with_masks") and self.has_masks
        new = object.__new__(ImageFolderPool)
        new.size, new.grid, new.skip_bad_pairs, new.root = self.size, self.grid, self.skip_bad_pairs, self.root
        new.masks_dir = self.masks_dir if keep_masks else None
        new._images = {i: self._images[i] for i in ids}
        new._masks = {i: self._masks[i] for i in ids} if keep_masks else {}
        chosen = set(ids)
        new.support_ids = [i for i in self.support_ids if i in chosen] if keep_masks else []
        new.skipped = []
        new._cache = _LRU(self._cache.maxsize)
        new.image_ids = sort_ids(ids)
        return new


def split_pool(ids: Sequence[str], unlabeled_fraction: float = 0.4) -> tuple[list[str], list[str]]:
    """Deterministic unlabelled/test split (fsms.md §1.4): sort the ids, the first ``floor(fraction · n)`` are
    unlabelled, the rest test.

    Args:
        ids: image ids (any order).
        unlabeled_fraction: fraction in [0, 1].

    Returns:
        (unlabelled ids, test ids), both sorted.

    Raises:
        ConfigError: fraction outside [0, 1].
        DataError: duplicate ids.
    """
    frac = float(unlabeled_fraction)
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"unlabeled_fraction must be in [0, 1], got {unlabeled_fraction!r}")
    ordered = sort_ids(ids)
    if len(set(ordered)) != len(ordered):
        raise DataError(None, "duplicate image ids in the pool")
    n = int(math.floor(frac * len(ordered) + 1e-9))
    return ordered[:n], ordered[n:]


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
        files = {f.stem: f for f in _visible_files(isic / "images") if f.suffix.lower() in IMAGE_SUFFIXES}
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
