# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Meta-training episodes of the FSMS bundle (fsms.md §3.2, §3.3): 1-way K-shot tasks plus unlabelled images.

An **episode item** (what :class:`MetaTrainEpisodes` returns for index ``i``) is the dict (key names:
:class:`~labelless.data.keys.EpisodeKeys`)

================= ===================== ===============================================================
key               shape                 content
================= ===================== ===============================================================
support_image     ``[T, K, 3, H, W]``   float32 RGB in [0, 1], K support images of each of the T tasks
support_label     ``[T, K, 1, H, W]``   float32 {0, 1}, never empty
query_image       ``[T, 3, H, W]``      float32 RGB in [0, 1], one query per task
query_label       ``[T, 1, H, W]``      float32 {0, 1}
unlabeled_image   ``[U, 3, H, W]``      float32 RGB in [0, 1] target-domain images (``[0, 3, H, W]`` when none)
classes           ``list[str]``         the class of each task (length T)
================= ===================== ===============================================================

A DataLoader with ``batch_size=1`` adds a leading dimension of 1 (and turns ``classes`` into a list of 1-tuples),
which the trainer squeezes.

Sampling (reference, fsms.md §3.3): for each task a class is drawn uniformly (with replacement across the tasks of
an episode), then K + 1 distinct instances of that class: the first K are the supports, the last the query. The U
unlabelled images are drawn from the pool without replacement within an episode. All draws of episode number ``n``
come from ``numpy.random.default_rng((seed, n))``, so an item depends only on ``(seed, n)`` (not on the order of
access, the DataLoader workers or any global RNG). ``n = index + epoch * n_episodes``, with ``epoch`` set by
:meth:`MetaTrainEpisodes.set_epoch` (0 by default, i.e. ``n = index``), so each epoch can see new episodes.

The data sources are described by two structural interfaces (:class:`ClassPairSource`, :class:`ImagePool`),
implemented by :class:`~labelless.fewshot.image.classes.ClassFolderDataset` and
:class:`~labelless.data.images.ImageFolderPool`; any object with the
same attributes works (tests use small in-memory fakes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from labelless.data.keys import EpisodeKeys
from labelless.errors import ConfigError, DataError
from labelless.options import as_float
from labelless.utils import as_bool

__all__ = ["ClassPairSource", "ImagePool", "class_ids", "MetaTrainEpisodes", "as_image_tensor", "as_mask_tensor"]


@runtime_checkable
class ClassPairSource(Protocol):
    """A labelled multi-class source of (image, mask) pairs (e.g. ``ClassFolderDataset``).

    Attributes:
        classes: the class names.
        ids: the ids of the valid pairs (non-empty masks) of each class: a mapping ``class -> list[str]`` (as
            ``ClassFolderDataset.ids``) or a method ``ids(cls) -> list[str]``; both are accepted.
    """

    classes: list[str]
    ids: Mapping[str, Sequence[str]] | Callable[[str], Sequence[str]]

    def load_pair(self, cls: str, idx: int) -> tuple[Any, Any]:
        """``(image [3, S, S] float RGB in [0, 1], mask [1, S, S] in {0, 1})`` of pair ``idx`` (position in the
        class's ids) of class ``cls``."""
        ...


@runtime_checkable
class ImagePool(Protocol):
    """A flat pool of images, with or without masks (e.g. ``ImageFolderPool``: unlabelled or test images).

    Attributes:
        image_ids: one id per image.
        has_masks: whether ``load`` returns masks.

    An optional attribute ``support_ids`` (the ids whose mask is non-empty at the support grid, as
    ``ImageFolderPool`` has) is used by :func:`~labelless.fewshot.image.protocol.evaluate_episodes` to choose supports.
    """

    image_ids: list[str]
    has_masks: bool

    def load(self, image_id: str) -> tuple[Any, Any | None]:
        """``(image [3, S, S] float RGB in [0, 1], mask [1, S, S] in {0, 1} or None)`` of image ``image_id``."""
        ...


def class_ids(source: ClassPairSource, cls: str) -> list[str]:
    """The pair ids of class ``cls`` of a source whose ``ids`` is a mapping or a method."""
    ids = source.ids
    return [str(i) for i in (ids(cls) if callable(ids) else ids[cls])]


def as_image_tensor(x: Any, source: str) -> torch.Tensor:
    """A ``[3, H, W]`` float32 tensor from a tensor or array; ``DataError`` naming ``source`` otherwise.

    Args:
        x: image data, channel first.
        source: what the image is (file or item id), for the error message.

    Returns:
        float32 tensor (a copy when the input was not float32).

    Raises:
        DataError: wrong shape, or NaN/infinite values.
    """
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float32)
    if t.ndim != 3 or t.shape[0] != 3:
        raise DataError(source, f"expected an RGB image of shape [3, H, W], got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise DataError(source, "image contains NaN or infinite values")
    return t


def as_mask_tensor(x: Any, source: str) -> torch.Tensor:
    """A ``[1, H, W]`` float32 {0, 1} tensor (values > 0.5 are foreground); ``DataError`` naming ``source``.

    Args:
        x: mask data, ``[1, H, W]`` or ``[H, W]``.
        source: what the mask is (file or item id), for the error message.

    Returns:
        float32 tensor of zeros and ones.

    Raises:
        DataError: wrong shape, or NaN/infinite values.
    """
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float32)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] != 1:
        raise DataError(source, f"expected a mask of shape [1, H, W], got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise DataError(source, "mask contains NaN or infinite values")
    return (t > 0.5).to(torch.float32)


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class MetaTrainEpisodes(Dataset):
    """Episodic meta-training dataset: T one-way K-shot tasks from a class source plus U unlabelled images.

    Args:
        class_source: the labelled classes (:class:`ClassPairSource`); every class needs at least ``n_shots + 1``
            valid pairs.
        n_episodes: episodes per epoch (the dataset length), e.g. 1000.
        n_tasks: tasks T per episode (reference: 5).
        n_shots: support shots K per task (reference: 1; 5-shot supported).
        unlabeled_pool: target-domain images for the surrogate task (:class:`ImagePool`; masks, if any, are never
            read); ``None`` gives no unlabelled images.
        n_unlabeled: unlabelled images U per episode (fsms.md §3.2 default 5; the reference code uses 1); 0 or no
            pool gives an empty ``[0, 3, H, W]`` tensor.
        seed: episode seed; item ``i`` of epoch ``e`` uses ``numpy.random.default_rng((seed, i + e * n_episodes))``.
        flips: random horizontal and vertical flips, independently per image (and its mask) with probability 0.5
            each; off by default (the reference uses no augmentation). Strings "true"/"false" are accepted.
        pseudo_source: label-free classes (e.g. :class:`~labelless.fewshot.image.pseudo.PseudoLabelClassSource`,
            superpixel pseudo-labels of unlabelled target-domain images) mixed with ``class_source``; ``None``: none.
        pseudo_fraction: probability that a task's class is drawn from ``pseudo_source`` (the mixing ratio). With
            no pseudo source (or 0) the draws are exactly those of a dataset without one.

    Raises:
        ConfigError: invalid counts, a source without the expected interface, an empty class list, or fewer
            unlabelled images than ``n_unlabeled``.
        DataError: a class with fewer than ``n_shots + 1`` pairs (named); at load time, bad shapes, images of
            different sizes in one episode, or an empty support mask (naming the class and instance).

    Examples::

        source = ClassFolderDataset("synthetic_classes", size=224)
        pool = ImageFolderPool("isic_unlabelled", size=224)
        ds = MetaTrainEpisodes(source, n_episodes=1000, n_tasks=5, n_shots=1, unlabeled_pool=pool, n_unlabeled=5)
        item = ds[0]
        item["support_image"].shape    # torch.Size([5, 1, 3, 224, 224])
        item["unlabeled_image"].shape  # torch.Size([5, 3, 224, 224])
    """

    def __init__(
        self,
        class_source: ClassPairSource,
        n_episodes: int,
        n_tasks: int = 5,
        n_shots: int = 1,
        unlabeled_pool: ImagePool | None = None,
        n_unlabeled: int = 5,
        seed: int = 0,
        flips: bool | str = False,
        pseudo_source: ClassPairSource | None = None,
        pseudo_fraction: float = 0.0,
    ) -> None:
        if not isinstance(class_source, ClassPairSource):
            raise ConfigError(
                f"class_source must provide classes, ids and load_pair(cls, idx); got {type(class_source).__name__}"
            )
        if unlabeled_pool is not None and not isinstance(unlabeled_pool, ImagePool):
            raise ConfigError(
                "unlabeled_pool must provide image_ids, has_masks and load(image_id); "
                f"got {type(unlabeled_pool).__name__}"
            )
        self.source = class_source
        self.n_episodes = _check_count(n_episodes, "n_episodes", 1)
        self.n_tasks = _check_count(n_tasks, "n_tasks", 1)
        self.n_shots = _check_count(n_shots, "n_shots", 1)
        self.n_unlabeled = _check_count(n_unlabeled, "n_unlabeled", 0)
        self.seed = int(seed)
        self.flips = as_bool(flips, "flips")
        self.epoch = 0
        self.classes: list[str] = [str(c) for c in class_source.classes]
        if not self.classes:
            raise ConfigError("the class source has no classes")
        need = self.n_shots + 1
        self._ids: dict[str, list[str]] = {}
        short = []
        for c in self.classes:
            ids = class_ids(class_source, c)
            if len(ids) < need:
                short.append(f"{c} ({len(ids)})")
            self._ids[c] = ids
        if short:
            raise DataError(
                "class source",
                f"{len(short)} class(es) have fewer than n_shots + 1 = {need} valid pairs: {', '.join(short[:10])}"
                + (" ..." if len(short) > 10 else ""),
            )
        self.pseudo = pseudo_source
        self.pseudo_fraction = as_float(pseudo_fraction, "pseudo_fraction")
        if not 0.0 <= self.pseudo_fraction <= 1.0:
            raise ConfigError(f"pseudo_fraction must be in [0, 1], got {pseudo_fraction!r}")
        self.pseudo_classes: list[str] = []
        if pseudo_source is not None and self.pseudo_fraction > 0:
            if not isinstance(pseudo_source, ClassPairSource):
                raise ConfigError("pseudo_source must provide classes, ids and load_pair(cls, idx)")
            self.pseudo_classes = [str(c) for c in pseudo_source.classes]
            if not self.pseudo_classes:
                raise ConfigError("the pseudo-label source has no classes")
            clash = set(self.pseudo_classes) & set(self.classes)
            if clash:
                raise ConfigError(f"pseudo-label class names clash with the class source: {sorted(clash)[:3]}")
            if len(class_ids(pseudo_source, self.pseudo_classes[0])) < need:  # every class has the same views
                raise DataError("pseudo-label source", f"classes have fewer than n_shots + 1 = {need} views")
        self.pool = unlabeled_pool
        self.pool_size = 0 if unlabeled_pool is None else len(unlabeled_pool.image_ids)
        if unlabeled_pool is not None and self.n_unlabeled > self.pool_size:
            raise ConfigError(
                f"n_unlabeled={self.n_unlabeled} exceeds the {self.pool_size} images of the unlabelled pool"
            )

    def __len__(self) -> int:
        return self.n_episodes

    def set_epoch(self, epoch: int) -> None:
        """Use the episodes of epoch ``epoch`` (episode number ``index + epoch * n_episodes``)."""
        self.epoch = _check_count(epoch, "epoch", 0)

    def draw(self, index: int) -> dict[str, Any]:
        """The draws of episode ``index`` without loading any image.

        Args:
            index: item index in ``[0, n_episodes)``.

        Returns:
            ``{"classes": [T], "supports": [T][K], "queries": [T], "unlabeled": [U], "flips": [T * (K + 1) + U][2]}``:
            supports and queries as pair positions within their class's ids, unlabelled images as positions in the
            pool's ``image_ids``, and (h, v) flip flags in the order supports/query of each task, then unlabelled.
        """
        if not 0 <= int(index) < self.n_episodes:
            raise IndexError(f"episode index {index} out of range [0, {self.n_episodes})")
        rng = np.random.default_rng((self.seed, int(index) + self.epoch * self.n_episodes))
        classes, supports, queries = [], [], []
        for _ in range(self.n_tasks):
            if self.pseudo_classes and rng.random() < self.pseudo_fraction:
                cls = self.pseudo_classes[int(rng.integers(len(self.pseudo_classes)))]
                ids = self._class_ids(cls)
            else:
                cls = self.classes[int(rng.integers(len(self.classes)))]
                ids = self._ids[cls]
            pick = [int(j) for j in rng.choice(len(ids), size=self.n_shots + 1, replace=False)]
            classes.append(cls)
            supports.append(pick[:-1])
            queries.append(pick[-1])
        n_u = self.n_unlabeled if self.pool is not None else 0
        unl = [int(j) for j in rng.choice(self.pool_size, size=n_u, replace=False)] if n_u else []
        n_img = self.n_tasks * (self.n_shots + 1) + len(unl)
        flips = (rng.random((n_img, 2)) < 0.5).tolist() if self.flips else [[False, False]] * n_img
        return {"classes": classes, "supports": supports, "queries": queries, "unlabeled": unl, "flips": flips}

    @staticmethod
    def _flip(x: torch.Tensor, hv: Sequence[bool]) -> torch.Tensor:
        dims = [d for d, f in zip((-1, -2), hv) if f]
        return torch.flip(x, dims) if dims else x

    def _class_ids(self, cls: str) -> list[str]:
        if cls in self._ids:
            return self._ids[cls]
        return class_ids(self.pseudo, cls)

    def _pair(self, cls: str, idx: int, support: bool) -> tuple[torch.Tensor, torch.Tensor]:
        name = f"class {cls!r} instance {self._class_ids(cls)[idx]!r}"
        source = self.source if cls in self._ids else self.pseudo
        image, mask = source.load_pair(cls, idx)
        img = as_image_tensor(image, name)
        msk = as_mask_tensor(mask, f"{name} (mask)")
        if img.shape[1:] != msk.shape[1:]:
            raise DataError(name, f"image size {tuple(img.shape[1:])} differs from mask size {tuple(msk.shape[1:])}")
        if support and not bool(msk.any()):
            raise DataError(name, "support mask is empty (the class source must list only non-empty pairs)")
        return img, msk

    def __getitem__(self, index: int) -> dict[str, Any]:
        d = self.draw(index)
        flips = iter(d["flips"])
        s_img, s_msk, q_img, q_msk, unl = [], [], [], [], []
        sizes: list[tuple[str, tuple[int, ...]]] = []
        for cls, sids, qid in zip(d["classes"], d["supports"], d["queries"]):
            imgs, msks = [], []
            for sid in sids:
                img, msk = self._pair(cls, sid, support=True)
                hv = next(flips)
                imgs.append(self._flip(img, hv))
                msks.append(self._flip(msk, hv))
                sizes.append((f"{cls}/{self._class_ids(cls)[sid]}", tuple(img.shape[1:])))
            s_img.append(imgs)
            s_msk.append(msks)
            img, msk = self._pair(cls, qid, support=False)
            hv = next(flips)
            q_img.append(self._flip(img, hv))
            q_msk.append(self._flip(msk, hv))
            sizes.append((f"{cls}/{self._class_ids(cls)[qid]}", tuple(img.shape[1:])))
        for j in d["unlabeled"]:
            image, _ = self.pool.load(self.pool.image_ids[j])
            name = f"unlabelled image {self.pool.image_ids[j]!r}"
            unl.append(self._flip(as_image_tensor(image, name), next(flips)))
            sizes.append((f"unlabelled/{self.pool.image_ids[j]}", tuple(unl[-1].shape[1:])))
        if len({s for _, s in sizes}) > 1:
            detail = ", ".join(f"{n} {list(s)}" for n, s in sizes)
            raise DataError(f"episode {index}", f"images of different sizes cannot form one episode: {detail}")
        h, w = sizes[0][1]
        return {
            EpisodeKeys.SUPPORT_IMAGE: torch.stack([torch.stack(t) for t in s_img]),
            EpisodeKeys.SUPPORT_LABEL: torch.stack([torch.stack(t) for t in s_msk]),
            EpisodeKeys.QUERY_IMAGE: torch.stack(q_img),
            EpisodeKeys.QUERY_LABEL: torch.stack(q_msk),
            EpisodeKeys.UNLABELED_IMAGE: torch.stack(unl) if unl else torch.zeros((0, 3, h, w), dtype=torch.float32),
            EpisodeKeys.CLASSES: list(d["classes"]),
        }
