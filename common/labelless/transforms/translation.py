# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Image transforms of the unpaired translation training (cltnet.md §1.3), as MONAI array/dict twins.

Training (:class:`RandTranslationAugment`): resize to ``load_size`` (306 for 256 crops), random horizontal and
vertical flips (p 0.5 each), random ``image_size`` crop, contrast jitter (factor in [1 − c, 1 + c] around the mean
luminance, as torchvision's ``ColorJitter(contrast=c)``), then mean 0.5 / std 0.5 normalisation to [−1, 1].
Test (:class:`TranslationInput`): resize to ``image_size`` and normalise.

Optional colour constancy (:func:`shades_of_grey`, not in the spec): each whole image's illuminant, estimated as the
Minkowski ``p``-mean of each channel, is mapped to grey, so that skin of another tone or under another light looks
like the training skin. The domain builder applies it to the whole training images before cropping
(``write_image_domains(color_constancy=p)``) and :class:`TranslationInput` to each whole test image.

Inputs are ``[C, H, W]`` float images in [0, 1] (e.g. from :func:`labelless.data.images.load_rgb`). Every random
draw comes from ``self.R`` (``set_random_state``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

from labelless.errors import ConfigError, DataError

__all__ = [
    "default_load_size",
    "shades_of_grey",
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


def shades_of_grey(img: Any, power: float = 6.0, channel_last: bool = False) -> Any:
    """Shades-of-grey colour constancy (Finlayson and Trezzi, 2004; a usual ISIC pre-processing): the illuminant
    ``e_c = mean(I_c^p)^(1/p)`` of each channel ``c`` is mapped to grey by the gains ``|e| / (sqrt(C) e_c)``, which
    keep the illuminant's length, and the result is clipped to the input's range.

    Args:
        img: an image in [0, 1] (float) or [0, 255] (uint8): a torch tensor or a numpy array, ``[C, H, W]`` or, with
            ``channel_last``, ``[H, W, C]``. The output has the input's type, layout and dtype.
        power: the Minkowski norm ``p`` (1: grey world, large: max-RGB); ``0`` returns the image unchanged.
        channel_last: the channels are the last axis (e.g. :func:`labelless.data.images.read_rgb`'s arrays).

    Raises:
        ConfigError: a negative or non-finite ``power``.
        DataError: not a 3-dimensional image, or non-finite values.
    """
    try:
        p = float(power)
    except (TypeError, ValueError):
        p = math.nan
    if not p >= 0 or not math.isfinite(p):
        raise ConfigError(f"color_constancy (the shades-of-grey power) must be >= 0 (0: off), got {power!r}")
    if p == 0:
        return img
    is_numpy = isinstance(img, np.ndarray)
    dtype = img.dtype if is_numpy else None
    t = torch.from_numpy(np.asarray(img, dtype=np.float32)) if is_numpy else torch.as_tensor(img)
    if t.ndim == 3 and channel_last:
        t = t.permute(2, 0, 1)
    scale = 255.0 if dtype == np.uint8 else 1.0
    t = _check(t / scale)
    e = t.clamp(0.0, 1.0).reshape(t.shape[0], -1).double().pow(p).mean(1).pow(1.0 / p)
    if float(e.min()) > 1e-6:  # a black channel has no illuminant to estimate: the image is left as it is
        t = (t * (e.norm() / (math.sqrt(t.shape[0]) * e)).to(t.dtype)[:, None, None]).clamp(0.0, 1.0)
    t = t.permute(1, 2, 0) if channel_last else t
    if not is_numpy:
        return t
    out = t.numpy() * scale
    return out.round().astype(np.uint8) if dtype == np.uint8 else out.astype(dtype)


class TranslationInput(Transform):
    """Test-time input of the translation networks: optional colour constancy, resize to ``image_size``, normalise
    [0, 1] → [−1, 1].

    Args:
        image_size: output side.
        color_constancy: the :func:`shades_of_grey` power applied to the whole image first (0, the spec: off); use
            the value the training domains were built with.
    """

    def __init__(self, image_size: int = 256, color_constancy: float = 0.0) -> None:
        if int(image_size) < 8:
            raise ConfigError(f"image_size must be >= 8, got {image_size!r}")
        self.image_size = int(image_size)
        shades_of_grey(torch.ones(3, 1, 1), color_constancy)  # checks the value
        self.color_constancy = float(color_constancy)

    def __call__(self, img: Any) -> torch.Tensor:
        return _normalise(_resize(shades_of_grey(_check(img), self.color_constancy), self.image_size))


class TranslationInputd(MapTransform):
    """Dictionary version of :class:`TranslationInput`."""

    def __init__(
        self,
        keys: KeysCollection,
        image_size: int = 256,
        color_constancy: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = TranslationInput(image_size, color_constancy)

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
