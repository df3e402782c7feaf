# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Image transforms of the unpaired translation training (cltnet.md §1.3), as MONAI array/dict twins.

Training (:class:`RandTranslationAugment`): resize to ``load_size`` (306 for 256 crops), random horizontal and
vertical flips (p 0.5 each), random ``image_size`` crop, contrast jitter (factor in [1 − c, 1 + c] around the mean
luminance, as torchvision's ``ColorJitter(contrast=c)``), then mean 0.5 / std 0.5 normalisation to [−1, 1].
Test (:class:`TranslationInput`): resize to ``image_size`` and normalise.

Inputs are ``[C, H, W]`` float images in [0, 1] (e.g. from :func:`labelless.data.images.load_rgb`). Every random
draw comes from ``self.R`` (``set_random_state``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

from labelless.errors import ConfigError, DataError

__all__ = [
    "default_load_size",
    "TranslationInput",
    "TranslationInputd",
    "RandTranslationAugment",
    "RandTranslationAugmentd",
]

_LUMA = (0.299, 0.587, 0.114)


def default_load_size(image_size: int) -> int:
    """The resize before the random crop: 306 for 256 (the reference's ratio), in proportion otherwise."""
    return int(round(int(image_size) * 306 / 256))


def _check(img: Any, name: str = "image") -> torch.Tensor:
    t = torch.as_tensor(img, dtype=torch.float32)
    if t.ndim != 3:
        raise DataError(name, f"expected a [C, H, W] image, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DataError(name, "non-finite values in the image")
    return t


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(img.shape[-2:]) == (size, size):
        return img
    shrink = img.shape[-2] > size or img.shape[-1] > size
    return F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)[0]


def _normalise(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0.0, 1.0) - 0.5) / 0.5


class TranslationInput(Transform):
    """Test-time input of the translation networks: resize to ``image_size``, normalise [0, 1] → [−1, 1].

    Args:
        image_size: output side.
    """

    def __init__(self, image_size: int = 256) -> None:
        if int(image_size) < 8:
            raise ConfigError(f"image_size must be >= 8, got {image_size!r}")
        self.image_size = int(image_size)

    def __call__(self, img: Any) -> torch.Tensor:
        return _normalise(_resize(_check(img), self.image_size))


class TranslationInputd(MapTransform):
    """Dictionary version of :class:`TranslationInput`."""

    def __init__(self, keys: KeysCollection, image_size: int = 256, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = TranslationInput(image_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class RandTranslationAugment(RandomizableTransform):
    """Training augmentation of cltnet.md §1.3 (see the module docstring).

    Args:
        image_size: crop side (the network input).
        load_size: side of the resize before cropping (default :func:`default_load_size`).
        flip_prob: probability of each flip.
        contrast: contrast jitter amplitude ``c`` (factor drawn in [1 − c, 1 + c]); 0 disables it.

    Examples::

        aug = RandTranslationAugment(256)
        aug.set_random_state(seed=0)
        x = aug(load_rgb("ISIC_0001.jpg", size=None))   # [3, 256, 256] in [-1, 1]
    """

    def __init__(
        self, image_size: int = 256, load_size: int | None = None, flip_prob: float = 0.5, contrast: float = 0.1
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        self.image_size = int(image_size)
        self.load_size = default_load_size(self.image_size) if load_size is None else int(load_size)
        self.flip_prob = float(flip_prob)
        self.contrast = float(contrast)
        if self.image_size < 8 or self.load_size < self.image_size:
            raise ConfigError(f"need 8 <= image_size <= load_size, got {self.image_size}, {self.load_size}")
        if not 0.0 <= self.flip_prob <= 1.0 or not 0.0 <= self.contrast < 1.0:
            raise ConfigError(f"flip_prob must be in [0, 1] and contrast in [0, 1), got {flip_prob}, {contrast}")
        self._params: dict[str, Any] = {}

    def randomize(self, data: Any = None) -> None:
        span = self.load_size - self.image_size
        self._params = {
            "hflip": self.R.rand() < self.flip_prob,
            "vflip": self.R.rand() < self.flip_prob,
            "top": int(self.R.randint(0, span + 1)),
            "left": int(self.R.randint(0, span + 1)),
            "factor": float(self.R.uniform(1.0 - self.contrast, 1.0 + self.contrast)) if self.contrast > 0 else 1.0,
        }

    def __call__(self, img: Any, randomize: bool = True) -> torch.Tensor:
        t = _resize(_check(img), self.load_size)
        if randomize or not self._params:
            self.randomize()
        p = self._params
        if p["hflip"]:
            t = t.flip(-1)
        if p["vflip"]:
            t = t.flip(-2)
        t = t[:, p["top"] : p["top"] + self.image_size, p["left"] : p["left"] + self.image_size]
        if p["factor"] != 1.0:
            weights = torch.tensor(_LUMA if t.shape[0] == 3 else (1.0,) * t.shape[0], dtype=t.dtype)
            grey = (t * weights[:, None, None] / weights.sum()).sum(0).mean()
            t = (t - grey) * p["factor"] + grey
        return _normalise(t)


class RandTranslationAugmentd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandTranslationAugment`: each key gets its own draws."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.transform = RandTranslationAugment(**kwargs)

    def set_random_state(self, seed: int | None = None, state: Any = None) -> RandTranslationAugmentd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
