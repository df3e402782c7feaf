# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Label-free meta-training classes from unlabelled images: superpixel pseudo-labels (the SSL-ALPNet idea in 2D RGB).

A **pseudo-label class** is one segment of one unlabelled image. The segments of the image's grey version come from a
method drawn per class from ``methods``:

- ``"region"``: intensity regions — the grey image smoothed (σ 2), split into 2 or 3 intensity classes by multi-Otsu
  thresholds (``region_classes``), each class's connected components a segment (holes filled when chosen). On
  dermoscopy images the darker region is often the lesion, but nothing tells the method so: every region is a class.
- ``"felzenszwalb"`` / ``"slic"``: superpixels of the package's
  :class:`~labelless.transforms.superpixel.Superpixels` transform (Felzenszwalb scale ``felzenszwalb_scale``, minimum
  size ``felzenszwalb_min_size``; SLIC with a segment count drawn from ``n_segments``).

One segment whose area lies in ``[min_area, max_area]`` of the image is picked, and the class's instances are
``n_views`` random views of (image, segment mask): a seeded affine warp (rotation, scale, translation, flips) applied
to both, and a seeded colour jitter (brightness, contrast, gamma) to the image. Support and query of a task are two
views of the same segment, as in SSL-ALPNet's superpixel episodes.

Only images are read (``pool.load_image``); a pool's masks, if it has any, are never opened, so pseudo-label classes
can be built from the unlabelled part of a labelled target-domain folder. Every draw is a function of
``(seed, image index, class slot, view)``: classes and views are reproducible and independent of access order.

:class:`PseudoLabelClassSource` implements :class:`~labelless.fewshot.image.episodes.ClassPairSource`, so it can be
mixed with the synthetic and exported classes by :class:`~labelless.fewshot.image.episodes.MetaTrainEpisodes`
(``pseudo_source``, ``pseudo_fraction``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelless.errors import ConfigError, DataError
from labelless.options import as_float, as_int, as_int_list
from labelless.utils import LRUCache, is_unset

__all__ = ["PseudoLabelClassSource", "DarkRegionClassSource", "dark_region_mask", "random_view", "pseudo_label_source"]

logger = logging.getLogger(__name__)

#: prefix of the pseudo-label class names (``pseudo/<image id>/<slot>``)
PSEUDO_PREFIX = "pseudo/"


def _set_view_options(
    source: Any,
    min_area: float,
    max_area: float,
    rotation: float,
    scale: Sequence[float],
    translation: float,
    colour: float,
    seed: int,
) -> None:
    """Check and set the area and view options shared by the pseudo-label sources (see their Args)."""
    source.min_area = as_float(min_area, "min_area")
    source.max_area = as_float(max_area, "max_area")
    if not 0 <= source.min_area < source.max_area <= 1:
        raise ConfigError(f"need 0 <= min_area < max_area <= 1, got {min_area!r}, {max_area!r}")
    source.rotation = as_float(rotation, "rotation")
    if isinstance(scale, (str, bytes)) or len(scale) != 2:
        raise ConfigError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
    lo, hi = (as_float(v, "scale") for v in scale)
    if not 0 < lo <= hi:
        raise ConfigError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
    source.scale = (lo, hi)
    source.translation = as_float(translation, "translation")
    source.colour = as_float(colour, "colour")
    source.seed = int(seed)


def _checked_image(pool: Any, pid: str) -> torch.Tensor:
    """``pool.load_image(pid)`` as a float32 tensor, checked to be a finite ``[3, H, W]`` image."""
    img = torch.as_tensor(pool.load_image(pid), dtype=torch.float32)
    if img.ndim != 3 or img.shape[0] != 3:
        raise DataError(f"unlabelled image {pid!r}", f"expected a [3, H, W] RGB image, got {tuple(img.shape)}")
    if not bool(torch.isfinite(img).all()):
        raise DataError(f"unlabelled image {pid!r}", "image has non-finite values")
    return img


class PseudoLabelClassSource:
    """Superpixel pseudo-label classes of unlabelled images (see the module docstring).

    Args:
        pool: unlabelled images (:class:`~labelless.fewshot.image.episodes.ImagePool`); only ``image_ids`` and
            ``load_image`` are used.
        classes_per_image: pseudo-label classes (segments) per image.
        n_views: instances (views) per class; must be at least K + 1.
        methods: segment methods drawn per class (``"region"``, ``"felzenszwalb"``, ``"slic"``).
        region_classes: numbers of multi-Otsu intensity classes of ``"region"`` (one drawn per class).
        felzenszwalb_scale: Felzenszwalb scale on the grey image in [0, 255].
        felzenszwalb_min_size: Felzenszwalb minimum segment size, pixels.
        n_segments: SLIC segment counts (one drawn per class).
        compactness: SLIC compactness on the grey image in [0, 255].
        min_area: smallest segment area, as a fraction of the image, eligible as a class.
        max_area: largest eligible segment area fraction.
        rotation: largest rotation of a view, degrees.
        scale: ``(low, high)`` zoom range of a view.
        translation: largest shift of a view, as a fraction of the image size.
        colour: strength of the colour jitter (0 disables it).
        seed: seed of every draw.
        cache_size: superpixel maps kept in memory.

    Raises:
        ConfigError: bad options or an empty pool.

    Examples::

        pool = ImageFolderPool("isic_unlabelled", size=112)
        source = PseudoLabelClassSource(pool, classes_per_image=4, n_views=6)
        image, mask = source.load_pair(source.classes[0], 0)   # [3, 112, 112], [1, 112, 112]
    """

    def __init__(
        self,
        pool: Any,
        classes_per_image: int = 4,
        n_views: int = 6,
        methods: Sequence[str] = ("region", "felzenszwalb"),
        region_classes: Sequence[int] = (2, 3),
        felzenszwalb_scale: float = 300.0,
        felzenszwalb_min_size: int = 250,
        n_segments: Sequence[int] = (8, 16),
        compactness: float = 10.0,
        min_area: float = 0.02,
        max_area: float = 0.6,
        rotation: float = 30.0,
        scale: Sequence[float] = (0.8, 1.2),
        translation: float = 0.1,
        colour: float = 0.15,
        seed: int = 0,
        cache_size: int = 512,
    ) -> None:
        if pool is None or not hasattr(pool, "image_ids") or not hasattr(pool, "load_image"):
            raise ConfigError("pseudo-label classes need an image pool with image_ids and load_image(id)")
        self.pool = pool
        self.image_ids = [str(i) for i in pool.image_ids]
        if not self.image_ids:
            raise ConfigError("pseudo-label classes need at least one unlabelled image")
        self.classes_per_image = as_int(classes_per_image, "classes_per_image", minimum=1)
        self.n_views = as_int(n_views, "n_views", minimum=2)
        self.methods = [str(m).lower() for m in ([methods] if isinstance(methods, str) else methods)]
        unknown = set(self.methods) - {"region", "felzenszwalb", "slic"}
        if not self.methods or unknown:
            raise ConfigError(f"methods must list 'region', 'felzenszwalb' or 'slic', got {methods!r}")
        self.region_classes = as_int_list(region_classes, "region_classes", minimum=2, maximum=5)
        self.felzenszwalb_scale = as_float(felzenszwalb_scale, "felzenszwalb_scale")
        self.felzenszwalb_min_size = as_int(felzenszwalb_min_size, "felzenszwalb_min_size", minimum=1)
        self.n_segments = as_int_list(n_segments, "n_segments", minimum=2)
        self.compactness = as_float(compactness, "compactness")
        _set_view_options(self, min_area, max_area, rotation, scale, translation, colour, seed)
        self.classes = [
            f"{PSEUDO_PREFIX}{pid}/{j}" for pid in self.image_ids for j in range(self.classes_per_image)
        ]  # fmt: skip
        self._index = {pid: i for i, pid in enumerate(self.image_ids)}
        self._view_ids = [f"v{v}" for v in range(self.n_views)]
        self._cache = LRUCache(int(cache_size))

    def __len__(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"PseudoLabelClassSource(images={len(self.image_ids)}, classes={len(self.classes)}, "
                f"views={self.n_views}, methods={self.methods})")  # fmt: skip

    def ids(self, cls: str) -> list[str]:
        """The instance ids (views) of class ``cls``."""
        self._parse(cls)
        return list(self._view_ids)

    def _parse(self, cls: str) -> tuple[str, int]:
        name = str(cls)
        if not name.startswith(PSEUDO_PREFIX):
            raise KeyError(f"not a pseudo-label class: {cls!r}")
        pid, _, slot = name[len(PSEUDO_PREFIX) :].rpartition("/")
        if pid not in self._index or not slot.isdigit() or int(slot) >= self.classes_per_image:
            raise KeyError(f"unknown pseudo-label class {cls!r}")
        return pid, int(slot)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, *key))

    def segment_mask(self, cls: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The image of class ``cls`` and its pseudo-label (the chosen segment), before any view transform.

        Returns:
            ``(image [3, H, W] float32 in [0, 1], mask [1, H, W] float32 {0, 1})``.

        Raises:
            DataError: an image that is not a 3-channel float image, or a constant image (no segment).
        """
        pid, slot = self._parse(cls)
        i = self._index[pid]
        img = _checked_image(self.pool, pid)
        mask = self._cache.get_or_load(("mask", cls), lambda: self._choose_segment(img, pid, i, slot))
        return img, mask.clone()

    def _choose_segment(self, img: torch.Tensor, pid: str, i: int, slot: int) -> torch.Tensor:
        """The pseudo-label of class slot ``slot`` of image ``pid`` (index ``i``): a function of the seed only."""
        rng = self._rng(i, slot)
        method = self.methods[int(rng.integers(len(self.methods)))]
        param = {"region": self.region_classes, "slic": self.n_segments}.get(method, [0])
        param = int(param[int(rng.integers(len(param)))])
        sp = self._cache.get_or_load((pid, method, param), lambda: self._segments(img, method, param))
        labels, counts = np.unique(sp, return_counts=True)
        frac = counts / sp.size
        eligible = labels[(frac >= self.min_area) & (frac <= self.max_area)]
        if eligible.size == 0:  # documented fallback: the largest segment below max_area, else the smallest one
            below = labels[frac <= self.max_area]
            eligible = below[[int(np.argmax(counts[frac <= self.max_area]))]] if below.size else labels[[0]]
        chosen = int(eligible[int(rng.integers(eligible.size))])
        chosen_mask = sp == chosen
        if method == "region":
            from scipy import ndimage

            chosen_mask = ndimage.binary_fill_holes(chosen_mask)
        mask = torch.from_numpy(chosen_mask.astype(np.float32))[None]
        if not bool(mask.any()) or bool(mask.all()):
            raise DataError(f"unlabelled image {pid!r}", "no superpixel segment (constant image?)")
        return mask

    def _segments(self, img: torch.Tensor, method: str, param: int) -> np.ndarray:
        """Segment map (int32, ids per segment) of the grey version of ``img`` by ``method``."""
        grey = (img * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0).numpy().astype(np.float64) * 255.0
        if method == "region":
            from scipy import ndimage
            from skimage.filters import gaussian, threshold_multiotsu

            smooth = gaussian(grey, sigma=2.0, preserve_range=True)
            if float(smooth.max() - smooth.min()) < 1e-6:
                return np.zeros(grey.shape, dtype=np.int32)
            try:
                levels = np.digitize(smooth, threshold_multiotsu(smooth, classes=param))
            except ValueError:  # too few distinct values for this many classes
                levels = (smooth > smooth.mean()).astype(np.int64)
            out = np.zeros(grey.shape, dtype=np.int32)
            n = 0
            for c in np.unique(levels):
                comp, m = ndimage.label(levels == c)
                out[comp > 0] = comp[comp > 0] + n
                n += m
            return out
        from labelless.transforms.superpixel import Superpixels

        if method == "felzenszwalb":
            tr = Superpixels(method="felzenszwalb", scale=self.felzenszwalb_scale, sigma=1.0,
                             min_size=self.felzenszwalb_min_size)  # fmt: skip
        else:
            tr = Superpixels(method="slic", n_segments=param, compactness=self.compactness, sigma=1.0)
        return np.asarray(tr(grey), dtype=np.int32)

    def _view(self, img: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        return random_view(img, mask, rng, self.rotation, self.scale, self.translation, self.colour)

    def load_pair(self, cls: str, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """View ``idx`` of class ``cls``: ``(image [3, H, W], mask [1, H, W])``; the mask is never empty (a view
        that would push the segment out of the image falls back to the untransformed pair)."""
        pid, slot = self._parse(cls)
        if not 0 <= int(idx) < self.n_views:
            raise IndexError(f"view {idx} out of range [0, {self.n_views}) of pseudo-label class {cls!r}")
        img, mask = self.segment_mask(cls)
        img_v, msk_v = self._view(img, mask, self._rng(self._index[pid], slot, 1 + int(idx)))
        if not bool(msk_v.any()):
            return img, mask
        return img_v, msk_v


def random_view(
    img: torch.Tensor,
    mask: torch.Tensor,
    rng: np.random.Generator,
    rotation: float,
    scale: tuple[float, float],
    translation: float,
    colour: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random view of ``(image [3, H, W], mask [1, H, W])``: one affine warp (rotation up to ``rotation``
    degrees, zoom in ``scale``, shift up to ``translation`` of the size, random flips) applied to both (reflection
    padding for the image, zeros for the mask), then a colour jitter of strength ``colour`` (brightness, contrast,
    gamma) of the image. Every draw comes from ``rng``."""
    angle = math.radians(float(rng.uniform(-rotation, rotation)))
    zoom = float(rng.uniform(*scale))
    tx, ty = (float(v) for v in rng.uniform(-translation, translation, size=2) * 2)
    fx, fy = (-1.0 if f else 1.0 for f in rng.random(2) < 0.5)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[cos * fx, -sin, tx], [sin, cos * fy, ty]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, *img.shape[1:]], align_corners=False)
    out_img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
    out_msk = F.grid_sample(mask[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    if colour > 0:
        c = colour
        bright, contrast = rng.uniform(-c, c), rng.uniform(1 - c, 1 + c)
        gamma = float(np.exp(rng.uniform(-c, c)))
        mean = out_img.mean()
        out_img = ((out_img - mean) * contrast + mean + bright).clamp(0, 1) ** gamma
    return out_img.contiguous(), out_msk


#: Gaussian smoothing (pixels at the episode size) of the dark-region pseudo-label.
DARK_SIGMA = 2.0


def dark_region_mask(
    img: torch.Tensor, sigma: float = DARK_SIGMA, min_area: float = 0.02, max_area: float = 0.95
) -> np.ndarray | None:
    """The dark-region pseudo-label of one RGB image (no mask read): the grey image smoothed (Gaussian ``sigma``),
    thresholded by Otsu's method, darker = region; of its 8-connected components the largest one that lies mostly
    inside the inscribed ellipse (dark vignetting in the corners of dermoscopy images is skipped), holes filled.

    Args:
        img: ``[3, H, W]`` RGB in [0, 1].
        sigma: Gaussian smoothing of the grey image, pixels.
        min_area: smallest accepted region, as a fraction of the image.
        max_area: largest accepted region.

    Returns:
        ``[H, W]`` bool mask, or ``None`` when the image has no such region (constant image, only corner darkness,
        a region outside ``[min_area, max_area]``).
    """
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu

    grey = (img.float() * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0).numpy().astype(np.float64)
    smooth = gaussian(grey, sigma=float(sigma), preserve_range=True)
    if float(smooth.max() - smooth.min()) < 1e-6:
        return None
    dark = smooth < threshold_otsu(smooth)
    comp, n = ndimage.label(dark, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return None
    h, w = dark.shape
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1.0
    area = np.bincount(comp.ravel(), minlength=n + 1)
    area_in = np.bincount(comp.ravel(), weights=inside.ravel(), minlength=n + 1)
    ok = [c for c in range(1, n + 1) if area_in[c] >= 0.5 * area[c]]
    if not ok:
        return None
    best = max(ok, key=lambda c: area[c])
    mask = ndimage.binary_fill_holes(comp == best)
    frac = float(mask.mean())
    if not min_area <= frac <= max_area:
        return None
    return mask


class DarkRegionClassSource:
    """One label-free class shared by all unlabelled images: each image's dark region (:func:`dark_region_mask`).

    The classes of :class:`PseudoLabelClassSource` are segments of one image, so support and query are two views of
    the same picture. Here the class ``"pseudo/dark"`` has one instance per (image, view), so support and query
    nearly always come from different images, as in a real task, and the pseudo-label is the image's dark region,
    which on dermoscopy images is usually the lesion (nothing else about lesions is assumed, and no mask is read).
    Images with no acceptable region (:func:`dark_region_mask` returns ``None``) are left out, listed in
    ``skipped``.

    Args:
        pool: unlabelled images (only ``image_ids`` and ``load_image`` are used).
        n_views: random views per image (instance ids ``<image id>/v<k>``).
        sigma: Gaussian smoothing before the threshold, pixels.
        min_area: smallest accepted region fraction.
        max_area: largest accepted region fraction.
        rotation: largest rotation of a view, degrees.
        scale: ``(low, high)`` zoom range of a view.
        translation: largest shift of a view, as a fraction of the image size.
        colour: strength of the colour jitter (0 disables it).
        seed: seed of every view.
        cache_size: images kept in memory.
        output_size: size of the views (square). ``None``: the pool's image size. When the pool's images are larger
            (e.g. read at 2× for zoomed views, see ``scale``), the dark region is found at the pool's size (``sigma``
            in the pool's pixels), each view is warped at that size and then area-downsampled to ``output_size``
            (mask: area fraction > 0.5), so a zoomed-in view keeps the detail of the original image.

    Raises:
        ConfigError: bad options, an empty pool.
        DataError: fewer than 2 images with a dark region, an image that is not ``[3, H, W]`` or not finite.

    Examples::

        source = DarkRegionClassSource(ImageFolderPool("isic_unlabelled", size=112), n_views=6)
        image, mask = source.load_pair("pseudo/dark", 0)   # [3, 112, 112], [1, 112, 112]
    """

    CLASS = f"{PSEUDO_PREFIX}dark"

    def __init__(
        self,
        pool: Any,
        n_views: int = 6,
        sigma: float = DARK_SIGMA,
        min_area: float = 0.02,
        max_area: float = 0.95,
        rotation: float = 30.0,
        scale: Sequence[float] = (0.8, 1.2),
        translation: float = 0.1,
        colour: float = 0.15,
        seed: int = 0,
        cache_size: int = 512,
        output_size: int | None = None,
    ) -> None:
        self.output_size = None if output_size is None else as_int(output_size, "output_size", minimum=1)
        if pool is None or not hasattr(pool, "image_ids") or not hasattr(pool, "load_image"):
            raise ConfigError("dark-region classes need an image pool with image_ids and load_image(id)")
        image_ids = [str(i) for i in pool.image_ids]
        if not image_ids:
            raise ConfigError("dark-region classes need at least one unlabelled image")
        self.pool = pool
        self.n_views = as_int(n_views, "n_views", minimum=1)
        self.sigma = as_float(sigma, "sigma")
        _set_view_options(self, min_area, max_area, rotation, scale, translation, colour, seed)
        self._cache = LRUCache(int(cache_size))
        self.image_ids: list[str] = []
        self.skipped: list[str] = []
        for pid in image_ids:  # the pseudo-labels decide which images can be instances
            img = self._image(pid)
            mask = dark_region_mask(img, self.sigma, self.min_area, self.max_area)
            if mask is None:
                self.skipped.append(pid)
                continue
            self.image_ids.append(pid)
            self._cache.get_or_load(("mask", pid), lambda m=mask: torch.from_numpy(m.astype(np.float32))[None])
        if len(self.image_ids) < 2:
            raise DataError("dark-region classes", f"only {len(self.image_ids)} of {len(image_ids)} unlabelled "
                            "images have a dark region (need 2)")  # fmt: skip
        self._index = {pid: i for i, pid in enumerate(self.image_ids)}
        self._ids = [f"{pid}/v{v}" for pid in self.image_ids for v in range(self.n_views)]
        self.classes = [self.CLASS]

    def __len__(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"DarkRegionClassSource(images={len(self.image_ids)}, skipped={len(self.skipped)}, "
                f"views={self.n_views})")  # fmt: skip

    def ids(self, cls: str) -> list[str]:
        """The instance ids ``<image id>/v<k>`` of the class."""
        if str(cls) != self.CLASS:
            raise KeyError(f"unknown dark-region class {cls!r}")
        return list(self._ids)

    def _image(self, pid: str) -> torch.Tensor:
        return self._cache.get_or_load(("image", pid), lambda: _checked_image(self.pool, pid))

    def region_mask(self, pid: str) -> torch.Tensor:
        """The pseudo-label ``[1, H, W]`` of image ``pid`` (one of ``image_ids``), before any view transform."""
        if pid not in self._index:
            raise KeyError(f"no dark-region instance for image {pid!r}")

        def compute() -> torch.Tensor:
            mask = dark_region_mask(self._image(pid), self.sigma, self.min_area, self.max_area)
            assert mask is not None  # image_ids holds only images with a region (deterministic)
            return torch.from_numpy(mask.astype(np.float32))[None]

        return self._cache.get_or_load(("mask", pid), compute)

    def load_pair(self, cls: str, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance ``idx`` of the class: a random view of one image and its dark region; the mask is never empty (a
        view that would push the region out of the image falls back to the untransformed pair)."""
        if str(cls) != self.CLASS:
            raise KeyError(f"unknown dark-region class {cls!r}")
        if not 0 <= int(idx) < len(self._ids):
            raise IndexError(f"instance {idx} out of range [0, {len(self._ids)}) of class {cls!r}")
        pid = self.image_ids[int(idx) // self.n_views]
        img, mask = self._image(pid), self.region_mask(pid).clone()
        rng = np.random.default_rng((self.seed, self._index[pid], 1 + int(idx) % self.n_views))
        img_v, msk_v = random_view(img, mask, rng, self.rotation, self.scale, self.translation, self.colour)
        if not bool(msk_v.any()):
            img_v, msk_v = img.clone(), mask
        return self._resized(img_v, msk_v)

    def _resized(self, img: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The view at ``output_size`` (area downsampling; the mask keeps the cells more than half covered, or its
        area fraction when that empties it)."""
        size = self.output_size
        if size is None or tuple(img.shape[1:]) == (size, size):
            return img, mask
        img = F.interpolate(img[None], size=(size, size), mode="area")[0]
        frac = F.interpolate(mask[None].float(), size=(size, size), mode="area")[0]
        small = (frac > 0.5).float()
        return img.contiguous(), small if bool(small.any()) else (frac > 0).float()


def pseudo_label_source(
    pools: dict[str, Any] | None = None,
    image_dirs: Sequence[str | os.PathLike] | str | None = None,
    image_size: int = 112,
    fraction: float = 0.0,
    kind: str = "segments",
    oversample: int = 1,
    **kwargs: Any,
) -> PseudoLabelClassSource | DarkRegionClassSource | None:
    """The pseudo-label class source of a bundle config: the target pools' ``unlabeled`` pool (its masks are never
    read) plus any folders of unlabelled images in ``image_dirs``; ``None`` when ``fraction`` is 0.

    Args:
        pools: :func:`~labelless.fewshot.image.workflow.target_pools` output (its ``unlabeled`` pool is used).
        image_dirs: extra folders of unlabelled images (e.g. a dermoscopy archive), read without masks.
        image_size: image size of the episodes.
        fraction: the share of tasks drawn from pseudo-label classes (``0`` builds nothing).
        kind: ``"segments"`` (default): :class:`PseudoLabelClassSource`, one class per segment of one image;
            ``"dark"``: :class:`DarkRegionClassSource`, one class across images (each image's dark region; for
            images where the target is darker than its surroundings, such as dermoscopy lesions).
        oversample: ``"dark"`` only: the images are read at ``oversample × image_size``, their dark region found
            there (``sigma`` scaled by the same factor) and each view downsampled to ``image_size`` after its warp,
            so that zoomed-in views (``scale`` above 1) keep the original detail. 1: everything at ``image_size``.
        kwargs: options of the chosen source (``classes_per_image`` is ignored by ``"dark"``).

    Raises:
        ConfigError: ``fraction`` outside [0, 1], an unknown ``kind``, or no image at all.
        DataError: a folder in ``image_dirs`` that does not exist or holds no image.
    """
    from labelless.data.images import ImageFolderPool, list_images

    frac = as_float(fraction, "pseudo_fraction")
    if not 0 <= frac <= 1:
        raise ConfigError(f"pseudo_fraction must be in [0, 1], got {fraction!r}")
    kind = str(kind).lower()
    if kind not in ("segments", "dark"):
        raise ConfigError(f"pseudo_kind must be 'segments' or 'dark', got {kind!r}")
    factor = as_int(oversample, "pseudo_oversample", minimum=1)
    if factor > 1 and kind != "dark":
        raise ConfigError(f"pseudo_oversample={factor} is only used by pseudo_kind 'dark', got kind {kind!r}")
    if frac == 0:
        return None
    files: list[Path] = []
    unl = None if pools is None else pools.get("unlabeled")
    if unl is not None:
        files += [Path(unl.image_path(pid)) for pid in unl.image_ids]
    if not is_unset(image_dirs):
        dirs = [image_dirs] if isinstance(image_dirs, (str, os.PathLike)) else list(image_dirs)
        for d in dirs:
            if not Path(d).is_dir():
                raise DataError(d, "folder of unlabelled images does not exist")
            found = list(list_images(d).values())
            if not found:
                raise DataError(d, "no image files in the folder of unlabelled images")
            files += found
    if not files:
        raise ConfigError("pseudo_fraction > 0 needs unlabelled images (the target pools' unlabelled part or "
                          "pseudo_image_dirs)")  # fmt: skip
    seen: dict[str, Path] = {}
    for f in files:  # one id per file stem (the first folder wins)
        seen.setdefault(f.stem, f)
    pool = ImageFolderPool(list(seen.values()), size=int(image_size) * factor)
    if kind == "dark":
        kwargs.pop("classes_per_image", None)
        kwargs["sigma"] = as_float(kwargs.get("sigma", DARK_SIGMA), "sigma") * factor
        dark = DarkRegionClassSource(pool, output_size=int(image_size), **kwargs)
        logger.info("dark-region pseudo-label class: %d of %d unlabelled images (%d without a dark region)",
                    len(dark.image_ids), len(seen), len(dark.skipped))  # fmt: skip
        return dark
    return PseudoLabelClassSource(pool, **kwargs)
