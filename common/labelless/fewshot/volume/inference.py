# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Few-shot inference on user volumes (``evaluator`` of the volume bundles' inference.json): query listing and
:class:`FewShotVolumeInferenceRunner`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.transforms import Compose, Lambdad
from monai.utils import convert_to_numpy

from labelless.errors import ConfigError, DataError
from labelless.fewshot.volume.gtfree import GTFreeOptions, empty_slices
from labelless.io.loading import LoadFiled, loaded_meta
from labelless.io.readers import read_volume
from labelless.io.suffixes import VOLUME_SUFFIXES, has_suffix, strip_suffix
from labelless.io.writers import write_volume
from labelless.options import as_float, as_int, as_int_list
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.transforms.intensity import ZScoreNormalized, zscore_options
from labelless.transforms.postprocess import Binarized
from labelless.transforms.spatial import ResizeInPlane, ResizeInPlaned, ZeroSlicesd
from labelless.transforms.utility import LogItemd, run_transform, runner_items
from labelless.utils import is_unset

__all__ = ["NOT_QUERY_PREFIXES", "NOT_QUERY_SUFFIXES", "list_query_files", "FewShotVolumeInferenceRunner"]

logger = logging.getLogger("labelless.fewshot.volume")


#: file-name starts of a prepared layout's labels and derived maps: never queries when a folder is listed
NOT_QUERY_PREFIXES = ("label_", "superpix_", "superpixraw_", "bodymask_")
#: name endings (before the suffix) of this runner's outputs: never queries when a folder is listed
NOT_QUERY_SUFFIXES = ("_pred",)


def list_query_files(queries: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Query volumes from files and folders (a folder holding ``.dcm`` files is one DICOM series; other folders are
    searched for volume files, sorted by name).

    In a folder, labels and derived maps of the prepared layout (``label_*``, ``superpix_*``, ``bodymask_*``) and
    previous outputs (``*_pred``) are skipped (logged): ``--queries <prepared folder>`` segments its images only.
    Files named explicitly are always used.

    Raises:
        DataError: a missing file or folder, a folder without query volumes, no query at all.
    """
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
        vols = [f for f in files if has_suffix(f, VOLUME_SUFFIXES)]
        skipped = [f for f in vols if f.name.startswith(NOT_QUERY_PREFIXES) or strip_suffix(f).endswith(
            NOT_QUERY_SUFFIXES)]  # fmt: skip
        if skipped:
            logger.info("%s: %d label/derived/output file(s) skipped (e.g. %s)", p, len(skipped), skipped[0].name)
        vols = [f for f in vols if f not in skipped]
        if not vols:
            raise DataError(p, "query folder holds no image volumes")
        out.extend(vols)
    if not out:
        raise DataError(None, "no query images given")
    return out


class FewShotVolumeInferenceRunner:
    """Few-shot inference on user volumes (``evaluator`` of inference.json): a labelled support volume and a label
    value define the class; every query volume is segmented without ground truth (fewshot_protocol §6.5, through
    :func:`~labelless.fewshot.volume.protocol.segment_volume_gt_free`, the code path of the GT-free evaluation mode:
    empty slices get nothing, the class extent is estimated from the support, slices whose presence score is below
    the threshold calibrated on the support are cleared, 3D connected-component clean-up) and a binary mask is
    written per query in the query's geometry, plus PNG overlays.

    The steps around the network are MONAI transforms on dict items (``"image"``: the file, then the network input),
    which a bundle config can spell out:

    - ``preprocessing`` (default :meth:`default_preprocessing`): read the volume
      (:class:`~labelless.io.loading.LoadFiled` with :func:`~labelless.io.readers.read_volume`), z-score it
      (:class:`~labelless.transforms.intensity.ZScoreNormalized`), note its empty slices
      (:func:`~labelless.fewshot.volume.gtfree.empty_slices` → ``"empty_slices"``), resample the slices to
      ``image_size`` (:class:`~labelless.transforms.spatial.ResizeInPlaned`, bilinear — a documented fallback for
      queries of another in-plane size, and required when that size is not a multiple of 8). The support image goes
      through the same steps.
    - the forward pass (runner): ``"pred"`` = the GT-free ``(Z, S, S)`` prediction.
    - ``postprocessing`` (default :meth:`default_postprocessing`): ``"pred"`` back to the query's slice size
      (nearest), binary uint8, zero on the empty slices. It must leave ``"pred"`` on the query's grid.
    - writing (runner, atomic): ``<query>_pred.nii.gz`` with the query's geometry and the overlays; then every
      handler is called with the query's record.

    Volumes with NaN/inf are refused, and so is a support label whose grid or affine differs from its image's. The
    options, the query list and the output folder (not inside the folder of a query or of the support) are checked
    when the runner is built, before any work.

    Args:
        network: the few-shot network (placed on ``device``).
        support_image: support volume file (or DICOM folder).
        support_label: its label file (same grid).
        label_value: raw label value of the class in ``support_label``.
        queries: query files and/or folders.
        output_dir: where ``<query>_pred.nii.gz`` and overlays go.
        normalization: ``"volume_zscore"`` (MR) or ``"fixed"`` with ``norm_stats`` (CT training statistics); an
            option of the default ``preprocessing``.
        norm_stats: ``(mean, std)`` for ``"fixed"``.
        n_chunks, n_shots: support slices (3 chunks, 1 shot).
        image_size: in-plane size the network expects (256); ``None`` keeps each query's own size (must be a
            multiple of 8); an option of the default ``preprocessing``.
        batch_size: query slices per forward.
        predict_outside_extent, extent_margin: zero the prediction outside the support-estimated extent.
        extent_reference, foreground_threshold, presence, presence_rule, cleanup, cleanup_fraction: the other GT-free
            switches
            (:class:`~labelless.fewshot.volume.gtfree.GTFreeOptions`; ``None`` keeps its default).
        n_overlays: overlay PNGs per query.
        support_slices: optional explicit support slice per chunk (``n_chunks`` z indices of the support volume, each
            containing the class) instead of the automatic 1/6, 1/2, 5/6 quantiles; 1-shot only.
        output_suffix: file suffix of the masks (``.nii.gz``).
        device: device of the network.
        preprocessing: callable on ``{"image": file}`` (a MONAI ``Compose`` of dict transforms) giving the normalised
            ``(Z, S, S)`` network input in ``"image"`` and the ``"image_meta_dict"`` of ``LoadFiled``; replaces the
            default.
        postprocessing: callable on the item after the forward pass (see above); replaces the default.
        dataloader: the preprocessed query items (e.g. a MONAI ``DataLoader`` over ``Dataset([{"image": file}, ...],
            transform=preprocessing)`` with ``collate_fn=no_collation``); every item must be one of ``queries``.
            Default: ``preprocessing`` applied to each query in turn.
        handlers: callables called with each query's record (``input``, ``mask``, ``overlays``, ``foreground_px``,
            ``index``, ``total``) after its files are written; default: one
            :class:`~labelless.transforms.utility.LogItemd` line per query.
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
        predict_outside_extent: bool | None = None,
        extent_margin: int | None = None,
        n_overlays: int = 1,
        support_slices: Sequence[int] | None = None,
        output_suffix: str = ".nii.gz",
        device: str | torch.device = "cpu",
        extent_reference: str | None = None,
        presence: str | None = None,
        presence_rule: str | None = None,
        cleanup: str | None = None,
        cleanup_fraction: float | None = None,
        foreground_threshold: str | None = None,
        preprocessing: Callable[[dict], dict] | None = None,
        postprocessing: Callable[[dict], dict] | None = None,
        dataloader: Iterable[Any] | None = None,
        handlers: Sequence[Callable[[dict], Any]] | None = None,
    ) -> None:
        self.network = network
        self.support_image = Path(support_image)
        self.support_label = Path(support_label)
        self.label_value = as_float(label_value, "label_value")
        self.normalization = str(normalization)
        self.norm_stats = zscore_options(self.normalization, norm_stats)
        self.n_chunks, self.n_shots = as_int(n_chunks, "n_chunks", 1), as_int(n_shots, "n_shots", 1)
        self.image_size = None if is_unset(image_size) else as_int(image_size, "image_size", 8)
        self.batch_size = as_int(batch_size, "batch_size", 1)
        self.gt_free = GTFreeOptions.from_options(
            None, predict_outside_extent=predict_outside_extent, extent_margin=extent_margin,
            extent_reference=extent_reference, presence=presence, presence_rule=presence_rule, cleanup=cleanup,
            cleanup_fraction=cleanup_fraction, foreground_threshold=foreground_threshold,
        )  # fmt: skip
        self.predict_outside_extent = self.gt_free.predict_outside_extent
        self.extent_margin = self.gt_free.extent_margin
        self.n_overlays = as_int(n_overlays, "n_overlays", 0)
        self.support_slices = None if is_unset(support_slices) else as_int_list(support_slices, "support_slices", 0)
        for f, what in ((self.support_image, "support image"), (self.support_label, "support label")):
            if not f.exists():
                raise DataError(f, f"{what} does not exist")
        self.queries = list_query_files(queries)
        self.output_dir = check_output_outside_inputs(output_dir, [*self.queries, self.support_image,
                                                                   self.support_label])  # fmt: skip
        self.output_suffix = output_suffix
        self.device = torch.device(device)
        self.preprocessing = preprocessing or self.default_preprocessing(normalization, norm_stats, self.image_size)
        self.postprocessing = postprocessing or self.default_postprocessing()
        self.dataloader = dataloader
        default = [LogItemd("{input} -> {mask} ({foreground_px} foreground voxels)", logger.name)]
        self.handlers = default if handlers is None else ([handlers] if callable(handlers) else list(handlers))
        for h in self.handlers:
            if not callable(h):
                raise ConfigError(f"handlers must be callables on a query's record, got {type(h).__name__}")
        self.outputs: list[Path] = []

    @staticmethod
    def default_preprocessing(
        normalization: str = "volume_zscore", norm_stats: Sequence[float] | None = None, image_size: int | None = 256
    ) -> Compose:
        """The built-in ``preprocessing``: read (any volume format), z-score, note the empty slices, bilinear slices
        at ``image_size`` (``None``: the own size, which must be a multiple of 8)."""
        return Compose([
            LoadFiled("image", reader=read_volume, ndim=None),
            ZScoreNormalized("image", normalization, norm_stats),
            Lambdad("image", func=empty_slices, overwrite="empty_slices", track_meta=False),
            ResizeInPlaned("image", spatial_size=image_size, mode="bilinear", slice_wise=True, divisible_by=8),
        ])  # fmt: skip

    @staticmethod
    def default_postprocessing() -> Compose:
        """The built-in ``postprocessing``: nearest back to the query's slice size, binary uint8, zero on the empty
        slices."""
        return Compose([
            ResizeInPlaned("pred", size_of="image", mode="nearest", slice_wise=True),
            Binarized("pred", threshold=0.5, dtype="uint8"),
            ZeroSlicesd("pred", slices_key="empty_slices"),
        ])  # fmt: skip

    # ------------------------------------------------------------------ helpers
    def _items(self) -> Iterator[dict[Hashable, Any]]:
        """The preprocessed query items: from ``dataloader``, or ``preprocessing`` applied to each query."""
        return runner_items(self.queries, self.preprocessing, self.dataloader, "queries")

    def _support(self):
        from labelless.fewshot.volume.protocol import support_shot_slices

        item = run_transform(self.preprocessing, {"image": self.support_image})
        img = loaded_meta(item, "image")["original"]
        net_img = np.asarray(convert_to_numpy(item["image"]))
        lab = read_volume(self.support_label, is_label=True, ndim=None)
        if lab.shape != img.shape:
            raise DataError(self.support_label, f"label grid {lab.shape} does not match support image {img.shape}")
        if not np.allclose(lab.affine, img.affine, atol=1e-2):
            raise DataError(self.support_label, f"label geometry (affine) differs from the support image's "
                                                f"({self.support_image})")  # fmt: skip
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
        if net_img.ndim != 3 or net_img.shape[0] != img.shape[0]:
            raise DataError(self.support_image, f"preprocessing gave shape {net_img.shape}; expected "
                                                f"({img.shape[0]}, H, W)")  # fmt: skip
        net_mask = ResizeInPlane(net_img.shape[-2:], "bilinear", slice_wise=True)(mask.astype(np.float32)) > 0.5
        for z_list in per_chunk:
            if net_mask[z_list].reshape(len(z_list), -1).sum(axis=1).min() == 0:
                raise DataError(self.support_label, f"support slices {z_list} lose the class after resampling")
        return img, (zs[0], zs[-1]), net_img, net_mask, per_chunk

    # ------------------------------------------------------------------ run
    @locked_output
    def run(self) -> list[Path]:
        """Segment every query; returns the written mask files."""
        from labelless.evaluation.overlays import write_inference_overlay
        from labelless.fewshot.volume.protocol import prepare_gt_free_support, segment_volume_gt_free

        files = self.queries
        self.network.eval()
        sup_vol, extent, sup_img, sup_mask, per_chunk = self._support()
        logger.info(
            "support %s: class %g on slices %d..%d; support slices per chunk %s",
            self.support_image, self.label_value, extent[0], extent[1], per_chunk,
        )  # fmt: skip
        support = None
        self.outputs = []
        for index, item in enumerate(self._items(), 1):
            meta = loaded_meta(item, "image")
            f, q = Path(meta["filename_or_obj"]), meta["original"]
            if support is None:  # calibrated on the support once the first query has loaded (a bad query fails first)
                support = prepare_gt_free_support(
                    sup_img, sup_mask, self.network, self.gt_free, self.n_chunks, self.n_shots, shots=per_chunk,
                    batch_size=self.batch_size, device=self.device, source=self.support_label,
                )  # fmt: skip
            res = segment_volume_gt_free(np.asarray(convert_to_numpy(item["image"])), support, self.network,
                                         batch_size=self.batch_size, device=self.device)  # fmt: skip
            item["pred"] = res.prediction
            pred = np.asarray(convert_to_numpy(run_transform(self.postprocessing, item)["pred"]))
            out = self.output_dir / f"{strip_suffix(f)}_pred{self.output_suffix}"
            write_volume(pred, out, reference=q, dtype=np.uint8)
            self.outputs.append(out)
            overlays: list[Path] = []
            if self.n_overlays > 0:
                overlays = write_inference_overlay(q.array, pred, self.output_dir / "overlays", strip_suffix(f),
                                                   self.n_overlays)  # fmt: skip
            record = {"input": str(f), "mask": str(out), "overlays": [str(o) for o in overlays],
                      "foreground_px": int(pred.sum())}  # fmt: skip
            for handler in self.handlers:
                handler({**record, "index": index, "total": len(files)})
        return self.outputs
