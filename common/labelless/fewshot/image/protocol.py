# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The FSMS evaluation protocol (fsms.md §4): seeded test episodes, episode Dice, per-image Dice and IoU.

Reference protocol (kept as the key metric, **episode Dice**): ``n_episodes`` (200) test episodes of ``n_tasks``
(5) one-way K-shot tasks each. A task draws K + 1 distinct images of the **test pool**: K supports (with their
masks) and one query. The query probabilities are thresholded (``p > threshold``, 0.5), the pixels of all queries of
the episode are pooled and one Dice (F1) is computed over them (micro-Dice per episode); the reported number is the
mean over the episodes (``episode_dice_std`` is the population standard deviation over episodes).

Decisions (fsms.md §1.4, §4.1, §5):

- The draws are seeded (``seed``, the bundle's ``eval_seed``, default 0): episode ``e`` uses
  ``numpy.random.default_rng((seed, e))``, so every model sees the same episodes and a shorter run sees a prefix of
  a longer one.
- Supports are drawn only from images with a non-empty mask; the query is drawn from all other images of the pool
  (it may have an empty mask).
- **Empty / empty**: when the pooled prediction and ground truth of an episode are both empty, episode Dice is 1.0
  (nothing to find, nothing predicted), as everywhere in :mod:`labelless.evaluation.metrics`; per-image Dice and IoU
  follow the same rule. With supports always non-empty this needs every query of the episode to be empty.
- Per-image Dice (``2TP / (2TP + FP + FN)``) and IoU (``TP / (TP + FP + FN)``) are computed per query and averaged
  over all queries of all episodes (an image drawn twice counts twice).

Predictors: any callable ``predict(support_images [T, K, 3, H, W], support_masks [T, K, 1, H, W], query_images
[T, 3, H, W]) -> probabilities [T, 1, H, W]`` in [0, 1] (tensor or array); :func:`network_predictor` wraps a network
with the ``FSMSNet`` forward signature (logits) into one. :func:`support_calibrated_predictor` wraps a predictor so that
each task uses the threshold that segments its own supports best (:func:`support_thresholds`), instead of 0.5.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from labelless.errors import ConfigError, DataError
from labelless.evaluation.metrics import binary_mask, confusion_counts, dice_from_counts, iou_from_counts
from labelless.evaluation.overlays import rgb_overlay
from labelless.evaluation.reports import write_episode_reports
from labelless.fewshot.image.episodes import ImagePool, as_image_tensor, as_mask_tensor
from labelless.utils import LRUCache, as_bool

__all__ = [
    "Predictor",
    "TestEpisode",
    "draw_test_episodes",
    "episode_dice",
    "network_predictor",
    "SUPPORT_THRESHOLD_GRID",
    "support_thresholds",
    "recentre_probabilities",
    "support_calibrated_predictor",
    "evaluate_episodes",
]

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]
"""``predict(support_images [T,K,3,H,W], support_masks [T,K,1,H,W], query_images [T,3,H,W]) -> [T,1,H,W]``."""

TestEpisode = list[tuple[tuple[int, ...], int]]
"""One test episode: ``(support pool indices, query pool index)`` per task."""


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------- episodes
def draw_test_episodes(
    has_foreground: Sequence[bool], n_episodes: int = 200, n_tasks: int = 5, n_shots: int = 1, seed: int = 0
) -> list[TestEpisode]:
    """Seeded test episodes over a pool of images (fsms.md §4.1).

    For each task: K distinct supports among the images with a non-empty mask, then one query among all the other
    images (which may have an empty mask). Episode ``e`` uses ``numpy.random.default_rng((seed, e))``: identical
    across runs and machines, and a run with fewer episodes sees a prefix of the same episodes.

    Args:
        has_foreground: one bool per pool image (position = pool index): whether its mask is non-empty. Integers
            are refused so that a list of indices cannot be mistaken for flags.
        n_episodes: number of episodes (reference: 200).
        n_tasks: tasks per episode (reference: 5).
        n_shots: supports per task K.
        seed: the evaluation seed (``eval_seed``).

    Returns:
        ``episodes[e][t] = (support_indices, query_index)``, supports as a tuple of K pool indices.

    Raises:
        ConfigError: invalid counts or non-bool flags.
        DataError: fewer than K images with a foreground, or fewer than K + 1 images in the pool.

    Examples::

        eps = draw_test_episodes([True, True, False, True], n_episodes=2, n_tasks=5, n_shots=1, seed=0)
        supports, query = eps[0][0]
    """
    flags = list(has_foreground)
    if not all(isinstance(f, (bool, np.bool_)) for f in flags):
        raise ConfigError("has_foreground must hold one bool per pool image (not indices or counts)")
    n_episodes = _count(n_episodes, "n_episodes", 1)
    n_tasks = _count(n_tasks, "n_tasks", 1)
    n_shots = _count(n_shots, "n_shots", 1)
    fg = np.flatnonzero(np.asarray(flags, dtype=bool))
    if len(fg) < n_shots:
        raise DataError("test pool", f"{len(fg)} image(s) with a non-empty mask; {n_shots} needed as supports")
    if len(flags) < n_shots + 1:
        raise DataError("test pool", f"{len(flags)} image(s); n_shots + 1 = {n_shots + 1} needed per task")
    episodes = []
    for e in range(n_episodes):
        rng = np.random.default_rng((int(seed), e))
        tasks = []
        for _ in range(n_tasks):
            sup = tuple(int(i) for i in rng.choice(fg, size=n_shots, replace=False))
            rest = np.setdiff1d(np.arange(len(flags)), np.asarray(sup))
            tasks.append((sup, int(rest[int(rng.integers(len(rest)))])))
        episodes.append(tasks)
    return episodes


# ---------------------------------------------------------------------------------------------------- metrics
def episode_dice(preds: Sequence[Any], truths: Sequence[Any]) -> float:
    """Pooled Dice (F1) of the queries of one episode: ``2 ΣTP / (2 ΣTP + ΣFP + ΣFN)`` over all their pixels.

    Args:
        preds: thresholded predictions, one ``[H, W]`` bool (or 0/1) mask per query.
        truths: the ground-truth masks, same sizes.

    Returns:
        Dice in 0..1; 1.0 when the pooled prediction and ground truth are both empty.

    Raises:
        DataError: different numbers of masks, shape mismatch, non-binary masks.

    Examples::

        episode_dice([np.ones((2, 2), bool)], [np.eye(2, dtype=bool)])  # 2*2 / (2*2 + 2 + 0) = 0.667
    """
    if len(preds) != len(truths):
        raise DataError(None, f"{len(preds)} predictions for {len(truths)} ground-truth masks")
    tp = fp = fn = 0
    for i, (p, t) in enumerate(zip(preds, truths)):
        pb, tb = binary_mask(p, f"prediction {i}", squeeze=True), binary_mask(t, f"ground truth {i}", squeeze=True)
        if pb.shape != tb.shape:
            raise DataError(f"query {i}", f"prediction shape {pb.shape} differs from ground truth {tb.shape}")
        c = confusion_counts(pb, tb)
        tp, fp, fn = tp + c.tp, fp + c.fp, fn + c.fn
    return dice_from_counts(tp, fp, fn)


def network_predictor(
    network: torch.nn.Module,
    device: str | torch.device | None = None,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a network with the ``FSMSNet`` forward signature (logits) into a predictor (probabilities on the CPU).

    Args:
        network: ``network(support_images, support_masks, query_images) -> logits [T, 1, H, W]``.
        device: where to run; default the device of the network's first parameter (CPU without parameters).
        input_transform: optional transform applied to support and query images before the network (e.g. the
            ImageNet normalisation when the network does not apply it itself).

    Returns:
        ``predict(support_images, support_masks, query_images) -> sigmoid(logits)`` as a float32 CPU tensor; the
        network is put in eval mode and run under ``torch.no_grad``.
    """
    if device is None:
        first = next(iter(network.parameters()), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = torch.device(device)

    def predict(support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
        network.eval()
        with torch.no_grad():
            s = torch.as_tensor(support_images, dtype=torch.float32).to(dev)
            m = torch.as_tensor(support_masks, dtype=torch.float32).to(dev)
            q = torch.as_tensor(query_images, dtype=torch.float32).to(dev)
            if input_transform is not None:
                s, q = input_transform(s), input_transform(q)
            return torch.sigmoid(network(s, m, q).float()).cpu()

    return predict


SUPPORT_THRESHOLD_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _support_dice(probs: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Dice of ``probs > t`` against ``masks`` (both ``[T, K, 1, H, W]``) for every ``t`` of ``grid``, averaged
    over the K supports: ``[T, len(grid)]``."""
    m = masks > 0.5
    out = []
    for t in grid.tolist():
        p = probs > t
        inter = (p & m).sum(dim=(-1, -2, -3)).float()
        total = (p.sum(dim=(-1, -2, -3)) + m.sum(dim=(-1, -2, -3))).float()
        out.append((2 * inter / total.clamp(min=1)).mean(dim=1))
    return torch.stack(out, dim=-1)


def support_thresholds(
    predict: Predictor,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    grid: Sequence[float] = SUPPORT_THRESHOLD_GRID,
) -> torch.Tensor:
    """Per task, the probability threshold under which ``predict`` segments the task's own labelled supports best.

    With K = 1 the support is segmented with itself as the support; with K > 1 each support is segmented from the
    other K − 1 (leave one out). The threshold of ``grid`` with the highest mean Dice over the K supports is chosen;
    ties go to the one nearest 0.5. Only the supports' masks are read, never a query's: this is a test-time
    calibration that a user with K labelled images can run.

    Args:
        predict: a predictor (module docstring).
        support_images: ``[T, K, 3, H, W]``.
        support_masks: ``[T, K, 1, H, W]`` {0, 1}, none empty.
        grid: candidate thresholds, each in (0, 1).

    Returns:
        ``[T]`` float32 thresholds.

    Raises:
        ConfigError: an empty grid or a threshold outside (0, 1).
        DataError: supports of the wrong shape, or a predictor output of the wrong shape.
    """
    g = torch.as_tensor([float(t) for t in grid], dtype=torch.float32)
    if g.numel() == 0 or not bool(((g > 0) & (g < 1)).all()):
        raise ConfigError(f"support threshold grid must be thresholds in (0, 1), got {list(grid)!r}")
    s = torch.as_tensor(support_images, dtype=torch.float32)
    m = torch.as_tensor(support_masks, dtype=torch.float32)
    if s.ndim != 5 or m.ndim != 5 or s.shape[:2] != m.shape[:2] or s.shape[-2:] != m.shape[-2:]:
        raise DataError("supports", f"images {tuple(s.shape)} and masks {tuple(m.shape)}: expected [T, K, 3, H, W] "
                                    "and [T, K, 1, H, W]")  # fmt: skip
    n_tasks, k = s.shape[:2]
    shape = (n_tasks, 1, *s.shape[-2:])
    if k == 1:
        probs = _check_probabilities(predict(s, m, s[:, 0]), shape)[:, None]
    else:
        held_out = []
        for i in range(k):
            others = [j for j in range(k) if j != i]
            held_out.append(_check_probabilities(predict(s[:, others], m[:, others], s[:, i]), shape))
        probs = torch.stack(held_out, dim=1)
    scores = _support_dice(probs, m, g) - 1e-6 * (g - 0.5).abs()  # ties: nearest 0.5
    return g[scores.argmax(dim=-1)]


def recentre_probabilities(probs: torch.Tensor, thresholds: torch.Tensor, at: float = 0.5) -> torch.Tensor:
    """Monotone remap of ``[T, 1, H, W]`` probabilities so that each task's threshold ``thresholds[t]`` moves to
    ``at``: ``sigmoid(logit(p) − logit(t) + logit(at))``, hence ``p' > at`` exactly where ``p > t`` (up to the
    clamp of p to [1e-6, 1 − 1e-6])."""
    p = torch.as_tensor(probs, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
    t = torch.as_tensor(thresholds, dtype=torch.float32).reshape(-1, *([1] * (p.ndim - 1)))
    a = torch.tensor(float(at))
    return torch.sigmoid(torch.logit(p) - torch.logit(t) + torch.logit(a))


def support_calibrated_predictor(predict: Predictor, grid: Sequence[float] = SUPPORT_THRESHOLD_GRID) -> Predictor:
    """Wrap a predictor so that each task is thresholded at its :func:`support_thresholds` threshold: the returned
    probabilities are :func:`recentre_probabilities` of ``predict``'s, so the protocol's fixed ``p > 0.5`` applies
    the task's own threshold. The cost is one (K = 1) or K (K > 1) extra predictions per task."""

    def calibrated(
        support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        s = torch.as_tensor(support_images, dtype=torch.float32)
        m = torch.as_tensor(support_masks, dtype=torch.float32)
        q = torch.as_tensor(query_images, dtype=torch.float32)
        t = support_thresholds(predict, s, m, grid)
        return recentre_probabilities(_check_probabilities(predict(s, m, q), (q.shape[0], 1, *q.shape[-2:])), t)

    return calibrated


def _check_probabilities(out: Any, shape: tuple[int, ...]) -> torch.Tensor:
    p = out.detach() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    p = p.to(device="cpu", dtype=torch.float32)
    if tuple(p.shape) != shape:
        raise DataError("predictor", f"returned shape {tuple(p.shape)}; expected probabilities of shape {shape}")
    if not bool(torch.isfinite(p).all()):
        raise DataError("predictor", "returned NaN or infinite values")
    if p.numel() and (float(p.min()) < -1e-6 or float(p.max()) > 1 + 1e-6):
        raise DataError(
            "predictor",
            f"returned values in [{float(p.min()):.3g}, {float(p.max()):.3g}]; expected probabilities "
            "in [0, 1] (apply a sigmoid to logits, e.g. with network_predictor)",
        )
    return p


# ---------------------------------------------------------------------------------------------------- evaluation
def _load_test_item(pool: ImagePool, pid: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, mask) of a test-pool image, checked."""
    name = f"test image {pid!r}"
    image, mask = pool.load(pid)
    if mask is None:
        raise DataError(name, "the test pool returned no mask; the episode protocol needs ground truth")
    img, msk = as_image_tensor(image, name), as_mask_tensor(mask, f"{name} (mask)")
    if img.shape[1:] != msk.shape[1:]:
        raise DataError(name, f"image size {tuple(img.shape[1:])} differs from mask size {tuple(msk.shape[1:])}")
    return img, msk


def evaluate_episodes(
    predict: Predictor,
    pool: ImagePool,
    n_episodes: int = 200,
    n_tasks: int = 5,
    n_shots: int = 1,
    seed: int = 0,
    batch_tasks: int = 5,
    threshold: float = 0.5,
    output_dir: str | os.PathLike | None = None,
    n_overlays: int = 3,
    progress: bool | str = True,
    cache_size: int = 256,
) -> dict[str, Any]:
    """Run the episode protocol (fsms.md §4) on a labelled test pool and optionally write the reports.

    Args:
        predict: the predictor (module docstring); called under ``torch.no_grad`` with CPU float32 tensors of up to
            ``batch_tasks`` tasks of the same image size.
        pool: the test pool (:class:`~labelless.fewshot.image.episodes.ImagePool` with ``has_masks``); images of one
            task must have the same size (a pool resized to 224 satisfies it). Supports are drawn from the pool's
            ``support_ids`` when it has that attribute (masks non-empty at the support grid), else from the images
            whose loaded mask is non-empty (this reads every image once before the episodes).
        n_episodes: number of episodes (reference: 200).
        n_tasks: tasks per episode (reference: 5).
        n_shots: supports per task K.
        seed: episode seed (``eval_seed``); the same seed gives the same episodes for every model.
        batch_tasks: tasks per predictor call.
        threshold: probability threshold (prediction = ``p > threshold``).
        output_dir: when given, ``metrics.json``, ``metrics.csv``, ``metrics.md`` and ``overlays/*.png`` are written
            there (atomically) by :func:`write_episode_reports`.
        n_overlays: number of overlay PNGs (the first queries of the first episodes).
        progress: show a tqdm progress bar over the episodes.
        cache_size: number of loaded pool images kept in memory (0 disables the cache).

    Returns:
        ``{"episode_dice_mean", "episode_dice_std", "per_episode_dice": [E], "per_image_dice_mean",
        "per_image_iou_mean", "n_episodes", "n_tasks", "n_shots", "n_queries", "n_empty_truth_queries",
        "n_pool_images", "n_support_images", "seed", "threshold", "episodes": [{"episode", "dice", "tasks":
        [{"support_ids", "query_id", "dice", "iou", "tp", "fp", "fn"}]}], "files": {...} (when written)}``; Dice
        and IoU as fractions in 0..1.

    Raises:
        ConfigError: invalid counts, threshold, or a pool without the expected interface.
        DataError: a pool without masks or too small, images of different sizes in one task (naming the image
            ids), bad predictor output.

    Examples::

        pool = ImageFolderPool("isic2016_test", image_size=224)
        res = evaluate_episodes(network_predictor(net, "cuda"), pool, n_episodes=200, output_dir="eval")
        res["episode_dice_mean"]
    """
    from tqdm.auto import tqdm

    if not isinstance(pool, ImagePool):
        raise ConfigError(f"pool must provide image_ids, has_masks and load(image_id); got {type(pool).__name__}")
    if not as_bool(pool.has_masks, "has_masks"):
        raise DataError("test pool", "has no masks; the episode protocol needs ground truth")
    batch_tasks = _count(batch_tasks, "batch_tasks", 1)
    n_overlays = _count(n_overlays, "n_overlays", 0)
    if not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
    ids = [str(i) for i in pool.image_ids]
    lru = LRUCache(_count(cache_size, "cache_size", 0))

    def item(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return lru.get_or_load(i, lambda: _load_test_item(pool, ids[i]))

    sup_ids = getattr(pool, "support_ids", None)
    if sup_ids is not None:  # the pool knows which masks are non-empty at the support grid
        chosen = {str(i) for i in sup_ids}
        has_fg = [i in chosen for i in ids]
    else:
        has_fg = [bool(item(i)[1].any()) for i in range(len(ids))]
    episodes = draw_test_episodes(has_fg, n_episodes, n_tasks, n_shots, seed)

    per_episode: list[dict[str, Any]] = []
    overlays: list[tuple[str, Any]] = []
    for e, tasks in enumerate(tqdm(episodes, desc="episodes", unit="episode", disable=not as_bool(progress))):
        loaded = []
        for sup, q in tasks:
            items = [item(i) for i in (*sup, q)]
            sizes = {tuple(img.shape[1:]) for img, _ in items}
            if len(sizes) > 1:
                detail = ", ".join(f"{ids[i]} {list(img.shape[1:])}" for i, (img, _) in zip((*sup, q), items))
                raise DataError(f"episode {e}", f"images of one task must have the same size: {detail}")
            loaded.append(items)
        probs: list[torch.Tensor | None] = [None] * len(tasks)
        order = sorted(range(len(tasks)), key=lambda t: tuple(loaded[t][0][0].shape[1:]))
        groups: list[list[int]] = []
        for t in order:  # tasks of one call share the image size
            if (
                groups
                and len(groups[-1]) < batch_tasks
                and (loaded[groups[-1][0]][0][0].shape == loaded[t][0][0].shape)
            ):
                groups[-1].append(t)
            else:
                groups.append([t])
        for g in groups:
            s_img = torch.stack([torch.stack([img for img, _ in loaded[t][:-1]]) for t in g])
            s_msk = torch.stack([torch.stack([m for _, m in loaded[t][:-1]]) for t in g])
            q_img = torch.stack([loaded[t][-1][0] for t in g])
            with torch.no_grad():
                out = predict(s_img, s_msk, q_img)
            p = _check_probabilities(out, (len(g), 1, *q_img.shape[2:]))
            for j, t in enumerate(g):
                probs[t] = p[j, 0]
        rec_tasks, preds, truths = [], [], []
        for t, (sup, q) in enumerate(tasks):
            pred = (probs[t] > float(threshold)).numpy()
            truth = loaded[t][-1][1][0].numpy() > 0.5
            c = confusion_counts(pred, truth)
            tp, fp, fn = c.tp, c.fp, c.fn
            preds.append(pred)
            truths.append(truth)
            rec_tasks.append({"support_ids": [ids[i] for i in sup], "query_id": ids[q],
                              "dice": dice_from_counts(tp, fp, fn), "iou": iou_from_counts(tp, fp, fn),
                              "tp": tp, "fp": fp, "fn": fn})  # fmt: skip
            if len(overlays) < n_overlays:
                s_img, s_msk = loaded[t][0]
                overlays.append((f"ep{e:03d}_task{t}_{ids[q]}", [
                    (rgb_overlay(s_img, truth=s_msk), f"support {ids[sup[0]]}"),
                    (rgb_overlay(loaded[t][-1][0], truth=truth, prediction=pred),
                     f"query {ids[q]} Dice {100 * rec_tasks[-1]['dice']:.1f}%"),
                ]))  # fmt: skip
        per_episode.append({"episode": e, "dice": episode_dice(preds, truths), "tasks": rec_tasks})

    ep_dice = [r["dice"] for r in per_episode]
    all_tasks = [t for r in per_episode for t in r["tasks"]]
    result: dict[str, Any] = {
        "metric": "episode Dice: per episode, Dice over the pooled pixels of its thresholded queries; mean over "
        "episodes (fraction 0..1)",
        "episode_dice_mean": float(np.mean(ep_dice)),
        "episode_dice_std": float(np.std(ep_dice)),
        "per_episode_dice": ep_dice,
        "per_image_dice_mean": float(np.mean([t["dice"] for t in all_tasks])),
        "per_image_iou_mean": float(np.mean([t["iou"] for t in all_tasks])),
        "n_episodes": len(per_episode),
        "n_tasks": int(n_tasks),
        "n_shots": int(n_shots),
        "n_queries": len(all_tasks),
        "n_empty_truth_queries": sum(1 for t in all_tasks if t["tp"] + t["fn"] == 0),
        "n_pool_images": len(ids),
        "n_support_images": int(sum(has_fg)),
        "seed": int(seed),
        "threshold": float(threshold),
        "episodes": per_episode,
    }
    if output_dir is not None:
        result["files"] = {k: [str(p) for p in v] if isinstance(v, list) else str(v)
                           for k, v in write_episode_reports(result, output_dir, overlays).items()}  # fmt: skip
    return result
