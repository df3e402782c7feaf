# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Inference of the semi-supervised ultrasound bundle: masks at each input's own size and geometry, overlays.

Every input (PNG/JPG, NIfTI 2D, DICOM single frame; a folder or a list of files) is read as grey, resized to the
network grid (sabrnet.md §2.3), segmented with an all-ones keep-mask (§3.3), refined with the boundary heads (§8,
``refine``) and resized back to its original size (nearest). Outputs per input ``<stem>``: ``<stem>_mask.png`` (0/255)
— or ``<stem>_mask.nii.gz`` with the input's geometry for NIfTI/DICOM inputs —, ``<stem>_prob.png`` (foreground
probability, 0..255) and ``<stem>_overlay.png``; with ``pixel_size`` (mm, or a CSV ``filename,pixel size(mm)`` as
HC18's) also the head circumference of the fitted ellipse. ``inference_summary.json`` lists everything. Files are
written atomically; the output folder may not lie inside an input folder.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelless.data.images import list_images
from labelless.errors import ConfigError, DataError
from labelless.evaluation.overlays import rgb_overlay
from labelless.io.checkpoint import load_network_weights
from labelless.io.readers import read_volume
from labelless.io.suffixes import DICOM_SUFFIXES, NIFTI_SUFFIXES, has_suffix, strip_suffix
from labelless.io.writers import write_image2d, write_volume
from labelless.options import as_float, as_int
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.semisup.data import load_ultrasound, ultrasound_size
from labelless.semisup.hc import head_circumference_mm
from labelless.semisup.protocol import predict_masks
from labelless.semisup.synthetic import default_ultrasound_dir
from labelless.utils import as_bool, atomic_path, is_unset, write_json_atomic

__all__ = ["inference_inputs", "list_ultrasound_inputs", "read_pixel_sizes", "SemiSupInferenceRunner"]

logger = logging.getLogger("labelless.semisup")


def list_ultrasound_inputs(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The input files: every image of a folder (PNG/JPG/NIfTI/DICOM, sorted) or the given files.

    Raises:
        DataError: nothing given, a missing file, or a folder without images (named).
    """
    if isinstance(images, str | os.PathLike) and Path(images).is_dir():
        folder = Path(images)
        files = sorted(list_images(folder).values())
        files += sorted(p for p in folder.iterdir() if p.is_file() and p not in files and
                        (has_suffix(p, NIFTI_SUFFIXES) or has_suffix(p, DICOM_SUFFIXES)))  # fmt: skip
        if not files:
            raise DataError(folder, "no PNG/JPG/NIfTI/DICOM image in the folder")
        return files
    files = [Path(images)] if isinstance(images, str | os.PathLike) else [Path(f) for f in images]
    if not files:
        raise DataError("images", "no input image given")
    for f in files:
        if not f.is_file():
            raise DataError(f, "input image does not exist")
    return files


def inference_inputs(
    images: str | os.PathLike | Sequence[str | os.PathLike] | None = None, n_default: int = 4
) -> str | os.PathLike | Sequence[str | os.PathLike]:
    """``images`` as given, or (unset) the first ``n_default`` unlabelled images of the embedded synthetic
    ultrasound set (so that inference.json runs without data)."""
    if not is_unset(images):
        return images
    folder = default_ultrasound_dir("head") / "unlabeled"
    return sorted(list_images(folder).values())[: int(n_default)]


def read_pixel_sizes(pixel_size: float | str | os.PathLike | None) -> float | dict[str, float] | None:
    """A pixel size in mm (a number) or ``{file name: mm}`` from a CSV whose first two columns are the file name and
    the pixel size (HC18's ``pixel_size_and_hc.csv``); ``None`` when unset."""
    if is_unset(pixel_size):
        return None
    try:
        value = float(pixel_size)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = None
    if value is not None:
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"pixel_size must be a positive number of mm, got {pixel_size!r}")
        return value
    p = Path(pixel_size)  # type: ignore[arg-type]
    if not p.is_file():
        raise DataError(p, "pixel-size CSV does not exist")
    out = {}
    with p.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if i == 0 or len(row) < 2:
                continue
            try:
                out[row[0].strip()] = float(row[1])
            except ValueError as exc:
                raise DataError(p, f"row {i + 1}: pixel size {row[1]!r} is not a number") from exc
    return out


class SemiSupInferenceRunner:
    """Segment ultrasound images with a trained SABR-Net (see the module docstring).

    Args:
        network: the SABRNet (moved to ``device``).
        images: a folder of images or a list of files.
        output_dir: destination (created; not inside an input folder).
        ckpt_path: weights to load (unset: the network as given).
        image_size: network grid.
        refine: boundary refinement.
        offset_scale: refinement offset in pixels.
        pixel_size: mm per pixel, or a CSV of them (head circumference output), or unset.
        device: torch device.
    """

    def __init__(
        self,
        network: nn.Module,
        images: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        image_size: int = 128,
        refine: bool = True,
        offset_scale: float = 1.0,
        pixel_size: float | str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network = network
        self.files = list_ultrasound_inputs(images)
        self.output_dir = check_output_outside_inputs(output_dir, self.files)
        self.ckpt_path = None if is_unset(ckpt_path) else Path(ckpt_path)
        self.image_size, self.refine, self.offset_scale = (
            as_int(image_size, "image_size", 8),
            as_bool(refine, "refine"),
            as_float(offset_scale, "offset_scale", 0.0),
        )
        self.pixel_sizes = read_pixel_sizes(pixel_size)
        self.device = torch.device(device)

    def _pixel_size(self, f: Path) -> float | None:
        if isinstance(self.pixel_sizes, dict):
            return self.pixel_sizes.get(f.name)
        return self.pixel_sizes

    @locked_output
    def run(self) -> dict[str, Any]:
        """Segment every image; returns the summary (also written as ``inference_summary.json``)."""
        if self.ckpt_path is not None:
            load_network_weights(self.network, self.ckpt_path, self.device)
        self.network.to(self.device).eval()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for f in self.files:
            x = load_ultrasound(f, self.image_size)
            h, w = ultrasound_size(f)
            masks = predict_masks(self.network, x[None].to(self.device), self.refine, self.offset_scale)
            label = masks["refined" if self.refine else "coarse"][0].cpu()
            prob = masks["probability"][0, 1:].sum(0).cpu()
            mask = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].numpy() > 0.5
            prob_o = F.interpolate(prob[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
            stem = strip_suffix(f)
            rec: dict[str, Any] = {"input": str(f), "size": [h, w], "foreground_px": int(mask.sum())}
            if has_suffix(f, NIFTI_SUFFIXES) or has_suffix(f, DICOM_SUFFIXES):
                ref = read_volume(f, ndim=2)
                rec["mask"] = str(write_volume(mask[None].astype(np.uint8), self.output_dir / f"{stem}_mask.nii.gz",
                                               reference=ref, dtype=np.uint8))  # fmt: skip
            else:
                rec["mask"] = str(write_image2d(mask.astype(np.uint8) * 255, self.output_dir / f"{stem}_mask.png",
                                                dtype=np.uint8))  # fmt: skip
            rec["prob"] = str(write_image2d(np.round(np.clip(prob_o, 0, 1) * 255).astype(np.uint8),
                                            self.output_dir / f"{stem}_prob.png", dtype=np.uint8))  # fmt: skip
            grey = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            overlay = self.output_dir / f"{stem}_overlay.png"
            with atomic_path(overlay) as tmp:
                rgb_overlay((grey.clamp(-1, 1) + 1.0) / 2.0, prediction=mask).save(tmp, format="PNG")
            rec["overlay"] = str(overlay)
            spacing = self._pixel_size(f)
            if spacing is not None:
                hc = head_circumference_mm(mask, spacing)
                rec["pixel_size_mm"] = float(spacing)
                rec["head_circumference_mm"] = None if hc is None or math.isnan(hc) else float(hc)
            records.append(rec)
            logger.info("%s -> %s (%d foreground pixels)", f, rec["mask"], rec["foreground_px"])
        summary = {"checkpoint": None if self.ckpt_path is None else str(self.ckpt_path),
                   "image_size": self.image_size, "refine": self.refine, "images": records}  # fmt: skip
        write_json_atomic(self.output_dir / "inference_summary.json", summary)
        return summary
