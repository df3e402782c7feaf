# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Inference of the semi-supervised ultrasound bundle: masks at each input's own size and geometry, overlays.

Every input (PNG/JPG, NIfTI 2D, DICOM single frame; a folder or a list of files) is read as grey, resized to the
network grid (sabrnet.md §2.3), segmented with an all-ones keep-mask (§3.3), refined with the boundary heads (§8,
``refine``) and resized back to its original size (nearest). Outputs per input ``<stem>``: ``<stem>_mask.png`` (0/255)
— or ``<stem>_mask.nii.gz`` with the input's geometry for NIfTI/DICOM inputs —, ``<stem>_prob.png`` (foreground
probability, 0..255) and ``<stem>_overlay.png``; with ``pixel_size`` (mm, or a CSV ``filename,pixel size(mm)`` as
HC18's) also the head circumference of the fitted ellipse. ``inference_summary.json`` lists everything. Files are
written atomically; the output folder may not lie inside an input folder.

Reading and the network input (``preprocessing``) and resizing the label map and the probability back
(``postprocessing``) are MONAI transforms that a bundle config can spell out
(:meth:`SemiSupInferenceRunner.default_preprocessing`, :meth:`~SemiSupInferenceRunner.default_postprocessing`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RepeatChanneld
from monai.utils import convert_to_numpy, convert_to_tensor
from torch import nn

from labelless.data.images import list_images
from labelless.errors import ConfigError, DataError
from labelless.evaluation.overlays import rgb_overlay
from labelless.io.checkpoint import load_network_weights
from labelless.io.loading import LoadFiled, loaded_meta
from labelless.io.readers import read_volume
from labelless.io.suffixes import DICOM_SUFFIXES, NIFTI_SUFFIXES, has_suffix, strip_suffix
from labelless.io.writers import write_image2d, write_volume
from labelless.options import as_float, as_int
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.semisup.data import read_ultrasound
from labelless.semisup.hc import head_circumference_mm
from labelless.semisup.protocol import predict_masks
from labelless.semisup.synthetic import default_ultrasound_dir
from labelless.transforms.postprocess import Binarized
from labelless.transforms.spatial import ResizeInPlaned
from labelless.transforms.translation import TranslationInputd
from labelless.transforms.utility import LogItemd, run_transform, runner_items
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
        loaded_from: the file the caller already loaded the network's weights from (``inference.json`` loads them in
            ``initialize``), reported as ``checkpoint`` in the summary; ``ckpt_path``, when set, is reported instead.
        image_size: network grid.
        refine: boundary refinement.
        offset_scale: refinement offset in pixels.
        pixel_size: mm per pixel, or a CSV of them (head circumference output), or unset.
        device: torch device.
        preprocessing: callable on ``{"image": file}`` (a MONAI ``Compose`` of dict transforms) giving the network
            input ``[3, S, S]`` in [−1, 1] in ``"image"`` and the ``"image_meta_dict"`` of
            :class:`~labelless.io.loading.LoadFiled`. Default: :meth:`default_preprocessing`.
        postprocessing: callable on the item whose ``"pred"`` is the label map ``[S, S]`` (refined or coarse) and
            ``"prob"`` the foreground probability ``[S, S]``; it must leave the binary mask and the probability at the
            image's size in ``"pred"`` and ``"prob"``. Default: :meth:`default_postprocessing`.
        dataloader: the preprocessed items (e.g. a MONAI ``DataLoader`` over ``Dataset([{"image": file}, ...],
            transform=preprocessing)`` with ``collate_fn=no_collation``); every item must be one of ``images``.
            Default: ``preprocessing`` applied to each image in turn.
        handlers: callables called with each image's summary record plus ``index`` and ``total`` after its files
            are written; default: one :class:`~labelless.transforms.utility.LogItemd` line per image.
    """

    def __init__(
        self,
        network: nn.Module,
        images: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        loaded_from: str | os.PathLike | None = None,
        image_size: int = 128,
        refine: bool = True,
        offset_scale: float = 1.0,
        pixel_size: float | str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        preprocessing: Callable[[dict], dict] | None = None,
        postprocessing: Callable[[dict], dict] | None = None,
        dataloader: Iterable[Any] | None = None,
        handlers: Sequence[Callable[[dict], Any]] | None = None,
    ) -> None:
        self.network = network
        self.files = list_ultrasound_inputs(images)
        self.output_dir = check_output_outside_inputs(output_dir, self.files)
        self.ckpt_path = None if is_unset(ckpt_path) else Path(ckpt_path)
        self.loaded_from = None if is_unset(loaded_from) else Path(loaded_from)
        self.image_size, self.refine, self.offset_scale = (
            as_int(image_size, "image_size", 8),
            as_bool(refine, "refine"),
            as_float(offset_scale, "offset_scale", 0.0),
        )
        self.pixel_sizes = read_pixel_sizes(pixel_size)
        self.device = torch.device(device)
        self.preprocessing = preprocessing or self.default_preprocessing(self.image_size)
        self.postprocessing = postprocessing or self.default_postprocessing()
        self.dataloader = dataloader
        default = [LogItemd("{input} -> {mask} ({foreground_px} foreground pixels)", logger.name)]
        self.handlers = default if handlers is None else ([handlers] if callable(handlers) else list(handlers))
        for h in self.handlers:
            if not callable(h):
                raise ConfigError(f"handlers must be callables on an image's record, got {type(h).__name__}")

    @staticmethod
    def default_preprocessing(image_size: int = 128) -> Compose:
        """The built-in ``preprocessing`` (sabrnet.md §2.3): grey in [0, 1]
        (:func:`~labelless.semisup.data.read_ultrasound`), resized to ``image_size`` and brought to [−1, 1]
        (:class:`~labelless.transforms.translation.TranslationInputd`), three channels."""
        return Compose([
            LoadFiled("image", reader=read_ultrasound, ensure_channel_first=True),
            TranslationInputd("image", image_size),
            RepeatChanneld("image", repeats=3),
        ])  # fmt: skip

    @staticmethod
    def default_postprocessing() -> Compose:
        """The built-in ``postprocessing``: the label map back to the image's size (nearest) as a binary mask, the
        probability back to it (bilinear)."""
        return Compose([
            ResizeInPlaned("pred", size_of="image", mode="nearest"),
            Binarized("pred", threshold=0.5),
            ResizeInPlaned("prob", size_of="image", mode="bilinear"),
        ])  # fmt: skip

    def _items(self) -> Iterator[dict[Hashable, Any]]:
        """The preprocessed items: from ``dataloader``, or ``preprocessing`` applied to each image."""
        return runner_items(self.files, self.preprocessing, self.dataloader, "images")

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
        for index, item in enumerate(self._items(), 1):
            meta = loaded_meta(item, "image")
            f, (h, w) = Path(meta["filename_or_obj"]), meta["spatial_shape"][-2:]
            x = convert_to_tensor(item["image"], track_meta=False)
            masks = predict_masks(self.network, x[None].to(self.device), self.refine, self.offset_scale)
            item["pred"] = masks["refined" if self.refine else "coarse"][0].cpu()
            item["prob"] = masks["probability"][0, 1:].sum(0).cpu()
            item = run_transform(self.postprocessing, item)
            mask = np.asarray(convert_to_numpy(item["pred"])).astype(bool)
            prob_o = np.asarray(convert_to_numpy(item["prob"]))
            if mask.size != h * w or prob_o.size != h * w:
                raise DataError(f, f"postprocessing gave a mask {mask.shape} and a probability {prob_o.shape}; "
                                   f"expected the image's size {(h, w)}")  # fmt: skip
            mask, prob_o = mask.reshape(h, w), prob_o.reshape(h, w)
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
            for handler in self.handlers:
                handler({**rec, "index": index, "total": len(self.files)})
        weights = self.ckpt_path or self.loaded_from
        summary = {"checkpoint": None if weights is None else str(weights),
                   "image_size": self.image_size, "refine": self.refine, "images": records}  # fmt: skip
        write_json_atomic(self.output_dir / "inference_summary.json", summary)
        return summary
