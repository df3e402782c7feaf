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

__all__ = ["PseudoLabelClassSource", "pseudo_label_source"]

#: prefix of the pseudo-label class names (``pseudo/<image id>/<slot>``)
PSEUDO_PREFIX = "pseudo/"


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
        self.min_area = as_float(min_area, "min_area")
        self.max_area = as_float(max_area, "max_area")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise ConfigError(f"need 0 <= min_area < max_area <= 1, got {min_area!r}, {max_area!r}")
        self.rotation = as_float(rotation, "rotation")
        lo, hi = (as_float(s, "scale") for s in scale)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
        self.scale = (lo, hi)
        self.translation = as_float(translation, "translation")
        self.colour = as_float(colour, "colour")
        self.seed = int(seed)
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
        image = self.pool.load_image(pid)
        img = torch.as_tensor(image, dtype=torch.float32)
        if img.ndim != 3 or img.shape[0] != 3:
            raise DataError(f"unlabelled image {pid!r}", f"expected a [3, H, W] RGB image, got {tuple(img.shape)}")
        if not bool(torch.isfinite(img).all()):
            raise DataError(f"unlabelled image {pid!r}", "image has non-finite values")
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
        angle = math.radians(float(rng.uniform(-self.rotation, self.rotation)))
        zoom = float(rng.uniform(*self.scale))
        tx, ty = (float(v) for v in rng.uniform(-self.translation, self.translation, size=2) * 2)
        fx, fy = (-1.0 if f else 1.0 for f in rng.random(2) < 0.5)
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[cos * fx, -sin, tx], [sin, cos * fy, ty]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, 1, *img.shape[1:]], align_corners=False)
        out_img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
        out_msk = F.grid_sample(mask[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
        if self.colour > 0:
            c = self.colour
            bright, contrast = rng.uniform(-c, c), rng.uniform(1 - c, 1 + c)
            gamma = float(np.exp(rng.uniform(-c, c)))
            mean = out_img.mean()
            out_img = ((out_img - mean) * contrast + mean + bright).clamp(0, 1) ** gamma
        return out_img.contiguous(), out_msk

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


def pseudo_label_source(
    pools: dict[str, Any] | None = None,
    image_dirs: Sequence[str | os.PathLike] | str | None = None,
    image_size: int = 112,
    fraction: float = 0.0,
    **kwargs: Any,
) -> PseudoLabelClassSource | None:
    """The pseudo-label class source of a bundle config: the target pools' ``unlabeled`` pool (its masks are never
    read) plus any folders of unlabelled images in ``image_dirs``; ``None`` when ``fraction`` is 0.

    Args:
        pools: :func:`~labelless.fewshot.image.workflow.target_pools` output (its ``unlabeled`` pool is used).
        image_dirs: extra folders of unlabelled images (e.g. a dermoscopy archive), read without masks.
        image_size: image size of the episodes.
        fraction: the share of tasks drawn from pseudo-label classes (``0`` builds nothing).
        kwargs: :class:`PseudoLabelClassSource` options.

    Raises:
        ConfigError: ``fraction`` outside [0, 1], or no image at all.
        DataError: a folder in ``image_dirs`` that does not exist or holds no image.
    """
    from labelless.data.images import ImageFolderPool, list_images

    frac = as_float(fraction, "pseudo_fraction")
    if not 0 <= frac <= 1:
        raise ConfigError(f"pseudo_fraction must be in [0, 1], got {fraction!r}")
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
    pool = ImageFolderPool(list(seen.values()), size=int(image_size))
    return PseudoLabelClassSource(pool, **kwargs)
