# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The 2D image/mask data layer shared by the 2D tasks (FSMS now; CLTNet and SABR-Net next).

- **Discovery:** :func:`list_images` (a folder's images by id), :func:`find_mask` (the mask of an id, trying stems
  and suffixes in order), :func:`find_image_mask_pairs` (an image folder matched with a mask folder). Suffixes come
  from :mod:`labelless.io.suffixes`.
- **Reading:** :func:`load_rgb` (float32 ``[3, S, S]`` RGB in [0, 1]; grey replicated, alpha dropped),
  :func:`load_grey` (``[1, S, S]`` in [0, 1]), :func:`load_mask` (``[1, S, S]`` 0/1). 8-bit images are divided by
  255, 16-bit by 65535, float images must lie in [0, 1].
- **Masks:** :func:`binarize_mask`: a stored mask whose maximum is ≤ 1 is taken as 0/1 (``> 0.5``); otherwise it is
  binarised with ``value / 255 > 0.5`` (0/255 masks, and masks resized with interpolation, thresholded at 128).
- **Resizing:** bilinear, antialiased when shrinking (:func:`resize_image`, :func:`resize_mask` then ``> 0.5``);
  :func:`mask_on_grid`: a mask at a feature grid.
- **Pools:** :class:`ImageFolderPool` (a folder or list of images, optionally with masks; lazily read, LRU-cached;
  :meth:`~ImageFolderPool.subset`) and :func:`split_pool` (the deterministic sorted-id split).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.errors import ConfigError, DataError
from labelless.io.readers import read_image2d, read_volume
from labelless.io.suffixes import IMAGE_2D_SUFFIXES, MASK_2D_SUFFIXES, has_suffix, strip_suffix
from labelless.utils import LRUCache, as_bool, sort_ids

__all__ = [
    "MASK_STEMS",
    "list_images",
    "find_mask",
    "ImageMaskPairs",
    "find_image_mask_pairs",
    "binarize_mask",
    "mask_on_grid",
    "resize_image",
    "resize_mask",
    "read_rgb",
    "read_mask",
    "load_rgb",
    "load_grey",
    "load_mask",
    "image_size",
    "ImageFolderPool",
    "split_pool",
]

logger = logging.getLogger(__name__)

#: Mask stems tried for an image ``<id>``: ``<id>``, ``<id>_segmentation`` (ISIC), ``<id>_Segmentation``, ``<id>_mask``.
MASK_STEMS = ("{id}", "{id}_segmentation", "{id}_Segmentation", "{id}_mask")


# ---------------------------------------------------------------------------------------------- discovery
def list_images(folder: str | os.PathLike, suffixes: Sequence[str] = IMAGE_2D_SUFFIXES) -> dict[str, Path]:
    """The image files directly in ``folder`` by id (the name without its suffix), in natural id order.

    Hidden files and files with other suffixes (e.g. ``LICENSE.md``) are ignored.

    Raises:
        DataError: the folder is missing, or two images share an id (``a.png`` and ``a.jpg``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, "image folder does not exist")
    found: dict[str, Path] = {}
    for f in sorted(root.iterdir()):
        if not (f.is_file() and has_suffix(f, tuple(suffixes))):
            continue
        pid = strip_suffix(f)
        if pid in found:
            raise DataError(f, f"two images with the id {pid!r} ({found[pid].name})")
        found[pid] = f
    return {pid: found[pid] for pid in sort_ids(found)}


def find_mask(
    folder: str | os.PathLike,
    image_id: str,
    stems: Sequence[str] = ("{id}",),
    suffixes: Sequence[str] = MASK_2D_SUFFIXES,
    exclude: str | os.PathLike | None = None,
) -> Path | None:
    """The mask of ``image_id`` in ``folder``: the first existing ``<stem><suffix>`` over ``stems`` (formatted with
    ``id``) then ``suffixes``, other than ``exclude`` (the image itself when images and masks share a folder)."""
    root = Path(folder)
    skip = None if exclude is None else Path(exclude)
    for stem in stems:
        for suffix in suffixes:
            p = root / f"{stem.format(id=image_id)}{suffix}"
            if p != skip and p.is_file():
                return p
    return None


@dataclass
class ImageMaskPairs:
    """Result of :func:`find_image_mask_pairs`.

    Args:
        pairs: ``{"name", "image", "label"}`` dicts (``label`` is ``None`` for an image without mask when those are
            allowed), in natural id order.
        images_without_mask: image files with no matching mask.
    """

    pairs: list[dict] = field(default_factory=list)
    images_without_mask: list[Path] = field(default_factory=list)

    def labelled(self) -> list[dict]:
        """Pairs that have a mask, as a MONAI-style datalist."""
        return [p for p in self.pairs if p["label"] is not None]

    def __len__(self) -> int:
        return len(self.pairs)


def find_image_mask_pairs(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None = None,
    mask_stems: Sequence[str] = MASK_STEMS,
    image_suffixes: Sequence[str] = IMAGE_2D_SUFFIXES,
    mask_suffixes: Sequence[str] = MASK_2D_SUFFIXES,
    allow_missing_masks: bool | str = False,
) -> ImageMaskPairs:
    """Match the images of ``images_dir`` with their masks in ``masks_dir`` (:func:`find_mask` rules).

    Args:
        images_dir: image folder.
        masks_dir: mask folder; ``None`` for an unlabelled folder (every pair gets ``label=None``).
        mask_stems: mask name patterns tried in order (``{id}`` is the image id).
        image_suffixes, mask_suffixes: accepted suffixes (case-insensitive for images).
        allow_missing_masks: keep images without a mask (``label=None``, logged) instead of raising.

    Returns:
        :class:`ImageMaskPairs`.

    Raises:
        DataError: missing folders, no images, duplicate ids, images without masks (unless allowed).

    Examples::

        ddti = find_image_mask_pairs("ddti/images", "ddti/masks")
        # masks ISIC_<id>.png or ISIC_<id>_segmentation.png
        isic = find_image_mask_pairs("isic2016/images", "isic2016/masks")
    """
    images = list_images(images_dir, image_suffixes)
    if not images:
        raise DataError(images_dir, f"no image files ({', '.join(image_suffixes)}) in the folder")
    out = ImageMaskPairs()
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise DataError(masks_dir, "mask folder does not exist")
    for pid, img in images.items():
        mask = None
        if masks_dir is not None:
            mask = find_mask(masks_dir, pid, mask_stems, mask_suffixes, exclude=img)
            if mask is None:
                out.images_without_mask.append(img)
        out.pairs.append({"name": pid, "image": str(img), "label": None if mask is None else str(mask)})
    if out.images_without_mask:
        shown = ", ".join(p.name for p in out.images_without_mask[:5])
        more = "" if len(out.images_without_mask) <= 5 else f" (+{len(out.images_without_mask) - 5} more)"
        msg = f"{len(out.images_without_mask)} image(s) have no mask in {masks_dir}: {shown}{more}"
        if not as_bool(allow_missing_masks, "allow_missing_masks"):
            raise DataError(images_dir, msg)
        logger.warning("%s: %s", images_dir, msg)
    return out


# ---------------------------------------------------------------------------------------------- pixels
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


def read_rgb(path: str | os.PathLike) -> np.ndarray:
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
    t = torch.from_numpy(read_rgb(p)).permute(2, 0, 1).contiguous()
    return t if size is None else resize_image(t, size)


def load_grey(path: str | os.PathLike, size: int | None = 224) -> torch.Tensor:
    """Read an image as a float32 grey tensor [1, size, size] in [0, 1] (``size=None``: stored size); RGB images
    become their ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (ultrasound screenshots are often stored as RGB).

    Raises:
        DataError: missing or unreadable file, unsupported value range.
    """
    rgb = read_rgb(path)
    grey = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None]
    return t if size is None else resize_image(t, size)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """(H, W) bool mask at the stored size (binarised with :func:`binarize_mask`)."""
    return binarize_mask(read_image2d(path, is_label=True), path)


def load_mask(path: str | os.PathLike, size: int | None = 224) -> torch.Tensor:
    """Read a mask as a float32 0/1 tensor [1, size, size] (``size=None``: stored size).

    Raises:
        DataError: missing or unreadable file, colour mask, values that are neither 0/1 nor 0/255.
    """
    p = Path(path)
    t = torch.from_numpy(read_mask(p).astype(np.float32))[None]
    return t if size is None else resize_mask(t, size)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - any PIL failure becomes a DataError naming the file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(path, f"cannot read image header ({type(e).__name__}: {first})") from e
    return int(h), int(w)


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
            files = list(list_images(self.root).values())
            if not files:
                raise DataError(self.root, f"no image files ({', '.join(IMAGE_2D_SUFFIXES)}) in the folder")
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
            pid = strip_suffix(f)
            if pid in by_id:
                raise DataError(f, f"two images with the id {pid!r} ({by_id[pid]})")
            by_id[pid] = f
        self.masks_dir = None if masks is None else Path(masks)
        self._images = by_id
        self._masks: dict[str, Path] = {}
        self.support_ids: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._cache = LRUCache(cache_size)
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
        mpath = find_mask(self.masks_dir, pid, MASK_STEMS, exclude=img)
        if mpath is None:
            return self._bad(img, f"no mask in {self.masks_dir} (looked for {pid}{MASK_2D_SUFFIXES[0]} and variants)")
        try:
            h, w = image_size(img)
            m = read_mask(mpath)
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
        return self._cache.get_or_load(("image", pid), lambda: load_rgb(self.image_path(pid), self.size)).clone()

    def load_mask(self, pid: str) -> torch.Tensor:
        """Mask of image ``pid`` as a float32 0/1 tensor [1, size, size] (fresh copy)."""
        return self._cache.get_or_load(("mask", pid), lambda: load_mask(self.mask_path(pid), self.size)).clone()

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
        new._cache = LRUCache(self._cache.maxsize)
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
