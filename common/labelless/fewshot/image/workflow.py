# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""What the FSMS bundle configs call: the meta-training class source, the target-domain pools, the evaluation runner.

- :func:`meta_class_source`: the union of class folders (layout A/B) used for meta-training. Without explicit folders:
  the built-in synthetic shape classes (generated once, cached), plus, when ``shared_data_dir`` is given, the labelled
  non-skin structures of the shared data exported as classes (CHAOS organs, BraTS tumour, HC18 head, DDTI nodule).
  Skin-lesion data is never a meta-training class.
- :func:`target_pools`: the target domain (skin) — an unlabelled pool for the surrogate task and labelled test pools
  (and a validation pool where one exists): a user's image/mask folder split 40/60, the shared skin pools, or the
  embedded synthetic skin phantoms.
- :class:`FewShotImageEvaluationRunner`: the reference episode protocol (200 episodes × 5 tasks) for every test pool and
  every K, with per-image Dice; one ``metrics.json``/``.md`` summary plus a folder per (pool, K).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelless.data.images import ImageFolderPool, split_pool
from labelless.errors import ConfigError, DataError
from labelless.fewshot.image.classes import ClassFolderDataset, skin_pools
from labelless.fewshot.image.protocol import evaluate_episodes, network_predictor, support_calibrated_predictor
from labelless.options import as_int, as_int_list
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.utils import as_bool, is_unset, write_json_atomic, write_text_atomic

__all__ = [
    "UnionClassSource",
    "meta_class_source",
    "target_pools",
    "image_mask_pool",
    "inference_inputs",
    "evaluate_pools",
    "FewShotImageEvaluationRunner",
]

logger = logging.getLogger("labelless.fewshot.image")


class UnionClassSource:
    """Several class sources seen as one: class names are prefixed with their source's folder name when two sources
    share a name.

    Args:
        sources: objects with ``classes``, ``ids`` (mapping) and ``load_pair(cls, idx)`` (e.g.
            :class:`~labelless.fewshot.image.classes.ClassFolderDataset`).

    Examples::

        src = UnionClassSource([ClassFolderDataset("shapes"), ClassFolderDataset("exported")])
        image, mask = src.load_pair(src.classes[0], 0)
    """

    def __init__(self, sources: Sequence[Any]) -> None:
        if not sources:
            raise ConfigError("no meta-training class source given")
        self.sources = list(sources)
        self._where: dict[str, tuple[Any, str]] = {}
        for src in self.sources:
            for cls in src.classes:
                name = cls if cls not in self._where else f"{Path(str(getattr(src, 'root', 'src'))).name}/{cls}"
                self._where[name] = (src, cls)
        self.classes: list[str] = list(self._where)
        self.ids: dict[str, list[str]] = {n: list(s.ids[c]) for n, (s, c) in self._where.items()}

    def __len__(self) -> int:
        return len(self.classes)

    def load_pair(self, cls: str, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image, mask)`` of pair ``idx`` of class ``cls`` (a name of :attr:`classes`)."""
        if cls not in self._where:
            raise DataError("meta-training classes", f"unknown class {cls!r}")
        src, name = self._where[cls]
        return src.load_pair(name, idx)

    def __repr__(self) -> str:
        return f"UnionClassSource(classes={len(self.classes)}, sources={len(self.sources)})"


def meta_class_source(
    class_dirs: Sequence[str | os.PathLike] | str | None = None,
    shared_data_dir: str | os.PathLike | None = None,
    derived_dir: str | os.PathLike | None = None,
    n_shots: int = 1,
    image_size: int = 224,
    exclude: Sequence[str] | str | None = None,
    skip_bad_pairs: bool = False,
    export_sources: Sequence[str] = ("chaos", "brats", "hc18", "ddti"),
    export_max_instances: int = 10,
    synthetic_classes: int = 40,
    synthetic_instances: int = 6,
) -> UnionClassSource:
    """The meta-training classes (fsms.md §1.1-§1.3).

    Args:
        class_dirs: folders of classes (FSS-1000 layout A or layout B); ``None``: the built-in synthetic shape classes.
        shared_data_dir: the shared development data; its labelled non-skin structures are exported once (into
            ``derived_dir``) and added as classes.
        derived_dir: where exported classes go (default: the labelless cache).
        n_shots: K (every class needs K + 1 valid pairs; smaller classes are dropped with a warning).
        image_size: image size of the episodes.
        exclude: class names (or a text file of them) to leave out.
        skip_bad_pairs: skip unreadable pairs with a warning instead of an error.
        export_sources: shared-data sources to export.
        export_max_instances: instances per exported class.
        synthetic_classes: number of built-in synthetic classes (when ``class_dirs`` is not given).
        synthetic_instances: instances per synthetic class.

    Returns:
        the union of the class sources.
    """
    roots: list[Path] = []
    if is_unset(class_dirs):
        from labelless.fewshot.image.synthetic import default_fsms_data

        roots.append(
            default_fsms_data(n_classes=int(synthetic_classes), n_instances=int(synthetic_instances))["classes"]
        )
    else:
        roots += [Path(p) for p in ([class_dirs] if isinstance(class_dirs, (str, os.PathLike)) else class_dirs)]
    if not is_unset(shared_data_dir):
        from labelless.fewshot.image.export import export_classes
        from labelless.paths import cache_root

        out = Path(derived_dir) if not is_unset(derived_dir) else cache_root() / "fsms" / "exported_classes"
        summary = export_classes(
            shared_data_dir, out, sources=tuple(export_sources), max_instances=export_max_instances
        )
        logger.info("meta-training classes exported from %s: %s", shared_data_dir, summary)
        roots.append(out)
    sources = []
    for root in roots:
        if not Path(root).is_dir():
            raise DataError(root, "class folder does not exist")
        sources.append(
            ClassFolderDataset(
                root,
                min_pairs=int(n_shots) + 1,
                exclude=exclude,
                skip_bad_pairs=skip_bad_pairs,
                size=int(image_size),
                drop_small_classes=True,
            )  # fmt: skip
        )
    union = UnionClassSource(sources)
    logger.info("meta-training: %d classes from %s", len(union), ", ".join(str(r) for r in roots))
    return union


def image_mask_pool(folder: str | os.PathLike, image_size: int = 224) -> ImageFolderPool:
    """A labelled pool from ``<folder>/images`` and ``<folder>/masks`` (masks named ``<id>.png``,
    ``<id>_segmentation.png`` or ``<id>_mask.png``; PNG/JPG images of any size, resized to ``image_size``).

    Raises:
        DataError: the folder or one of its two sub-folders is missing (named), or a pool error (unreadable file,
            missing mask, size mismatch).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise DataError(
            root,
            "expected sub-folders images/ and masks/ (masks named <id>.png, <id>_segmentation.png or <id>_mask.png)",
        )
    return ImageFolderPool(images, size=int(image_size), masks=masks)


def target_pools(
    dataset_dir: str | os.PathLike | None = None,
    shared_data_dir: str | os.PathLike | None = None,
    image_size: int = 224,
    unlabeled_fraction: float = 0.4,
) -> dict[str, Any]:
    """The target-domain pools: ``{"unlabeled": pool, "test": {name: pool}, "val": pool or None}``.

    - ``dataset_dir`` (``images/`` + ``masks/``): sorted ids split ``unlabeled_fraction`` / rest; the unlabelled
      part's masks are never read. An optional ``<dataset_dir>/val/{images,masks}`` is the validation pool
      (``eval_split="val"``: checkpoint selection on the user's own domain, never on the test pool).
    - else ``shared_data_dir``: ISIC-2016 split 40/60, HAM10000 and the CLTNet ISIC samples as extra test pools, the
      CLTNet ISIC ``val`` samples as the validation pool (fsms.md §1.4).
    - else the embedded synthetic skin phantoms, split like a user folder.
    """
    if not is_unset(dataset_dir) or is_unset(shared_data_dir):
        if is_unset(dataset_dir):
            from labelless.fewshot.image.synthetic import default_fsms_data

            root = default_fsms_data()["skin"]
            logger.info("no dataset_dir given: using the embedded synthetic skin phantoms in %s", root)
        else:
            root = Path(dataset_dir)
        pool = image_mask_pool(root, image_size)
        unl, test = split_pool(pool.image_ids, unlabeled_fraction)
        if not test:
            raise DataError(root, f"{len(pool.image_ids)} images: too few to split off a test pool")
        logger.warning(
            "%s: %d images; the FSMS protocol (fsms.md §1.4) keeps the first %d of the sorted ids (unlabeled_fraction "
            "%.2f) as the unlabelled surrogate pool, whose masks are never read, and scores the other %d as the test "
            "pool. To score all %d as a test set, use unlabeled_fraction=0 (bundle override: --pools "
            "\"$labelless.fewshot.image.workflow.target_pools(@dataset_dir, @shared_data_dir, @image_size, 0.0)\").",
            root, len(pool.image_ids), len(unl), float(unlabeled_fraction), len(test), len(pool.image_ids),
        )  # fmt: skip
        val_root = Path(root) / "val"
        val = None
        if not is_unset(dataset_dir) and (val_root / "images").is_dir():
            val = image_mask_pool(val_root, image_size)
            logger.info("%s: validation pool of %d images (checkpoint selection)", val_root, len(val.image_ids))
        return {
            "unlabeled": pool.subset(unl, with_masks=False) if unl else None,
            "test": {("skin_phantoms" if is_unset(dataset_dir) else Path(root).name): pool.subset(test)},
            "val": val,
        }
    pools = skin_pools(shared_data_dir, size=int(image_size), unlabeled_fraction=float(unlabeled_fraction))
    return {
        "unlabeled": pools.get("isic2016_unlabeled"),
        "test": {k: v for k, v in pools.items() if k.endswith("_test")},
        "val": pools.get("isic_samples_val"),
    }


def inference_inputs(
    support_images: Sequence[str | os.PathLike] | str | None = None,
    support_masks: Sequence[str | os.PathLike] | str | None = None,
    queries: Sequence[str | os.PathLike] | str | None = None,
    n_shots: int | None = None,
    n_queries: int = 8,
) -> dict[str, Any]:
    """The inputs of ``inference.json``: the given files, or (nothing given) a demo on the embedded skin phantoms —
    the first ``n_shots`` (default 1) labelled test-split phantoms as supports and the next ``n_queries`` as queries.

    With explicit supports, K is the number of support images; ``n_shots``, when given too, must equal it (it is never
    silently ignored).

    Returns:
        ``{"support_images": [...], "support_masks": [...], "queries": [...] or a folder}``.

    Raises:
        ConfigError: only some of the three inputs given, ``n_shots`` not a positive integer or different from the
            number of support images.
    """
    shots = None if is_unset(n_shots) else as_int(n_shots, "n_shots", 1)
    given = [not is_unset(v) for v in (support_images, support_masks, queries)]
    if all(given):

        def as_list(v: Any) -> list[str]:
            return [str(v)] if isinstance(v, (str, os.PathLike)) else [str(x) for x in v]

        q = queries if isinstance(queries, (str, os.PathLike)) else as_list(queries)
        sup_images = as_list(support_images)
        if shots is not None and shots != len(sup_images):
            raise ConfigError(
                f"n_shots={shots} but {len(sup_images)} support image(s) were given; give n_shots support images and "
                "masks, or leave n_shots unset (K = the number of supports)"
            )
        return {"support_images": sup_images, "support_masks": as_list(support_masks), "queries": q}
    if any(given):
        raise ConfigError("give support_images, support_masks and queries together (or none of them for the demo)")
    n_shots = 1 if shots is None else shots
    from labelless.fewshot.image.synthetic import default_fsms_data

    pool = image_mask_pool(default_fsms_data()["skin"])
    _, test = split_pool(pool.image_ids)
    supports = [i for i in test if i in set(pool.support_ids)][: int(n_shots)]
    rest = [i for i in test if i not in supports][: int(n_queries)]
    logger.info("no inputs given: demo on the embedded skin phantoms (supports %s)", supports)
    return {
        "support_images": [str(pool.image_path(i)) for i in supports],
        "support_masks": [str(pool.mask_path(i)) for i in supports],
        "queries": [str(pool.image_path(i)) for i in rest],
    }


def evaluate_pools(
    predict: Callable[..., Any],
    pools: Mapping[str, Any],
    shots: Sequence[int],
    output_dir: str | os.PathLike,
    n_episodes: int = 200,
    n_tasks: int = 5,
    seed: int = 0,
    n_overlays: int = 3,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The episode protocol (:func:`~labelless.fewshot.image.protocol.evaluate_episodes`) on every pool × every K.

    A (pool, K) with fewer than K + 1 support candidates is skipped with a warning. Reports go to
    ``<output_dir>/<pool>_<K>shot/``.

    Returns:
        one summary row per evaluated (pool, K): ``pool``, ``shots``, ``episode_dice`` (+ ``_std``),
        ``per_image_dice``, ``per_image_iou``, ``n_episodes``, ``n_pool_images`` (the ``results`` of ``metrics.json``).
    """
    rows = []
    for name, pool in pools.items():
        for k in shots:
            n_support = len(getattr(pool, "support_ids", pool.image_ids))
            if n_support < k + 1:
                logger.warning("%s: %d support candidates, too few for %d-shot episodes; skipped", name, n_support, k)
                continue
            res = evaluate_episodes(
                predict, pool, n_episodes=n_episodes, n_tasks=n_tasks, n_shots=k, seed=seed,
                output_dir=Path(output_dir) / f"{name}_{k}shot", n_overlays=n_overlays, progress=progress,
            )  # fmt: skip
            rows.append(
                {
                    "pool": name,
                    "shots": int(k),
                    "episode_dice": res["episode_dice_mean"],
                    "episode_dice_std": res["episode_dice_std"],
                    "per_image_dice": res["per_image_dice_mean"],
                    "per_image_iou": res["per_image_iou_mean"],
                    "n_episodes": res["n_episodes"],
                    "n_pool_images": res["n_pool_images"],
                }
            )
            logger.info(
                "%s, %d-shot: episode Dice %.4f, per-image Dice %.4f", name, k, rows[-1]["episode_dice"],
                rows[-1]["per_image_dice"],
            )  # fmt: skip
    return rows


class FewShotImageEvaluationRunner:
    """The FSMS evaluation (fsms.md §4) as a bundle ``evaluator``: every test pool × every K.

    ``run()`` loads the checkpoint (when given), evaluates the episode protocol with seeded episodes (the same for
    every model), writes ``<output_dir>/<pool>_<K>shot/`` (metrics and overlays) and a summary
    ``<output_dir>/metrics.json`` / ``metrics.md``, and returns the summary.

    Args:
        network: an :class:`~labelless.networks.fsms.FSMSNet`.
        pools: the output of :func:`target_pools` (its ``"test"`` pools are evaluated) or a mapping name -> pool.
        output_dir: report folder.
        shots: the K values (1 and 5 by default).
        n_episodes: test episodes per (pool, K) (200).
        n_tasks: tasks per episode (5).
        seed: episode seed (``eval_seed``).
        ckpt_path: checkpoint to load first (plain state dict or a training checkpoint with ``model``).
        device: evaluation device.
        n_overlays: overlays per (pool, K).
        label: a name of the model for the summary (e.g. "with surrogate").
        split: ``"test"`` (the test pools) or ``"val"`` (the validation pool of :func:`target_pools`, e.g. to follow
            training or select a checkpoint without touching the test pools).
        support_threshold: threshold each task at the probability that segments its own K supports best
            (:func:`~labelless.fewshot.image.protocol.support_calibrated_predictor`) instead of 0.5.

    Raises:
        ConfigError: no pool to evaluate (``split="val"`` without a validation pool: it exists with
            ``shared_data_dir`` only), an unknown ``split``, ``shots`` that are not positive integers, negative
            ``n_overlays``, or an ``output_dir`` inside a pool's data set folder.
    """

    def __init__(
        self,
        network: nn.Module,
        pools: Mapping[str, Any],
        output_dir: str | os.PathLike,
        shots: Sequence[int] = (1, 5),
        n_episodes: int = 200,
        n_tasks: int = 5,
        seed: int = 0,
        ckpt_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        n_overlays: int = 3,
        label: str = "",
        split: str = "test",
        support_threshold: bool = False,
    ) -> None:
        self.network = network
        self.support_threshold = as_bool(support_threshold, "support_threshold")
        if split not in ("test", "val"):
            raise ConfigError(f"eval_split (split) {split!r}: expected 'test' or 'val'")
        if split == "val":
            val = pools.get("val") if isinstance(pools, Mapping) else None
            if val is None:
                raise ConfigError(
                    "split='val': no validation pool (the CLTNet ISIC val samples are used with shared_data_dir; "
                    "a dataset_dir has test and unlabelled parts only)"
                )
            test = {"val": val}
        else:
            test = pools.get("test", pools) if isinstance(pools, Mapping) else pools
        if not isinstance(test, Mapping) or not test:
            raise ConfigError("no labelled test pool to evaluate")
        self.pools = {k: v for k, v in test.items() if v is not None}
        # the reports must not go into a pool's data set: its image and mask folders and, for the images/ + masks/
        # layout of a dataset_dir, the folder holding them
        folders: set[Path] = set()
        for pool in self.pools.values():
            for f in (getattr(pool, "root", None), getattr(pool, "masks_dir", None)):
                if f is not None:
                    folders |= {Path(f), Path(f).parent} if Path(f).name in ("images", "masks") else {Path(f)}
        # check_output_outside_inputs compares the folders of the files it is given: one (unread) name per folder
        self.output_dir = check_output_outside_inputs(output_dir, [f / "_" for f in folders])
        self.shots = as_int_list(shots, "eval_shots", 1)
        self.n_episodes = as_int(n_episodes, "n_eval_episodes", 1)
        self.n_tasks = as_int(n_tasks, "n_tasks", 1)
        self.seed = as_int(seed, "eval_seed", 0)
        self.ckpt_path = None if is_unset(ckpt_path) else Path(ckpt_path)
        self.device = torch.device(device)
        self.n_overlays = as_int(n_overlays, "n_overlays", 0)
        self.label = str(label)

    def _load(self) -> None:
        from labelless.io.checkpoint import load_network_weights

        if self.ckpt_path is not None:
            load_network_weights(self.network, self.ckpt_path, self.device)

    @locked_output
    def run(self) -> dict[str, Any]:
        """Evaluate and write the reports; returns the summary."""
        self._load()
        self.network.to(self.device).eval()
        predict = network_predictor(self.network, self.device)
        if self.support_threshold:
            predict = support_calibrated_predictor(predict)
        rows = evaluate_pools(
            predict, self.pools, self.shots, self.output_dir, n_episodes=self.n_episodes, n_tasks=self.n_tasks,
            seed=self.seed, n_overlays=self.n_overlays,
        )  # fmt: skip
        summary = {
            "label": self.label,
            "checkpoint": None if self.ckpt_path is None else str(self.ckpt_path),
            "protocol": f"{self.n_episodes} episodes x {self.n_tasks} tasks, K support + 1 query from the test pool, "
            "micro-Dice pooled per episode (fsms.md §4.1); seeded episodes",
            "seed": self.seed,
            "support_threshold": self.support_threshold,
            "results": rows,
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "metrics.json", summary)
        lines = ["| pool | K | episode Dice | per-image Dice | IoU |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['pool']} | {r['shots']} | {100 * r['episode_dice']:.2f} ± {100 * r['episode_dice_std']:.2f} | "
                f"{100 * r['per_image_dice']:.2f} | {100 * r['per_image_iou']:.2f} |"
            )
        write_text_atomic(self.output_dir / "metrics.md", "\n".join(lines) + "\n")
        logger.info("metrics written to %s", self.output_dir / "metrics.json")
        return summary
