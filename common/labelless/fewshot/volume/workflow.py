# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Glue that the few-shot bundle configs call: dataset resolution (real data or the embedded phantoms), training
episodes, per-fold checkpoints, the protocol evaluation runner and few-shot inference on user volumes.

Keeping this here keeps the three few-shot bundles' configs thin and identical in shape: a bundle chooses its
network (``network_def``) and loss; everything else is shared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from labelless.data.labelmap import LabelMap
from labelless.data.layouts import PreparedVolumeDataset
from labelless.data.presets import get_preset
from labelless.errors import ConfigError
from labelless.fewshot.volume.episodes import SelfSupervisedEpisodeDataset
from labelless.fewshot.volume.folds import fold_split
from labelless.fewshot.volume.gtfree import GTFreeOptions
from labelless.io.checkpoint import load_network_weights
from labelless.options import as_float, as_int, as_int_list
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.utils import as_bool, is_unset

__all__ = [
    "effective_preset",
    "resolve_dataset",
    "resolve_derived_dir",
    "training_episodes",
    "checkpoint_name",
    "FewShotVolumeEvaluationRunner",
    "inference_inputs",
    "fold_norm_stats",
    "weights_will_be_loaded",
]

logger = logging.getLogger("labelless.fewshot.volume")

_PHANTOM_OF = {"chaos": "phantom_abdomen", "synapse": "phantom_abdomen", "cmr": "phantom_cardiac"}


def effective_preset(dataset_dir: str | os.PathLike | None, dataset: str = "chaos") -> str:
    """The preset actually used: ``dataset`` with real data, its phantom counterpart without ``dataset_dir``."""
    key = str(dataset).lower()
    if is_unset(dataset_dir):
        return _PHANTOM_OF.get(key, key if key.startswith("phantom_") else "phantom_abdomen")
    return key


def resolve_dataset(
    dataset_dir: str | os.PathLike | None = None,
    dataset: str = "chaos",
    label_map: Mapping | None = None,
    class_names: Mapping | None = None,
    phantom_volumes: int = 8,
    phantom_seed: int = 0,
) -> PreparedVolumeDataset:
    """The labelled prepared dataset of a bundle run.

    Args:
        dataset_dir: prepared layout; ``None`` (or ``""``) uses the embedded phantoms (generated once into the cache)
            of the dataset's kind (abdominal for ``chaos``/``synapse``, cardiac for ``cmr``).
        dataset: preset name (``chaos``, ``synapse``, ``cmr``, or a phantom preset).
        label_map: raw label value -> class id override, e.g. ``{"200": 1, "500": 2, "600": 3}``.
        class_names: class id -> name override, e.g. ``{"1": "MYO", "2": "LV", "3": "RV"}``.
        phantom_volumes: number of phantom volumes when no ``dataset_dir`` is given.
        phantom_seed: seed of the phantom set.
    """
    preset = get_preset(effective_preset(dataset_dir, dataset))
    if is_unset(dataset_dir):
        from labelless.data.phantoms import default_dataset_dir

        kind = "cardiac" if preset.name == "phantom_cardiac" else "abdomen"
        dataset_dir = default_dataset_dir(kind, n_volumes=int(phantom_volumes), seed=int(phantom_seed))
        logger.info("no dataset_dir given: using the embedded %s phantoms in %s", kind, dataset_dir)
    lm = None
    if label_map is not None or class_names is not None:
        values = preset.label_map.values if label_map is None else LabelMap.from_config(label_map).values
        names = dict(preset.label_map.names) if label_map is None else {0: "BG"}
        names.update({int(k): str(v) for k, v in dict(class_names or {}).items()})
        lm = LabelMap(dict(values), names)
    return PreparedVolumeDataset(dataset_dir, preset, label_map=lm)


def resolve_derived_dir(
    dataset: PreparedVolumeDataset,
    derived_dir: str | os.PathLike | None = None,
    method: str = "felzenszwalb",
    workers: int | None = None,
    body_threshold: float | None = None,
    body_threshold_rel: float | None = None,
    min_size: int = 400,
) -> PreparedVolumeDataset:
    """Make sure superpixel maps exist (computing the missing ones, cached) and point ``dataset`` at them.

    ``body_threshold`` / ``body_threshold_rel`` override the preset's body-mask rule (see
    :func:`~labelless.fewshot.volume.superpixels.precompute_superpixels`; ``None`` keeps the preset's). ``min_size``
    is the Felzenszwalb minimum superpixel size (protocol 400); the default cache folder is keyed by it.

    Raises:
        ConfigError: ``derived_dir`` is the data set folder or lies inside it (derived files never go there).
    """
    from labelless.fewshot.volume.superpixels import precompute_superpixels

    if not is_unset(derived_dir):
        root, out = Path(dataset.root).resolve(), Path(derived_dir).resolve()
        if out == root or root in out.parents:
            raise ConfigError(f"derived_dir {derived_dir} lies inside the dataset folder {dataset.root} (derived files "
                              "never go there); choose another folder")  # fmt: skip
    out = precompute_superpixels(
        dataset.root,
        out_dir=None if is_unset(derived_dir) else derived_dir,
        preset=dataset.preset,
        method=method,
        workers=workers,
        body_threshold=body_threshold,
        body_threshold_rel=body_threshold_rel,
        min_size=int(min_size),
    )
    dataset.derived_dir = Path(out)
    return dataset


def training_episodes(
    dataset: PreparedVolumeDataset,
    fold: int = 0,
    setting: int = 1,
    label_set: int = 0,
    n_shots: int = 1,
    n_steps: int = 100100,
    augmentation: str = "parity",
    derived_dir: str | os.PathLike | None = None,
    superpixel_method: str = "felzenszwalb",
    workers: int | None = None,
    use_all_scans: bool = False,
    body_threshold: float | None = None,
    body_threshold_rel: float | None = None,
    superpixel_min_size: int = 400,
) -> SelfSupervisedEpisodeDataset:
    """Self-supervised episodes of a fold's training scans (fewshot_protocol §4).

    Args:
        dataset: from :func:`resolve_dataset`.
        fold: the fold whose test scans and support scan are held out.
        setting: 1 or 2 (Setting 2 drops the slices of the label set's test classes).
        label_set: Setting-2 label set.
        n_shots: support copies per episode.
        n_steps: number of episodes (one per training iteration).
        augmentation: ``"parity"`` (the reference augmentation), ``"monai"`` (approximation), ``"strong"`` (wide
            geometric ranges and a flip, :func:`~labelless.transforms.augment.strong_fewshot_augment`) or ``"none"``.
        derived_dir: superpixel cache folder (computed when missing).
        superpixel_method: superpixel method of the precompute.
        workers: processes of the superpixel precompute.
        use_all_scans: train on every scan (no held-out fold; for a deployment model, never for evaluation).
        body_threshold, body_threshold_rel: body-mask rule of the superpixels overriding the preset's (label-free
            adaptation to scans of another intensity range, :mod:`labelless.fewshot.volume.adapt`).
        superpixel_min_size: Felzenszwalb minimum superpixel size in pixels (protocol 400); smaller values give more,
            smaller pseudo-label classes (e.g. a target structure much smaller than an organ).

    Setting 1 reads no label file (the pool comes from the superpixels only): unlabelled scans are accepted.
    """
    from labelless.transforms.augment import RandFewShotAugmentd, monai_fewshot_augment, strong_fewshot_augment

    # the augmentation name is checked before the (long) superpixel precompute
    aug = str(augmentation).lower()
    if aug == "parity":
        transform = RandFewShotAugmentd(keys=("image", "label"))
    elif aug == "monai":
        transform = monai_fewshot_augment(keys=("image", "label"))
    elif aug == "strong":
        transform = strong_fewshot_augment(keys=("image", "label"))
    elif aug == "none":
        transform = None
    else:
        raise ConfigError(f"augmentation must be 'parity', 'monai', 'strong' or 'none', got {augmentation!r}")
    resolve_derived_dir(dataset, derived_dir, superpixel_method, workers, body_threshold, body_threshold_rel,
                        min_size=superpixel_min_size)  # fmt: skip
    if as_bool(use_all_scans, "use_all_scans"):
        train = list(dataset.pids)
    else:
        split = fold_split(dataset.pids, int(fold), dataset.preset.n_folds)
        train = list(split.train)
        logger.info("fold %d: training scans %s; held out (test + support) %s", fold, train, list(split.held_out))
    return SelfSupervisedEpisodeDataset.from_dataset(
        dataset, train, setting=int(setting), label_set=int(label_set), n_shots=int(n_shots),
        n_episodes=int(n_steps), transform=transform,
    )  # fmt: skip


#: the encoders' warning when built without ``pretrained_path`` (labelless.networks.encoders)
_RANDOM_INIT_MESSAGE = r".*no pretrained_path given, the encoder is randomly initialised.*"


def weights_will_be_loaded(load: bool | str = True) -> bool:
    """Declare that the network of this run gets its weights from a checkpoint (``inference.json`` with
    ``load_pretrain``, every ``evaluate.json`` run): the encoder's "randomly initialised" warning at construction
    would be wrong and is silenced (only that message). Returns ``load`` parsed; ``False`` changes nothing."""
    import warnings

    flag = as_bool(load, "load_pretrain")
    if flag:
        warnings.filterwarnings("ignore", message=_RANDOM_INIT_MESSAGE)
    return flag


def checkpoint_name(setting: int = 1, label_set: int = 0, fold: int = 0) -> str:
    """File name of the final checkpoint of one (setting, label set, fold): ``fold0_setting1.pt``,
    ``fold0_setting2_labelset1.pt`` (Setting 1 has one model per fold for all classes)."""
    if int(setting) == 1:
        return f"fold{int(fold)}_setting1.pt"
    return f"fold{int(fold)}_setting2_labelset{int(label_set)}.pt"


def fold_norm_stats(dataset: PreparedVolumeDataset, fold: int) -> tuple[float, float] | None:
    """CT rule (``fold_zscore`` presets, fewshot_protocol §2.6): mean/std over all voxels of the fold's training
    scans — the statistics training used; ``None`` for presets normalised per volume."""
    if dataset.preset.normalization != "fold_zscore":
        return None
    from labelless.transforms.intensity import fold_statistics

    split = fold_split(dataset.pids, fold, dataset.preset.n_folds)
    stats = fold_statistics(dataset.load_image(pid).array for pid in split.train)
    logger.info("fold %d: normalisation statistics of the training scans: mean %.4f, std %.4f", fold, *stats)
    return stats


def _class_ids(dataset: PreparedVolumeDataset, classes: Sequence[str | int] | None, setting: int, label_set: int):
    if classes is None or (isinstance(classes, str) and is_unset(classes)):
        return list(dataset.preset.test_classes_for(int(setting), int(label_set)))
    return [dataset.label_map.id_of(c) for c in classes]


class FewShotVolumeEvaluationRunner:
    """Runs the evaluation protocol of fewshot_protocol §6 for a bundle (``validate#evaluator`` of evaluate.json).

    For every requested fold it loads that fold's own checkpoint (``<ckpt_dir>/<checkpoint_name(...)>``), lists the
    folds whose checkpoint is missing, evaluates in protocol mode and GT-free mode and writes ``metrics.json``,
    ``metrics.csv``, ``metrics.md`` and overlays to ``output_dir``.

    Args:
        dataset: from :func:`resolve_dataset`.
        network: the few-shot network (placed on ``device``); used as the protocol's predictor in eval mode.
        ckpt_dir: folder of the per-fold checkpoints.
        output_dir: report folder.
        folds: folds to visit (one fold or a list).
        setting, label_set: which models to evaluate and which test classes.
        classes: class names or ids overriding the setting's test classes.
        modes: ``protocol`` and/or ``gt_free``.
        n_shots: support slices per chunk.
        ckpt_path: evaluate this one checkpoint for all requested folds instead of per-fold checkpoints (only
            honest when its training excluded those folds; the shipped ``model.pt`` is a fold-0 model).
        batch_size, n_overlays, save_predictions, predict_outside_extent, z_margin: options of
            :func:`~labelless.fewshot.volume.protocol.evaluate` (switches accept "true"/"false" from a command line).
        extent_margin, extent_reference, foreground_threshold, presence, presence_rule, cleanup, cleanup_fraction: the
            GT-free switches
            (:class:`~labelless.fewshot.volume.gtfree.GTFreeOptions`; ``None`` keeps its default), used by the
            ``gt_free`` mode only.
        device: device of the network.

    Raises:
        ConfigError: an option of the wrong type or range (named), unknown modes, or an ``output_dir`` inside the
            data set folder (checked here, before any work).
    """

    def __init__(
        self,
        dataset: PreparedVolumeDataset,
        network: nn.Module,
        ckpt_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        folds: Sequence[int] = (0,),
        setting: int = 1,
        label_set: int = 0,
        classes: Sequence[str | int] | None = None,
        modes: Sequence[str] = ("protocol", "gt_free"),
        n_shots: int = 1,
        ckpt_path: str | os.PathLike | None = None,
        batch_size: int = 16,
        n_overlays: int = 3,
        save_predictions: bool | str = False,
        predict_outside_extent: bool | str | None = None,
        z_margin: int = 0,
        device: str | torch.device = "cpu",
        extent_margin: int | None = None,
        extent_reference: str | None = None,
        presence: str | None = None,
        presence_rule: str | None = None,
        cleanup: str | None = None,
        cleanup_fraction: float | None = None,
        foreground_threshold: str | None = None,
    ) -> None:
        self.dataset = dataset
        self.network = network
        self.ckpt_dir = Path(ckpt_dir)
        # the reports never go into the data set folder (they would be read back as data)
        self.output_dir = check_output_outside_inputs(output_dir, [dataset.image_path(p) for p in dataset.pids])
        self.folds = as_int_list(folds, "folds", 0, dataset.preset.n_folds - 1)
        self.setting, self.label_set = as_int(setting, "setting", 1, 2), as_int(label_set, "label_set", 0)
        self.classes = _class_ids(dataset, classes, self.setting, self.label_set)
        from labelless.fewshot.volume.protocol import MODES

        self.modes = [modes] if isinstance(modes, str) else list(modes)
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ConfigError(f"eval_modes must be one or more of {list(MODES)}, got {modes!r}")
        self.n_shots = as_int(n_shots, "n_shots", 1)
        self.ckpt_path = None if is_unset(ckpt_path) else Path(ckpt_path)
        self.kwargs = {
            "batch_size": as_int(batch_size, "eval_batch_size", 1), "n_overlays": as_int(n_overlays, "n_overlays", 0),
            "save_predictions": as_bool(save_predictions, "save_predictions"),
            "z_margin": as_int(z_margin, "z_margin", 0),
            "gt_free_options": GTFreeOptions.from_options(
                None, predict_outside_extent=predict_outside_extent, extent_margin=extent_margin,
                extent_reference=extent_reference, presence=presence, presence_rule=presence_rule, cleanup=cleanup,
                cleanup_fraction=cleanup_fraction, foreground_threshold=foreground_threshold,
            ),
        }  # fmt: skip
        self.device = torch.device(device)
        self.result = None

    def check_checkpoints(self) -> None:
        """Fail before any work when ``ckpt_path`` is given and missing, or when no requested fold has a checkpoint
        (a mistyped path must not give an all-"n/a" report and exit 0). Folds whose checkpoint alone is missing are
        skipped with a warning and listed as ``folds_missing`` in the report. Every checkpoint that will be used is
        loaded into the network once here, so that an unreadable one, or one of another network, fails now and not
        after the folds before it were evaluated.

        Raises:
            ConfigError: naming the missing file(s).
            DataError: an unreadable checkpoint or one that does not fit the network (naming the file).
        """
        if self.ckpt_path is not None:
            if not self.ckpt_path.is_file():
                raise ConfigError(f"eval_ckpt_path {self.ckpt_path} does not exist (or is not a file)")
            load_network_weights(self.network, self.ckpt_path, self.device)
            return
        paths = [self.checkpoint_for(f) for f in self.folds]
        if paths and not any(p.is_file() for p in paths):
            names = ", ".join(str(p) for p in paths[:4]) + (" ..." if len(paths) > 4 else "")
            raise ConfigError(
                f"no checkpoint for any requested fold in ckpt_dir {self.ckpt_dir} (looked for {names}); train first "
                "or pass --eval_ckpt_path"
            )
        for path in dict.fromkeys(p for p in paths if p.is_file()):
            load_network_weights(self.network, path, self.device)

    def checkpoint_for(self, fold: int) -> Path:
        return self.ckpt_path or self.ckpt_dir / checkpoint_name(self.setting, self.label_set, fold)

    def _predictor_for_fold(self, fold: int) -> Callable | None:
        path = self.checkpoint_for(fold)
        if not path.is_file():
            logger.warning("fold %d: checkpoint %s is missing; fold not evaluated", fold, path)
            return None
        load_network_weights(self.network, path, self.device)
        self.network.eval()
        logger.info("fold %d: evaluating %s", fold, path)
        return self.network

    def _norm_stats_for_fold(self, fold: int) -> tuple[float, float] | None:
        return fold_norm_stats(self.dataset, fold)

    @locked_output
    def run(self) -> dict:
        """Evaluate and write the reports; returns the ``metrics.json`` content."""
        from labelless.evaluation.reports import result_to_dict, write_reports
        from labelless.fewshot.volume.protocol import evaluate

        self.check_checkpoints()
        self.result = evaluate(
            self.dataset, self._predictor_for_fold, folds=self.folds, classes=self.classes, modes=self.modes,
            norm_stats_for_fold=self._norm_stats_for_fold, n_shots=self.n_shots, device=self.device,
            output_dir=self.output_dir, **self.kwargs,
        )  # fmt: skip
        paths = write_reports(self.result, self.output_dir)
        summary = result_to_dict(self.result)
        logger.info("metrics written to %s (mean Dice %s)", paths["metrics_json"], summary.get("mean_dice"))
        return summary


def inference_inputs(
    dataset_dir: str | os.PathLike | None = None,
    support_image: str | os.PathLike | None = None,
    support_label: str | os.PathLike | None = None,
    label_value: float | None = None,
    queries: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    default_label_value: float = 1,
) -> dict[str, Any]:
    """Resolve the inputs of few-shot inference.

    Explicit ``support_image`` / ``support_label`` / ``label_value`` / ``queries`` win. Otherwise they come from a
    prepared layout: ``dataset_dir`` (or, when ``None``, the embedded abdominal phantoms): the first scan is the
    support, the others are the queries, and the class is ``default_label_value`` (1 = liver for the abdominal
    presets).

    Returns:
        ``{"support_image", "support_label", "label_value", "queries"}``.

    Raises:
        ConfigError: only some of the support inputs were given, or ``label_value`` is not a number.
    """
    if not is_unset(label_value):
        label_value = as_float(label_value, "label_value")
    given = [support_image, support_label]
    if any(not is_unset(g) for g in given) and any(is_unset(g) for g in given):
        raise ConfigError("give both support_image and support_label (or neither, to use a prepared dataset)")
    if not is_unset(support_image):
        if is_unset(queries):
            raise ConfigError("give the query image(s) or folder(s) to segment: queries=...")
        value = default_label_value if label_value is None else label_value
        return {"support_image": support_image, "support_label": support_label, "label_value": value,
                "queries": queries}  # fmt: skip
    if is_unset(dataset_dir):
        from labelless.data.phantoms import default_dataset_dir

        dataset_dir = default_dataset_dir("abdomen")
        logger.info("no inputs given: segmenting the liver in the embedded phantoms of %s", dataset_dir)
    ds = PreparedVolumeDataset(dataset_dir, "chaos")
    sup = ds.pids[0]
    return {
        "support_image": ds.image_path(sup),
        "support_label": ds.label_path(sup),
        "label_value": default_label_value if label_value is None else label_value,
        "queries": [ds.image_path(p) for p in ds.pids[1:]] if is_unset(queries) else queries,
    }
