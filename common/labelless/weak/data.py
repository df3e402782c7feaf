# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The training dataset of the weak-supervision task: unpaired A/B batches.

- :class:`UnpairedDomainDataset`: item ``i`` pairs one domain-A and one domain-B image drawn with a generator seeded
  by ``seed + i``, each augmented by :class:`~labelless.transforms.translation.RandTranslationAugment` (its own
  seeded draws): a seeded run sees the same batches whatever the number of loader workers, and a resumed run the
  same ones as an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from labelless.data.images import load_rgb
from labelless.data.keys import DomainKeys
from labelless.errors import ConfigError, DataError
from labelless.transforms.translation import RandTranslationAugment, default_load_size
from labelless.utils import LRUCache

__all__ = ["UnpairedDomainDataset"]


class UnpairedDomainDataset(Dataset):
    """Unpaired ``{image_a, image_b}`` training items (images ``[3, S, S]`` in [−1, 1]; cltnet.md §1.3, §5).

    Args:
        files_a: domain-A (lesion) image files.
        files_b: domain-B (normal) image files.
        image_size: network input side S.
        load_size: resize before the random crop (default 306/256 · S).
        contrast: contrast jitter amplitude.
        length: items per epoch (default: the larger domain).
        seed: base seed of the draws.
        cache_size: images kept in memory at ``load_size``.

    Raises:
        DataError: an empty domain (naming it).
    """

    def __init__(
        self,
        files_a: Sequence[str | os.PathLike],
        files_b: Sequence[str | os.PathLike],
        image_size: int = 256,
        load_size: int | None = None,
        contrast: float = 0.1,
        length: int | None = None,
        seed: int = 0,
        cache_size: int = 1024,
    ) -> None:
        self.files_a, self.files_b = [Path(f) for f in files_a], [Path(f) for f in files_b]
        for name, files in (("domain A (lesion)", self.files_a), ("domain B (normal)", self.files_b)):
            if not files:
                raise DataError(name, "no training images")
        self.image_size = int(image_size)
        self.load_size = default_load_size(self.image_size) if load_size is None else int(load_size)
        self.augment = RandTranslationAugment(self.image_size, self.load_size, contrast=float(contrast))
        self.length = max(len(self.files_a), len(self.files_b)) if length is None else int(length)
        if self.length < 1:
            raise ConfigError(f"length must be >= 1, got {length!r}")
        self.seed = int(seed)
        self._cache = LRUCache(cache_size)

    def __len__(self) -> int:
        return self.length

    def _load(self, path: Path) -> torch.Tensor:
        return self._cache.get_or_load(path, lambda: load_rgb(path, self.load_size))

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed + int(index)) % (2**32))
        pa = self.files_a[int(rng.integers(len(self.files_a)))]
        pb = self.files_b[int(rng.integers(len(self.files_b)))]
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        image_a = self.augment(self._load(pa))
        image_b = self.augment(self._load(pb))
        return {DomainKeys.IMAGE_A: image_a, DomainKeys.IMAGE_B: image_b, "name_a": pa.name, "name_b": pb.name}
