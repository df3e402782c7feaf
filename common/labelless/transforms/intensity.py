# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Intensity normalisation of the few-shot protocol (fewshot_protocol.md §2.6): :func:`zscore` and its transforms
:class:`ZScoreNormalize` / :class:`ZScoreNormalized` (the few-shot inference runners' normalisation step)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from labelless.errors import ConfigError, DataError
from labelless.options import as_float
from labelless.utils import is_unset

__all__ = [
    "NORMALIZATIONS",
    "zscore",
    "zscore_options",
    "fold_statistics",
    "slices_to_tensor_input",
    "ZScoreNormalize",
    "ZScoreNormalized",
    "ZScoreNormalizeD",
    "ZScoreNormalizeDict",
]

#: the few-shot normalisations: per-volume z-score (MR) or fixed training statistics (CT)
NORMALIZATIONS = ("volume_zscore", "fixed")


def zscore(array: np.ndarray, mean: float | None = None, std: float | None = None, source=None) -> np.ndarray:
    """(x - mean) / std as float32; per-volume statistics when ``mean``/``std`` are ``None`` (MR rule).

    Raises:
        DataError: non-finite values, or a constant volume (std == 0).
    """
    a = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise DataError(source, "image contains NaN or infinite intensities")
    m = float(a.mean()) if mean is None else float(mean)
    s = float(a.std()) if std is None else float(std)
    if not np.isfinite(s) or s <= 0:
        raise DataError(source, "image is constant (standard deviation 0): cannot z-score it")
    return ((a - m) / s).astype(np.float32)


def fold_statistics(volumes: Iterable[np.ndarray]) -> tuple[float, float]:
    """Global mean and std over all voxels of ``volumes`` (CT rule: training scans of the fold)."""
    n, s, ss = 0, 0.0, 0.0
    for v in volumes:
        a = np.asarray(v, dtype=np.float64)
        n += a.size
        s += float(a.sum())
        ss += float((a * a).sum())
    if n == 0:
        raise DataError(None, "no voxels to compute normalisation statistics from")
    mean = s / n
    return float(mean), float(np.sqrt(max(ss / n - mean * mean, 0.0)))


def slices_to_tensor_input(slices: np.ndarray) -> np.ndarray:
    """(B, H, W) or (H, W) normalised slices -> (B, 3, H, W) float32 by repeating the channel (no ImageNet stats)."""
    a = np.asarray(slices, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise DataError(None, f"expected (B, H, W) slices, got shape {a.shape}")
    return np.repeat(a[:, None], 3, axis=1)


def zscore_options(normalization: str = "volume_zscore", norm_stats: Any = None) -> tuple[float, float] | None:
    """Check a few-shot normalisation choice: ``None`` for ``"volume_zscore"`` (per-volume statistics), the
    ``(mean, std)`` pair for ``"fixed"``.

    Raises:
        ConfigError: an unknown ``normalization``, ``norm_stats`` that is not a ``[mean, std]`` pair with std > 0,
            ``"fixed"`` without ``norm_stats``.
    """
    if str(normalization) not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be 'volume_zscore' or 'fixed', got {normalization!r}")
    stats = None
    if not is_unset(norm_stats):
        pair = list(norm_stats) if isinstance(norm_stats, (Sequence, np.ndarray)) else []
        if isinstance(norm_stats, (str, bytes)) or len(pair) != 2:
            raise ConfigError(f"norm_stats must be [mean, std] of the training scans, got {norm_stats!r}")
        stats = (as_float(pair[0], "norm_stats mean"), as_float(pair[1], "norm_stats std", 0.0, lo_open=True))
    if str(normalization) == "fixed" and stats is None:
        raise ConfigError("normalization 'fixed' needs norm_stats=(mean, std) of the training scans")
    return stats if str(normalization) == "fixed" else None


class ZScoreNormalize(Transform):
    """:func:`zscore` as a transform: per-volume statistics (``"volume_zscore"``, MR) or the training scans'
    ``norm_stats`` (``"fixed"``, CT); float32 out. Refuses NaN/inf and constant data (naming the file when known).

    Args:
        normalization: ``"volume_zscore"`` or ``"fixed"``.
        norm_stats: ``(mean, std)`` for ``"fixed"`` (ignored otherwise, but checked when given).

    Examples::

        norm = ZScoreNormalize("fixed", norm_stats=[-180.0, 420.0])(ct_volume)
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, normalization: str = "volume_zscore", norm_stats: Sequence[float] | None = None) -> None:
        self.normalization = str(normalization)
        self.stats = zscore_options(normalization, norm_stats)

    def __call__(self, img: Any, source: Any = None) -> np.ndarray:
        mean, std = self.stats if self.stats is not None else (None, None)
        arr = img.detach().cpu().numpy() if hasattr(img, "detach") else img
        return zscore(arr, mean, std, source=source)


class ZScoreNormalized(MapTransform):
    """Dictionary version of :class:`ZScoreNormalize` (errors name the file recorded by
    :class:`~labelless.io.loading.LoadFiled`).

    Args:
        keys: images to normalise.
        normalization, norm_stats: see :class:`ZScoreNormalize`.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = ZScoreNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        normalization: str = "volume_zscore",
        norm_stats: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = ZScoreNormalize(normalization, norm_stats)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = d.get(f"{key}_meta_dict")
            d[key] = self.normalizer(d[key], meta.get("filename_or_obj") if isinstance(meta, Mapping) else None)
        return d


ZScoreNormalizeD = ZScoreNormalizeDict = ZScoreNormalized
