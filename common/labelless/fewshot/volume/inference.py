# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Few-shot inference on user volumes (``evaluator`` of the volume bundles' inference.json): query listing and
:class:`FewShotVolumeInferenceRunner`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from labelless.errors import ConfigError, DataError
from labelless.io.readers import read_volume
from labelless.io.suffixes import VOLUME_SUFFIXES, has_suffix, strip_suffix
from labelless.io.volume import Volume
from labelless.io.writers import write_volume
from labelless.options import as_float, as_int, as_int_list
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.transforms.intensity import zscore
from labelless.utils import as_bool, is_unset

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
    value define the class; every query volume is segmented (GT-free chunking, fewshot_protocol §6.5) and a binary
    mask is written per query in the query's geometry, plus PNG overlays.

    Queries of another in-plane size than the network input are resampled to ``image_size`` slice by slice
    (bilinear) and the prediction is resampled back (nearest) — documented fallback; queries whose in-plane size is
    not a multiple of 8 are handled the same way. Volumes with NaN/inf are refused, and so is a support label whose
    grid or affine differs from its image's. The options, the query list and the output folder (not inside the
    folder of a query or of the support) are checked when the runner is built, before any work.

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
        self.label_value = as_float(label_value, "label_value")
        self.normalization = str(normalization)
        if self.normalization not in ("volume_zscore", "fixed"):
            raise ConfigError(f"normalization must be 'volume_zscore' or 'fixed', got {self.normalization!r}")
        self.norm_stats = None
        if not is_unset(norm_stats):
            pair = list(norm_stats) if isinstance(norm_stats, (Sequence, np.ndarray)) else []
            if isinstance(norm_stats, (str, bytes)) or len(pair) != 2:
                raise ConfigError(f"norm_stats must be [mean, std] of the training scans, got {norm_stats!r}")
            self.norm_stats = (as_float(pair[0], "norm_stats mean"),
                               as_float(pair[1], "norm_stats std", 0.0, lo_open=True))  # fmt: skip
        if self.normalization == "fixed" and self.norm_stats is None:
            raise ConfigError("normalization 'fixed' needs norm_stats=(mean, std) of the training scans")
        self.n_chunks, self.n_shots = as_int(n_chunks, "n_chunks", 1), as_int(n_shots, "n_shots", 1)
        self.image_size = None if is_unset(image_size) else as_int(image_size, "image_size", 8)
        self.batch_size = as_int(batch_size, "batch_size", 1)
        self.predict_outside_extent = as_bool(predict_outside_extent, "predict_outside_extent")
        self.extent_margin = as_int(extent_margin, "extent_margin", 0)
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
        from labelless.fewshot.volume.protocol import support_shot_slices

        img = read_volume(self.support_image, ndim=None)
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
    @locked_output
    def run(self) -> list[Path]:
        """Segment every query; returns the written mask files."""
        from labelless.evaluation.overlays import write_inference_overlay
        from labelless.fewshot.volume.protocol import segment_volume, support_relative_chunks, support_relative_slices

        files = self.queries
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
            out = self.output_dir / f"{strip_suffix(f)}_pred{self.output_suffix}"
            write_volume(pred, out, reference=q, dtype=np.uint8)
            self.outputs.append(out)
            if self.n_overlays > 0:
                write_inference_overlay(q.array, pred, self.output_dir / "overlays", strip_suffix(f), self.n_overlays)
            logger.info("%s -> %s (%d foreground voxels)", f, out, int(pred.sum()))
        return self.outputs
