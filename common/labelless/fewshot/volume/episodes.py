# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Few-shot training episodes (fewshot_protocol.md §3 sampling, §4 episodes, §5 Setting 2, §7 augmentation).

- :func:`build_slice_pool`: the training slice pool (slices with at least one superpixel, minus the Setting-2
  exclusions, filtered once).
- :class:`SelfSupervisedEpisodeDataset`: SSL-ALPNet's superpixel episodes (support and query are independently
  augmented copies of one slice and one binarised superpixel).

Item format (both datasets), for ``S = n_shots`` support images of size ``H × W`` (key names:
:class:`~labelless.data.keys.EpisodeKeys`):

============== ================= ======= =====================================================================
key            shape (one item)  dtype   content
============== ================= ======= =====================================================================
support_image  ``[S, 3, H, W]``  float32 normalised slice repeated over 3 channels (no ImageNet statistics)
support_label  ``[S, 1, H, W]``  float32 foreground mask, 0/1 (the background mask is ``1 − support_label``)
query_image    ``[3, H, W]``     float32 normalised query slice, 3 channels
query_label    ``[H, W]``        int64   query label in {0, 1}
meta           dict              Python  see each class (plain ``str``/``int`` values)
============== ================= ======= =====================================================================

A DataLoader with batch size ``B`` (the protocol uses 1) therefore yields ``support_image [B, S, 3, H, W]``,
``support_label [B, S, 1, H, W]``, ``query_image [B, 3, H, W]`` and ``query_label [B, H, W]``.

Randomness: the datasets are MONAI ``Randomizable``; the index passed to ``__getitem__`` is ignored and every draw
comes from ``self.R``. ``set_random_state`` also seeds the augmentation (from a number drawn from ``self.R``).
MONAI's ``DataLoader`` re-seeds the dataset from torch's generator (``num_workers=0``) or per worker from the
worker seed (``num_workers > 0``), so runs are reproducible after ``torch.manual_seed`` / ``seed_everything`` for a
fixed ``num_workers``; different ``num_workers`` values give different (equally valid) episode streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable
from monai.utils import MAX_SEED, convert_to_numpy
from torch.utils.data import Dataset

from labelless.data.keys import EpisodeKeys
from labelless.data.layouts import PreparedVolumeDataset
from labelless.data.presets import DatasetPreset
from labelless.errors import ConfigError, DataError
from labelless.networks.prototypes import downsample_mask
from labelless.transforms.augment import RandFewShotAugment
from labelless.transforms.intensity import fold_statistics, zscore
from labelless.utils import sort_ids

__all__ = [
    "build_slice_pool",
    "normalize_scans",
    "is_degenerate_mask",
    "feature_grid_size",
    "SelfSupervisedEpisodeDataset",
]

logger = logging.getLogger(__name__)

SlicePool = list[tuple[str, int]]


def feature_grid_size(size: int, feature_stride: int = 8) -> int:
    """Feature-map size of an encoder with output stride ``feature_stride`` (ceil, as strided convolutions give)."""
    return -(-int(size) // int(feature_stride))


def is_degenerate_mask(mask: np.ndarray | torch.Tensor, feature_stride: int = 8) -> bool:
    """True when ``mask`` is empty or vanishes at the feature grid (fewshot_protocol §3, §9.3).

    The mask is downsampled to ``(ceil(H / stride), ceil(W / stride))`` with bilinear interpolation
    (``align_corners=False``, point sampling as the prototype heads do); a zero sum there is degenerate.
    """
    m = torch.as_tensor(np.asarray(convert_to_numpy(mask), dtype=np.float32))
    if m.ndim != 2:
        raise DataError("mask", f"expected an (H, W) mask, got shape {tuple(m.shape)}")
    if not bool((m > 0).any()):
        return True
    size = (feature_grid_size(m.shape[0], feature_stride), feature_grid_size(m.shape[1], feature_stride))
    return not bool(downsample_mask(m[None, None], size).sum() > 0)  # the heads' own mask downsampling


def _check_pids(dataset: PreparedVolumeDataset, pids: Sequence[str | int], what: str) -> list[str]:
    out = sort_ids(str(p) for p in pids)
    if not out:
        raise DataError(dataset.root, f"no {what} scans given")
    missing = [p for p in out if p not in dataset.pids]
    if missing:
        raise DataError(dataset.root, f"{what} scan ids {missing} are not in the dataset (available: {dataset.pids})")
    return out


def build_slice_pool(
    dataset: PreparedVolumeDataset,
    train_pids: Sequence[str | int],
    superpixels: Mapping[str, np.ndarray] | None = None,
    setting: int = 1,
    label_set: int = 0,
    exclude_classes: Sequence[int] | None = None,
) -> SlicePool:
    """The training slice pool of fewshot_protocol §4.

    All axial slices of the training scans with R ≥ 1 (R = largest superpixel id of the slice). In Setting 2 every
    slice listed in the class-slice index (T = 1) of a test class of ``label_set`` is removed, once (the reference
    swaps excluded slices at fetch time instead).

    Args:
        dataset: the prepared dataset (gives the preset, the superpixels when not given and the class-slice index).
        train_pids: the fold's training scans.
        superpixels: pid -> (Z, H, W) relabelled superpixel ids; loaded with ``dataset.load_superpixels`` if ``None``.
        setting: 1 or 2.
        label_set: Setting-2 label set (ignored in Setting 1).
        exclude_classes: explicit class ids whose slices are removed, overriding the preset's Setting-2 test
            classes (in any setting); ``None`` = the protocol's rule.

    Returns:
        sorted list of ``(pid, z)``: pids in integer order, z ascending.

    Raises:
        ConfigError: invalid setting / label set, or Setting 2 on a dataset without one (e.g. Card-MRI).
        DataError: unknown pids, missing or malformed superpixel maps, negative ids.
    """
    test_classes = dataset.preset.test_classes_for(setting, label_set)  # validates setting / label set
    if exclude_classes is not None:
        excluded = tuple(int(c) for c in exclude_classes)
    else:
        excluded = tuple(test_classes) if int(setting) == 2 else ()
    pids = _check_pids(dataset, train_pids, "training")
    pool: SlicePool = []
    for pid in pids:
        sp = superpixels[pid] if superpixels is not None and pid in superpixels else None
        source = dataset.superpixel_path(pid) or f"superpixels of scan {pid}"
        if sp is None:
            if superpixels is not None:
                raise DataError(source, f"no superpixel map given for training scan {pid}")
            sp = dataset.load_superpixels(pid).array
        sp = np.asarray(sp)
        if sp.ndim != 3:
            raise DataError(source, f"expected a (Z, H, W) superpixel map, got shape {sp.shape}")
        if sp.size and sp.min() < 0:
            raise DataError(source, "superpixel ids must be >= 0")
        r = sp.reshape(sp.shape[0], -1).max(axis=1) if sp.size else np.zeros(sp.shape[0])
        removed: set[int] = set()
        for c in excluded:
            removed.update(dataset.class_slices(c, pid))
        pool.extend((pid, int(z)) for z in range(sp.shape[0]) if r[z] >= 1 and z not in removed)
    return pool


def normalize_scans(
    preset: DatasetPreset,
    images: Mapping[str, np.ndarray],
    mean: float | None = None,
    std: float | None = None,
    sources: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], float | None, float | None]:
    """Normalise raw volumes with the preset's rule (fewshot_protocol §2.6).

    Args:
        preset: ``normalization == "volume_zscore"`` (MR: per volume) or ``"fold_zscore"`` (CT: one mean/std).
        images: pid -> raw (Z, H, W) volume.
        mean, std: fold statistics for ``fold_zscore``; computed over all of ``images`` when ``None`` (pass the
            training scans' images there, and the stored statistics when normalising support/query scans).
        sources: pid -> file, for error messages.

    Returns:
        ``(normalised float32 volumes, mean, std)``; mean/std are ``None`` for per-volume z-scoring.
    """
    sources = sources or {}
    if preset.normalization == "volume_zscore":
        return {p: zscore(v, source=sources.get(p)) for p, v in images.items()}, None, None
    if preset.normalization != "fold_zscore":
        raise ConfigError(f"unknown normalization {preset.normalization!r} in preset {preset.name!r}")
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std (fold statistics) or neither")
    if mean is None:
        mean, std = fold_statistics(images.values())
    return {p: zscore(v, mean, std, source=sources.get(p)) for p, v in images.items()}, float(mean), float(std)


class _EpisodeBase(Dataset, Randomizable):
    """Shared parts: seeding, augmentation with redraws, tensor packing."""

    _name = "episode sampler"

    def __init__(
        self,
        n_shots: int,
        n_episodes: int,
        transform: Callable | None,
        feature_stride: int,
        max_tries: int,
        max_aug_tries: int,
        n_channels: int,
        seed: int | None,
    ) -> None:
        if int(n_shots) < 1:
            raise ConfigError(f"n_shots must be >= 1, got {n_shots!r}")
        if int(n_episodes) < 1:
            raise ConfigError(f"n_episodes must be >= 1, got {n_episodes!r}")
        if int(max_tries) < 1 or int(max_aug_tries) < 1 or int(feature_stride) < 1 or int(n_channels) < 1:
            raise ConfigError("max_tries, max_aug_tries, feature_stride and n_channels must be >= 1")
        self.n_shots = int(n_shots)
        self.n_episodes = int(n_episodes)
        self.transform = transform
        self.feature_stride = int(feature_stride)
        self.max_tries = int(max_tries)
        self.max_aug_tries = int(max_aug_tries)
        self.n_channels = int(n_channels)
        self.n_redraws = 0  # episodes rejected as degenerate (for logging)
        self.set_random_state(seed=int(np.random.randint(MAX_SEED)) if seed is None else seed)

    def __len__(self) -> int:
        return self.n_episodes

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> _EpisodeBase:
        """Seed the sampler, and the augmentation with a seed drawn from it."""
        super().set_random_state(seed, state)
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=int(self.R.randint(MAX_SEED)))
        return self

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One random augmentation of a (H, W) slice and its binary mask -> ((H, W) float32, (H, W) uint8)."""
        if self.transform is None:
            return image.astype(np.float32, copy=True), mask.astype(np.uint8, copy=True)
        if isinstance(self.transform, RandFewShotAugment):
            img, lab = self.transform(image[None], mask)
        else:
            out = self.transform({"image": image[None].astype(np.float32), "label": mask[None].astype(np.float32)})
            img, lab = out["image"], out["label"]
        img = np.asarray(convert_to_numpy(img), dtype=np.float32)
        lab = np.asarray(convert_to_numpy(lab), dtype=np.float32)
        img = img.reshape(img.shape[-2:]) if img.ndim == 3 and img.shape[0] == 1 else img
        lab = lab.reshape(lab.shape[-2:]) if lab.ndim == 3 and lab.shape[0] == 1 else lab
        if img.shape != image.shape or lab.shape != mask.shape:
            raise DataError(
                self._name,
                f"the augmentation changed the slice size {image.shape} to image {img.shape} / label {lab.shape}",
            )
        return img, (lab > 0.5).astype(np.uint8)

    def _augmented_copy(self, image: np.ndarray, mask: np.ndarray, check: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """An augmented copy whose mask survives at the feature grid (redrawn up to ``max_aug_tries``), or None."""
        for _ in range(self.max_aug_tries):
            img, lab = self._augment(image, mask)
            if not check or not is_degenerate_mask(lab, self.feature_stride):
                return img, lab
            if self.transform is None:
                break
        return None

    def _pack(
        self, support: list[tuple[np.ndarray, np.ndarray]], query: tuple[np.ndarray, np.ndarray], meta: dict
    ) -> dict[str, Any]:
        s_img = np.stack([s[0] for s in support])[:, None]  # [S, 1, H, W]
        s_msk = np.stack([s[1] for s in support])[:, None].astype(np.float32)
        s_img = np.repeat(s_img, self.n_channels, axis=1)  # [S, n_channels, H, W]
        q_img = np.repeat(query[0][None], self.n_channels, axis=0)
        return {
            EpisodeKeys.SUPPORT_IMAGE: torch.from_numpy(np.ascontiguousarray(s_img)),
            EpisodeKeys.SUPPORT_LABEL: torch.from_numpy(np.ascontiguousarray(s_msk)),
            EpisodeKeys.QUERY_IMAGE: torch.from_numpy(np.ascontiguousarray(q_img)),
            EpisodeKeys.QUERY_LABEL: torch.from_numpy(query[1].astype(np.int64)),
            EpisodeKeys.META: meta,
        }


class SelfSupervisedEpisodeDataset(_EpisodeBase):
    """SSL-ALPNet superpixel episodes (fewshot_protocol §3, §4).

    One item: draw a slice ``s`` uniformly from the pool and ``j`` uniformly from ``1..R(s)`` (inclusive), set
    ``y = 1[superpixel(s) == j]``, then augment ``(image(s), y)`` independently ``n_shots`` times for the support and
    once for the query. The draw is rejected and redrawn (new slice and superpixel) when ``y`` is empty or vanishes
    at the feature grid (:func:`is_degenerate_mask`); an augmented copy whose mask vanishes is re-augmented (up to
    ``max_aug_tries`` times, then the slice is redrawn). After ``max_tries`` rejected slices a :class:`DataError` is
    raised. ``n_redraws`` counts rejected draws.

    Args:
        images: pid -> normalised (z-scored) (Z, H, W) float32 volume (normalise *before* augmentation).
        superpixels: pid -> (Z, H, W) relabelled superpixel ids (0 = outside the body).
        pool: ``(pid, z)`` slices to sample from (:func:`build_slice_pool`); every slice must have R ≥ 1.
        n_shots: support copies per episode.
        n_episodes: dataset length (episodes per "epoch"; the index is ignored).
        transform: augmentation applied to each copy: a dictionary transform over ``image`` (1, H, W) and ``label``
            (1, H, W) (e.g. :class:`~labelless.transforms.augment.RandFewShotAugmentd`, or
            :func:`~labelless.transforms.augment.monai_fewshot_augment`), or a
            :class:`~labelless.transforms.augment.RandFewShotAugment`; ``None`` = identical copies.
        feature_stride: encoder output stride of the degenerate-mask check (8 → a 32×32 grid for 256×256).
        max_tries: rejected slice draws before giving up.
        max_aug_tries: augmentation redraws per copy before the slice is rejected.
        n_channels: channel repetitions of the image (3 for the ResNet encoder).
        seed: seed of ``self.R`` (``None``: drawn from numpy's global generator, so ``seed_everything`` fixes it).
        norm_mean, norm_std: fold statistics used to normalise ``images`` (stored for the checkpoint; ``None`` for
            per-volume z-scoring).

    ``meta`` = ``{"pid": str, "z": int, "superpixel": int}``.

    Examples::

        ds = SelfSupervisedEpisodeDataset.from_dataset(
            PreparedVolumeDataset(root, "chaos", derived_dir=cache), train_pids, setting=2, label_set=0,
            n_shots=1, n_episodes=1000, transform=RandFewShotAugmentd(keys=("image", "label")))
        loader = monai.data.DataLoader(ds, batch_size=1, num_workers=2)
    """

    _name = "SelfSupervisedEpisodeDataset"

    def __init__(
        self,
        images: Mapping[str, np.ndarray],
        superpixels: Mapping[str, np.ndarray],
        pool: Sequence[tuple[str, int]],
        n_shots: int = 1,
        n_episodes: int = 1000,
        transform: Callable | None = None,
        feature_stride: int = 8,
        max_tries: int = 100,
        max_aug_tries: int = 10,
        n_channels: int = 3,
        seed: int | None = None,
        norm_mean: float | None = None,
        norm_std: float | None = None,
    ) -> None:
        self.images: dict[str, np.ndarray] = {}
        self.superpixels: dict[str, np.ndarray] = {}
        self.pool: SlicePool = [(str(p), int(z)) for p, z in pool]
        if not self.pool:
            raise DataError(self._name, "the training slice pool is empty (no slice with a superpixel is left)")
        for pid in sort_ids({p for p, _ in self.pool}):
            if pid not in images or pid not in superpixels:
                raise DataError(self._name, f"scan {pid} is in the pool but its image or superpixel map is missing")
            img = np.asarray(images[pid], dtype=np.float32)
            sp = np.asarray(superpixels[pid])
            if img.ndim != 3 or sp.shape != img.shape:
                raise DataError(
                    f"scan {pid}", f"image {img.shape} and superpixel map {sp.shape} must be (Z, H, W) of equal shape"
                )
            if not np.issubdtype(sp.dtype, np.integer):
                sp = np.rint(sp)
            self.images[pid] = img
            self.superpixels[pid] = sp.astype(np.int16 if sp.max() < 2**15 and sp.min() >= 0 else np.int32)
        self.n_superpixels = np.empty(len(self.pool), dtype=np.int64)
        for i, (pid, z) in enumerate(self.pool):
            if not 0 <= z < self.images[pid].shape[0]:
                raise DataError(
                    f"scan {pid}", f"pool slice {z} is outside the volume (Z = {self.images[pid].shape[0]})"
                )
            self.n_superpixels[i] = int(self.superpixels[pid][z].max())
            if self.n_superpixels[i] < 1:
                raise DataError(
                    f"scan {pid}", f"pool slice {z} has no superpixel (R = 0); slices with R = 0 are never sampled"
                )
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        self.normalization = "volume_zscore" if norm_mean is None else "fold_zscore"
        self._draw: tuple[int, int] = (0, 1)
        super().__init__(n_shots, n_episodes, transform, feature_stride, max_tries, max_aug_tries, n_channels, seed)

    @classmethod
    def from_dataset(
        cls,
        dataset: PreparedVolumeDataset,
        train_pids: Sequence[str | int],
        setting: int = 1,
        label_set: int = 0,
        n_shots: int = 1,
        n_episodes: int = 1000,
        transform: Callable | None = None,
        exclude_classes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> SelfSupervisedEpisodeDataset:
        """Load, normalise and pool the training scans of a prepared dataset.

        Images are read with ``dataset.load_image`` and normalised with the preset's rule (:func:`normalize_scans`:
        per volume for MR, fold statistics over ``train_pids`` for ``fold_zscore`` presets, exposed as
        ``norm_mean`` / ``norm_std``); superpixels come from ``dataset.load_superpixels``; the pool from
        :func:`build_slice_pool`. Other keyword arguments go to the constructor.

        Raises:
            ConfigError: Setting 2 on a dataset without it, invalid label set.
            DataError: missing scans or superpixel maps, constant or non-finite images.
        """
        dataset.preset.test_classes_for(setting, label_set)  # fail fast on a bad setting, before loading anything
        pids = _check_pids(dataset, train_pids, "training")
        raw = {pid: dataset.load_image(pid).array for pid in pids}
        sps = {pid: dataset.load_superpixels(pid).array for pid in pids}
        images, mean, std = normalize_scans(dataset.preset, raw, sources={pid: dataset.image_path(pid) for pid in pids})
        pool = build_slice_pool(dataset, pids, sps, setting, label_set, exclude_classes)
        return cls(images, sps, pool, n_shots, n_episodes, transform, norm_mean=mean, norm_std=std, **kwargs)

    def randomize(self, data: Any | None = None) -> None:
        """Draw a pool slice and a superpixel id in ``1..R`` (inclusive)."""
        k = int(self.R.randint(len(self.pool)))
        j = int(self.R.randint(1, self.n_superpixels[k] + 1))
        self._draw = (k, j)

    def __getitem__(self, index: int) -> dict[str, Any]:
        reason = ""
        for _ in range(self.max_tries):
            self.randomize()
            k, j = self._draw
            pid, z = self.pool[k]
            mask = (self.superpixels[pid][z] == j).astype(np.uint8)
            if not mask.any():
                reason = "the superpixel id has no pixel (gap in the ids)"
            elif is_degenerate_mask(mask, self.feature_stride):
                reason = f"the superpixel vanishes at the feature grid (stride {self.feature_stride})"
            else:
                image = self.images[pid][z]
                copies = []
                for _ in range(self.n_shots + 1):
                    c = self._augmented_copy(image, mask, check=True)
                    if c is None:
                        break
                    copies.append(c)
                if len(copies) == self.n_shots + 1:
                    meta = {"pid": pid, "z": int(z), "superpixel": int(j)}
                    return self._pack(copies[:-1], copies[-1], meta)
                reason = f"the augmented superpixel vanished at the feature grid {self.max_aug_tries} times"
            self.n_redraws += 1
            logger.debug("redraw episode: scan %s slice %d superpixel %d: %s", pid, z, j, reason)
        raise DataError(
            self._name,
            f"no usable pseudo-label after {self.max_tries} tries (pool of {len(self.pool)} slices); last rejection: "
            f"scan {pid}, slice {z}, superpixel {j}: {reason}. Check the superpixel maps (tiny or empty superpixels).",
        )
