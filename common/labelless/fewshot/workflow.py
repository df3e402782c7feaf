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

import numpy as np
import torch
import torch.nn as nn

from labelless.data.labelmap import LabelMap
from labelless.data.layouts import PreparedVolumeDataset
from labelless.data.presets import get_preset
from labelless.errors import ConfigError, DataError
from labelless.fewshot.episodes import SelfSupervisedEpisodeDataset
from labelless.fewshot.folds import fold_split
from labelless.io.readers import read_volume
from labelless.io.volume import Volume
from labelless.io.writers import write_volume
from labelless.transforms.intensity import zscore

__all__ = [
    "effective_preset",
    "resolve_dataset",
    "resolve_derived_dir",
    "training_episodes",
    "checkpoint_name",
    "load_network_weights",
    "FewShotProtocolRunner",
    "FewShotInferenceRunner",
    "find_query_files",
    "inference_inputs",
    "fold_norm_stats",
]

logger = logging.getLogger("labelless.fewshot")

_PHANTOM_OF = {"chaos": "phantom_abdomen", "synapse": "phantom_abdomen", "cmr": "phantom_cardiac"}


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))


def effective_preset(dataset_dir: str | os.PathLike | None, dataset: str = "chaos") -> str:
    """The preset actually used: ``dataset`` with real data, its phantom counterpart without ``dataset_dir``."""
    key = str(dataset).lower()
    if _is_unset(dataset_dir):
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
    if _is_unset(dataset_dir):
        from labelless.phantoms import default_dataset_dir

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
) -> PreparedVolumeDataset:
    """Make sure superpixel maps exist (computing the missing ones, cached) and point ``dataset`` at them."""
    from labelless.superpixels import precompute_superpixels

    out = precompute_superpixels(
        dataset.root,
        out_dir=None if _is_unset(derived_dir) else derived_dir,
        preset=dataset.preset,
        method=method,
        workers=workers,
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
) -> SelfSupervisedEpisodeDataset:
    """Self-supervised episodes of a fold's training scans (fewshot_protocol §4).

    Args:
        dataset: from :func:`resolve_dataset`.
        fold: the fold whose test scans and support scan are held out.
        setting: 1 or 2 (Setting 2 drops the slices of the label set's test classes).
        label_set: Setting-2 label set.
        n_shots: support copies per episode.
        n_steps: number of episodes (one per training iteration).
        augmentation: ``"parity"`` (the reference augmentation) or ``"monai"`` (approximation), or ``"none"``.
        derived_dir: superpixel cache folder (computed when missing).
        superpixel_method: superpixel method of the precompute.
        workers: processes of the superpixel precompute.
        use_all_scans: train on every scan (no held-out fold; for a deployment model, never for evaluation).
    """
    from labelless.transforms.augment import RandFewShotAugmentd, monai_fewshot_augment

    resolve_derived_dir(dataset, derived_dir, superpixel_method, workers)
    if use_all_scans:
        train = list(dataset.pids)
    else:
        split = fold_split(dataset.pids, int(fold), dataset.preset.n_folds)
        train = list(split.train)
        logger.info("fold %d: training scans %s; held out (test + support) %s", fold, train, list(split.held_out))
    aug = str(augmentation).lower()
    if aug == "parity":
        transform = RandFewShotAugmentd(keys=("image", "label"))
    elif aug == "monai":
        transform = monai_fewshot_augment(keys=("image", "label"))
    elif aug == "none":
        transform = None
    else:
        raise ConfigError(f"augmentation must be 'parity', 'monai' or 'none', got {augmentation!r}")
    return SelfSupervisedEpisodeDataset.from_dataset(
        dataset, train, setting=int(setting), label_set=int(label_set), n_shots=int(n_shots),
        n_episodes=int(n_steps), transform=transform,
    )  # fmt: skip


def checkpoint_name(setting: int = 1, label_set: int = 0, fold: int = 0) -> str:
    """File name of the final checkpoint of one (setting, label set, fold): ``fold0_setting1.pt``,
    ``fold0_setting2_labelset1.pt`` (Setting 1 has one model per fold for all classes)."""
    if int(setting) == 1:
        return f"fold{int(fold)}_setting1.pt"
    return f"fold{int(fold)}_setting2_labelset{int(label_set)}.pt"


def load_network_weights(network: nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint into ``network`` with clear errors.

    Accepts a plain state dict (the shipped ``model.pt``) or a training checkpoint with the key ``model``. Loaded
    with ``weights_only=True``. Loading is strict, with one documented exception: a sub-module may list, in its
    ``unused_checkpoint_keys`` attribute, keys that a checkpoint of another configuration of the same model carries
    but this configuration does not use (DSPNet with BCMA switched off for a test-time ablation ignores the trained
    ``bcma.cal``); those are dropped with a log message. Missing keys are always an error.

    Raises:
        DataError: missing or unreadable file, or weights that do not fit the network (e.g. another bundle's or
            another encoder's checkpoint); the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            p,
            "checkpoint not found (train the bundle first; to run without weights on purpose set load_pretrain=False)",
        )
    from labelless.io.checkpoint import read_state_dict

    state = read_state_dict(p, "checkpoint", map_location=device)
    own = network.state_dict()
    ignorable = {
        (f"{name}." if name else "") + key
        for name, module in network.named_modules()
        for key in getattr(module, "unused_checkpoint_keys", ())
    }
    dropped = sorted(k for k in state if k in ignorable and k not in own)
    if dropped:
        logger.info("%s: ignoring %s (not used by this configuration of the network)", p, ", ".join(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape_bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape_bad:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shape_bad:
            k = shape_bad[0]
            detail.append(f"shape mismatch at {k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}")
        raise DataError(
            p,
            "checkpoint does not fit this network — is it from another bundle or another encoder setting? "
            + "; ".join(detail),
        )
    network.load_state_dict(state)
    return network


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
    if classes is None or (isinstance(classes, str) and _is_unset(classes)):
        return list(dataset.preset.test_classes_for(int(setting), int(label_set)))
    return [dataset.label_map.id_of(c) for c in classes]


class FewShotProtocolRunner:
    """Runs the evaluation protocol of fewshot_protocol §6 for a bundle (``validate#evaluator`` of evaluate.json).

    For every requested fold it loads that fold's own checkpoint (``<ckpt_dir>/<checkpoint_name(...)>``), lists the
    folds whose checkpoint is missing, evaluates in protocol mode and GT-free mode and writes ``metrics.json``,
    ``metrics.csv``, ``metrics.md`` and overlays to ``output_dir``.

    Args:
        dataset: from :func:`resolve_dataset`.
        network: the few-shot network (placed on ``device``); used as the protocol's predictor in eval mode.
        ckpt_dir: folder of the per-fold checkpoints.
        output_dir: report folder.
        folds: folds to visit.
        setting, label_set: which models to evaluate and which test classes.
        classes: class names or ids overriding the setting's test classes.
        modes: ``protocol`` and/or ``gt_free``.
        n_shots: support slices per chunk.
        ckpt_path: evaluate this one checkpoint for all requested folds instead of per-fold checkpoints (only
            honest when its training excluded those folds; the shipped ``model.pt`` is a fold-0 model).
        batch_size, n_overlays, save_predictions, z_margin: options of :func:`~labelless.fewshot.protocol.evaluate`.
        device: device of the network.
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
        save_predictions: bool = False,
        z_margin: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.dataset = dataset
        self.network = network
        self.ckpt_dir = Path(ckpt_dir)
        self.output_dir = Path(output_dir)
        self.folds = [int(f) for f in folds]
        self.setting, self.label_set = int(setting), int(label_set)
        self.classes = _class_ids(dataset, classes, self.setting, self.label_set)
        self.modes = list(modes)
        self.n_shots = int(n_shots)
        self.ckpt_path = None if _is_unset(ckpt_path) else Path(ckpt_path)
        self.kwargs = {
            "batch_size": int(batch_size), "n_overlays": int(n_overlays), "save_predictions": bool(save_predictions),
            "z_margin": int(z_margin),
        }  # fmt: skip
        self.device = torch.device(device)
        self.result = None

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

    def run(self) -> dict:
        """Evaluate and write the reports; returns the ``metrics.json`` content."""
        from labelless.fewshot.protocol import evaluate
        from labelless.reports import result_to_dict, write_reports

        self.result = evaluate(
            self.dataset, self._predictor_for_fold, folds=self.folds, classes=self.classes, modes=self.modes,
            norm_stats_for_fold=self._norm_stats_for_fold, n_shots=self.n_shots, device=self.device,
            output_dir=self.output_dir, **self.kwargs,
        )  # fmt: skip
        paths = write_reports(self.result, self.output_dir)
        summary = result_to_dict(self.result)
        logger.info("metrics written to %s (mean Dice %s)", paths["metrics_json"], summary.get("mean_dice"))
        return summary


_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg")


def find_query_files(queries: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Query volumes from files and folders (a folder holding ``.dcm`` files is one DICOM series; other folders are
    searched for volume files, sorted by name)."""
    items = [queries] if isinstance(queries, (str, os.PathLike)) else list(queries)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise DataError(p, "query file or folder does not exist")
        if p.is_file():
            out.append(p)
            continue
        files = sorted(f for f in p.iterdir() if f.is_file())
        if any(f.suffix.lower() == ".dcm" for f in files):
            out.append(p)
            continue
        vols = [f for f in files if any(f.name.lower().endswith(s) for s in _VOLUME_SUFFIXES)]
        if not vols:
            raise DataError(p, "query folder holds no image volumes")
        out.extend(vols)
    if not out:
        raise DataError(None, "no query images given")
    return out


def _query_stem(path: Path) -> str:
    name = path.name
    for s in sorted(_VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


class FewShotInferenceRunner:
    """Few-shot inference on user volumes (``evaluator`` of inference.json): a labelled support volume and a label
    value define the class; every query volume is segmented (GT-free chunking, fewshot_protocol §6.5) and a binary
    mask is written per query in the query's geometry, plus PNG overlays.

    Queries of another in-plane size than the network input are resampled to ``image_size`` slice by slice
    (bilinear) and the prediction is resampled back (nearest) — documented fallback; queries whose in-plane size is
    not a multiple of 8 are handled the same way. Volumes with NaN/inf are refused.

    Args:
        network: the few-shot network (placed on ``device``).
        support_image: support volume file (or DICOM folder).
        support_label: its label file (same grid).
        label_value: raw label value of the class in ``support_label``.
        queries: query files and/or folders.
        output_dir: where ``<query>_pred.nii.gz`` and overlays go.
        normalization: ``"volume_zscore"`` (MR) or ``"fixed"`` with ``norm_stats`` (CT training statistics).
        norm_stats: ``(mean, std)`` for ``"fixed"``.
        n_chunks, n_shots: support slices (3 chunks, 1 shot).
        image_size: in-plane size the network expects (256); ``None`` keeps each query's own size (must be a
            multiple of 8).
        batch_size: query slices per forward.
        predict_outside_extent, extent_margin: zero the prediction outside the support-estimated extent.
        n_overlays: overlay PNGs per query.
        support_slices: optional explicit support slice per chunk (``n_chunks`` z indices of the support volume, each
            containing the class) instead of the automatic 1/6, 1/2, 5/6 quantiles; 1-shot only.
        output_suffix: file suffix of the masks (``.nii.gz``).
        device: device of the network.
    """

    def __init__(
        self,
        network: nn.Module,
        support_image: str | os.PathLike,
        support_label: str | os.PathLike,
        label_value: int | float,
        queries: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        normalization: str = "volume_zscore",
        norm_stats: Sequence[float] | None = None,
        n_chunks: int = 3,
        n_shots: int = 1,
        image_size: int | None = 256,
        batch_size: int = 16,
        predict_outside_extent: bool = True,
        extent_margin: int = 2,
        n_overlays: int = 1,
        support_slices: Sequence[int] | None = None,
        output_suffix: str = ".nii.gz",
        device: str | torch.device = "cpu",
    ) -> None:
        self.network = network
        self.support_image = Path(support_image)
        self.support_label = Path(support_label)
        self.label_value = float(label_value)
        self.queries = queries
        self.output_dir = Path(output_dir)
        self.normalization = str(normalization)
        self.norm_stats = None if norm_stats is None else (float(norm_stats[0]), float(norm_stats[1]))
        if self.normalization == "fixed" and self.norm_stats is None:
            raise ConfigError("normalization 'fixed' needs norm_stats=(mean, std) of the training scans")
        self.n_chunks, self.n_shots = int(n_chunks), int(n_shots)
        self.image_size = None if image_size is None else int(image_size)
        self.batch_size = int(batch_size)
        self.predict_outside_extent = bool(predict_outside_extent)
        self.extent_margin = int(extent_margin)
        self.n_overlays = int(n_overlays)
        self.support_slices = None if support_slices is None else [int(z) for z in support_slices]
        self.output_suffix = output_suffix
        self.device = torch.device(device)
        self.outputs: list[Path] = []

    # ------------------------------------------------------------------ helpers
    def _normalize(self, vol: Volume) -> np.ndarray:
        if self.normalization == "fixed":
            return zscore(vol.array, *self.norm_stats, source=vol.path)
        if self.normalization != "volume_zscore":
            raise ConfigError(f"normalization must be 'volume_zscore' or 'fixed', got {self.normalization!r}")
        return zscore(vol.array, source=vol.path)

    def _resize(self, arr: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
        if tuple(arr.shape[-2:]) == tuple(size):
            return arr
        t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)[:, None]
        kw = {"align_corners": False} if mode == "bilinear" else {}
        return torch.nn.functional.interpolate(t, size=size, mode=mode, **kw)[:, 0].numpy()

    def _net_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        if shape[0] % 8 or shape[1] % 8:
            raise DataError(None, f"slice size {shape} is not a multiple of 8; set image_size to resample")
        return shape

    def _support(self):
        from labelless.fewshot.protocol import support_shot_slices

        img = read_volume(self.support_image, ndim=None)
        lab = read_volume(self.support_label, is_label=True, ndim=None)
        if lab.shape != img.shape:
            raise DataError(self.support_label, f"label grid {lab.shape} does not match support image {img.shape}")
        mask = np.isclose(lab.array.astype(np.float64), self.label_value)
        zs = [int(z) for z in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]]
        if not zs:
            values = np.unique(np.rint(lab.array.astype(np.float64))).astype(int).tolist()[:20]
            raise DataError(
                self.support_label, f"label value {self.label_value:g} is not present (values found: {values})"
            )
        if self.support_slices is None:
            per_chunk = support_shot_slices(zs, self.n_chunks, self.n_shots, source=self.support_label)
        else:
            if len(self.support_slices) != self.n_chunks or self.n_shots != 1:
                raise ConfigError(
                    f"support_slices needs one slice per chunk ({self.n_chunks}) and n_shots=1, got "
                    f"{self.support_slices} with n_shots={self.n_shots}"
                )
            for z in self.support_slices:
                if not 0 <= z < img.shape[0]:
                    raise DataError(
                        self.support_image, f"support slice {z} is outside the volume (0..{img.shape[0] - 1})"
                    )
                if z not in zs:
                    raise DataError(
                        self.support_label, f"support slice {z} does not contain label {self.label_value:g}"
                    )
            per_chunk = [[z] for z in self.support_slices]
        norm = self._normalize(img)
        size = self._net_size(img.shape[1:])
        sup = [
            (self._resize(norm[z_list], size, "bilinear"), (self._resize(mask[z_list].astype(np.float32), size,
             "bilinear") > 0.5).astype(np.float32))
            for z_list in per_chunk
        ]  # fmt: skip
        for (_, s_mask), z_list in zip(sup, per_chunk):
            if s_mask.reshape(len(z_list), -1).sum(axis=1).min() == 0:
                raise DataError(self.support_label, f"support slices {z_list} lose the class after resampling")
        return img, (zs[0], zs[-1]), sup, per_chunk

    # ------------------------------------------------------------------ run
    def run(self) -> list[Path]:
        """Segment every query; returns the written mask files."""
        from labelless.fewshot.protocol import segment_volume, support_relative_chunks, support_relative_slices
        from labelless.reports import write_inference_overlay

        files = find_query_files(self.queries)
        self.network.eval()
        sup_vol, extent, supports, per_chunk = self._support()
        logger.info(
            "support %s: class %g on slices %d..%d; support slices per chunk %s",
            self.support_image, self.label_value, extent[0], extent[1], per_chunk,
        )  # fmt: skip
        self.outputs = []
        for f in files:
            q = read_volume(f, ndim=None)
            norm = self._normalize(q)
            size = self._net_size(q.shape[1:])
            net_in = self._resize(norm, size, "bilinear")
            chunks = support_relative_chunks(q.shape[0], sup_vol.shape[0], extent, self.n_chunks)
            pred = segment_volume(net_in, supports, chunks, self.network, batch_size=self.batch_size,
                                  device=self.device)  # fmt: skip
            pred = (self._resize(pred.astype(np.float32), q.shape[1:], "nearest") > 0.5).astype(np.uint8)
            if not self.predict_outside_extent:
                keep = support_relative_slices(q.shape[0], sup_vol.shape[0], extent, self.extent_margin)
                outside = np.ones(q.shape[0], dtype=bool)
                outside[keep] = False
                pred[outside] = 0
            out = self.output_dir / f"{_query_stem(f)}_pred{self.output_suffix}"
            write_volume(pred, out, reference=q, dtype=np.uint8)
            self.outputs.append(out)
            if self.n_overlays > 0:
                write_inference_overlay(q.array, pred, self.output_dir / "overlays", _query_stem(f), self.n_overlays)
            logger.info("%s -> %s (%d foreground voxels)", f, out, int(pred.sum()))
        return self.outputs


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
        ConfigError: only some of the support inputs were given.
    """
    given = [support_image, support_label]
    if any(not _is_unset(g) for g in given) and any(_is_unset(g) for g in given):
        raise ConfigError("give both support_image and support_label (or neither, to use a prepared dataset)")
    if not _is_unset(support_image):
        if _is_unset(queries):
            raise ConfigError("give the query image(s) or folder(s) to segment: queries=...")
        value = default_label_value if label_value is None else label_value
        return {"support_image": support_image, "support_label": support_label, "label_value": value,
                "queries": queries}  # fmt: skip
    if _is_unset(dataset_dir):
        from labelless.phantoms import default_dataset_dir

        dataset_dir = default_dataset_dir("abdomen")
        logger.info("no inputs given: segmenting the liver in the embedded phantoms of %s", dataset_dir)
    ds = PreparedVolumeDataset(dataset_dir, "chaos")
    sup = ds.pids[0]
    return {
        "support_image": ds.image_path(sup),
        "support_label": ds.label_path(sup),
        "label_value": default_label_value if label_value is None else label_value,
        "queries": [ds.image_path(p) for p in ds.pids[1:]] if _is_unset(queries) else queries,
    }
