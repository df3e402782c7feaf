# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Lesion masks of new images from a weak-supervision model (``evaluator`` of the CLTNet bundle's inference.json).

For every image: the probability map M (the A→B generator's mask, resized to the image), background / corner zeroing
and the binarisation of cltnet.md §6, written at the input's size and geometry:

- PNG/JPG input → ``<stem>_prob.png`` (M × 255, 8-bit), ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png``;
- 2D NIfTI input → ``<stem>_prob.nii.gz`` (float32) and ``<stem>_mask.nii.gz`` (uint8) with the input's affine,
  plus the overlay PNG.

``inference_summary.json`` lists the files and options. Outputs are written atomically; the output folder must not lie
inside the input folder, and files this runner wrote are never read back as inputs.

Reading and the network input (``preprocessing``: RGB in [0, 1], resized to ``image_size`` and brought to [−1, 1]) and
the steps after the network (``postprocessing``: M resized back to the image and clipped to [0, 1], then
:class:`~labelless.transforms.postprocess.SoftMaskPostprocessd`) are MONAI transforms that a bundle config can spell
out (:meth:`WeakSegmentationInferenceRunner.default_preprocessing`,
:meth:`~WeakSegmentationInferenceRunner.default_postprocessing`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose
from monai.utils import convert_to_numpy, convert_to_tensor

from labelless.data.images import list_images, load_rgb
from labelless.errors import ConfigError, DataError
from labelless.evaluation.overlays import rgb_overlay
from labelless.io.loading import LoadFiled, loaded_meta
from labelless.io.readers import read_volume
from labelless.io.suffixes import NIFTI_SUFFIXES, strip_suffix
from labelless.io.writers import write_image2d, write_volume
from labelless.options import as_float
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.transforms.postprocess import INTENSITY_PRIORS, POSTPROCESS_MODES, SoftMaskPostprocessd
from labelless.transforms.spatial import ResizeInPlaned
from labelless.transforms.translation import TranslationInputd
from labelless.transforms.utility import LogItemd, run_transform, runner_items
from labelless.utils import as_bool, atomic_path, path_suffix, write_json_atomic
from labelless.weak.domains import WEAK_IMAGE_SUFFIXES
from labelless.weak.workflow import (
    _segmenter,
    describe_weights,
    gate_mask,
    load_weak_model,
    patch_input_size,
    weight_files,
)

__all__ = ["OUTPUT_SUFFIXES", "list_weak_inputs", "WeakSegmentationInferenceRunner"]

logger = logging.getLogger("labelless.weak")

#: name endings of the files this runner writes (never taken as inputs)
OUTPUT_SUFFIXES = ("_prob", "_mask", "_overlay")


def list_weak_inputs(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The input images: a folder's images (PNG/JPG/BMP/TIFF, 2D NIfTI; files named ``*_prob``, ``*_mask``,
    ``*_overlay`` skipped) or a list of files.

    Raises:
        DataError: a missing folder/file, or no image.
    """
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if p.is_dir():
            files = [f for i, f in list_images(p, WEAK_IMAGE_SUFFIXES).items() if not i.endswith(OUTPUT_SUFFIXES)]
            if not files:
                raise DataError(p, f"no images ({', '.join(WEAK_IMAGE_SUFFIXES)}) in the folder")
            return files
        files = [p]
    else:
        files = [Path(f) for f in images]
    if not files:
        raise DataError("images", "no input image given")
    for f in files:
        if not f.is_file():
            raise DataError(f, "input image does not exist")
    return files


class WeakSegmentationInferenceRunner:
    """Segment images with a trained weak-supervision model (see the module docstring).

    Args:
        network: the CLTNet (moved to ``device``).
        images: a folder of images or a list of files.
        output_dir: destination (created; not inside an input folder).
        ckpt_path: weights to load (``None``: the network as given), or a list of weight files: their ensemble, the
            mean of the members' masks (:func:`~labelless.weak.workflow.load_weak_model`; e.g. several seeds).
        loaded_from: the file (or, for an ensemble, the list of files) the caller already loaded the network's weights
            from (``inference.json`` loads them in ``initialize``), reported as ``checkpoint`` in the summary;
            ``ckpt_path``, when set, is reported instead. ``None`` with no ``ckpt_path``: the summary says
            ``"checkpoint": null`` (the network as built).
        image_size: network input side.
        postprocess, zero_black_background, zero_corners, crf_alpha, invert_mask, intensity_prior: options of the
            default ``postprocessing`` (:class:`~labelless.transforms.postprocess.SoftMaskPostprocess`), reported in the
            summary.
        flip_tta: average the mask over the four flips of each input
            (:func:`~labelless.weak.workflow.gate_mask`), reported in the summary.
        patch_zoom: for a model trained on crops (``lesion_crops``; not in the spec): each image is resized to
            ``image_size · patch_zoom`` and read with sliding ``image_size`` windows
            (:func:`~labelless.weak.workflow.patch_input_size`); 1 (default): the whole image is one input.
        color_constancy: shades-of-grey power applied to each whole image before the network
            (:func:`~labelless.transforms.translation.shades_of_grey`; 0, the spec: off), reported in the summary;
            the value the training domains were built with.
        device: torch device.
        preprocessing: callable on ``{"image": file}`` (a MONAI ``Compose`` of dict transforms) giving the network
            input ``[3, S, S]`` in ``"image"`` and the ``"image_meta_dict"`` of
            :class:`~labelless.io.loading.LoadFiled`. Default: :meth:`default_preprocessing`.
        postprocessing: callable on the item whose ``"prob"`` is the generator's mask ``[1, S, S]``; it must leave the
            soft mask and the binary mask at the image's size in ``"prob"`` and ``"pred"``. Default:
            :meth:`default_postprocessing`.
        dataloader: the preprocessed items (e.g. a MONAI ``DataLoader`` over ``Dataset([{"image": file}, ...],
            transform=preprocessing)`` with ``collate_fn=no_collation``); every item must be one of ``images``.
            Default: ``preprocessing`` applied to each image in turn.
        handlers: callables called with each image's summary record plus ``index`` and ``total`` after its files
            are written; default: one :class:`~labelless.transforms.utility.LogItemd` line per image.

    Raises:
        ConfigError: output folder inside an input folder.
        DataError: missing or unreadable inputs, missing checkpoint (named).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        images: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        loaded_from: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        image_size: int = 256,
        postprocess: str = "threshold",
        zero_black_background: bool | str = True,
        zero_corners: bool | str = False,
        crf_alpha: float = 1.0,
        invert_mask: bool | str = False,
        flip_tta: bool | str = False,
        patch_zoom: float = 1.0,
        intensity_prior: str = "none",
        color_constancy: float = 0.0,
        device: str | torch.device = "cpu",
        preprocessing: Callable[[dict], dict] | None = None,
        postprocessing: Callable[[dict], dict] | None = None,
        dataloader: Iterable[Any] | None = None,
        handlers: Sequence[Callable[[dict], Any]] | None = None,
    ) -> None:
        self.network = network
        self.files = list_weak_inputs(images)
        self.output_dir = check_output_outside_inputs(output_dir, self.files)
        self.ckpt_paths = weight_files(ckpt_path)
        self.model = network  # the network, or the ensemble run() builds from several weight files
        self.loaded_from = weight_files(loaded_from)
        self.image_size = int(image_size)
        if postprocess not in POSTPROCESS_MODES:
            raise ConfigError(f"postprocess must be one of {POSTPROCESS_MODES}, got {postprocess!r}")
        self.postprocess = postprocess
        self.zero_black_background = as_bool(zero_black_background, "zero_black_background")
        self.zero_corners = as_bool(zero_corners, "zero_corners")
        self.crf_alpha = float(crf_alpha)
        self.invert_mask = as_bool(invert_mask, "invert_mask")
        if intensity_prior not in INTENSITY_PRIORS:
            raise ConfigError(f"intensity_prior must be one of {INTENSITY_PRIORS}, got {intensity_prior!r}")
        self.intensity_prior = intensity_prior
        self.flip_tta = as_bool(flip_tta, "flip_tta")
        self.input_size = patch_input_size(self.image_size, patch_zoom)  # checks the value
        self.patch_zoom = float(patch_zoom)
        self.color_constancy = as_float(color_constancy, "color_constancy", 0.0)
        self.device = torch.device(device)
        self.preprocessing = preprocessing or self.default_preprocessing(self.input_size, self.color_constancy)
        self.postprocessing = postprocessing or self.default_postprocessing(
            postprocess,
            self.zero_black_background,
            self.zero_corners,
            self.crf_alpha,
            self.invert_mask,
            self.intensity_prior,
        )
        self.dataloader = dataloader
        default = [LogItemd("{input} -> {mask} ({foreground_px} lesion pixels)", logger.name)]
        self.handlers = default if handlers is None else ([handlers] if callable(handlers) else list(handlers))
        for h in self.handlers:
            if not callable(h):
                raise ConfigError(f"handlers must be callables on an image's record, got {type(h).__name__}")

    @staticmethod
    def default_preprocessing(image_size: int = 256, color_constancy: float = 0.0) -> Compose:
        """The built-in ``preprocessing``: read as RGB in [0, 1] (:func:`~labelless.data.images.load_rgb`), then
        :class:`~labelless.transforms.translation.TranslationInputd` (optional colour constancy, resize to
        ``image_size``, [0, 1] → [−1, 1])."""
        return Compose([LoadFiled("image", reader=load_rgb, size=None),
                        TranslationInputd("image", image_size, color_constancy)])  # fmt: skip

    @staticmethod
    def default_postprocessing(
        postprocess: str = "threshold",
        zero_black_background: bool | str = True,
        zero_corners: bool | str = False,
        crf_alpha: float = 1.0,
        invert_mask: bool | str = False,
        intensity_prior: str = "none",
    ) -> Compose:
        """The built-in ``postprocessing``: the generator's mask bilinear to the image's size and clipped to [0, 1]
        (``"prob"``), then background/corner zeroing and binarisation (``"pred"``)."""
        return Compose([
            ResizeInPlaned("prob", size_of="image", clip=(0.0, 1.0)),
            SoftMaskPostprocessd("prob", image_key="image", output_key="pred", mode=postprocess,
                                 zero_black_background=zero_black_background, zero_corners=zero_corners,
                                 crf_alpha=crf_alpha, invert=invert_mask, intensity_prior=intensity_prior),
        ])  # fmt: skip

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The lesion probability map ``[1, S, S]`` (on ``device``) of one network input ``[3, S, S]`` in [−1, 1]:
        the A→B generator's mask (averaged over the four flips with ``flip_tta``)."""
        window = self.image_size if self.patch_zoom != 1.0 else None
        return gate_mask(_segmenter(self.model), image[None].to(self.device), self.flip_tta, window)[0]

    def _items(self) -> Iterator[dict[Hashable, Any]]:
        """The preprocessed items: from ``dataloader``, or ``preprocessing`` applied to each image."""
        return runner_items(self.files, self.preprocessing, self.dataloader, "images")

    @locked_output
    def run(self) -> dict[str, Any]:
        """Segment every image; returns the summary (also written as ``inference_summary.json``)."""
        self.model = load_weak_model(self.network, self.ckpt_paths, self.device).to(self.device).eval()
        records = []
        for index, item in enumerate(self._items(), 1):
            meta = loaded_meta(item, "image")
            f, image = Path(meta["filename_or_obj"]), meta["original"]
            item["prob"] = self.predict(convert_to_tensor(item["image"], track_meta=False))
            item = run_transform(self.postprocessing, item)
            soft = np.asarray(convert_to_numpy(item["prob"]))
            binary = np.asarray(convert_to_numpy(item["pred"])).astype(bool)
            h, w = image.shape[-2:]
            if soft.size != h * w or binary.size != h * w:
                raise DataError(f, f"postprocessing gave a soft mask {soft.shape} and a mask {binary.shape}; "
                                   f"expected the image's size {(h, w)}")  # fmt: skip
            soft, binary = soft.reshape(h, w), binary.reshape(h, w)
            stem = strip_suffix(f)
            rec: dict[str, Any] = {"input": str(f), "foreground_px": int(binary.sum())}
            if path_suffix(f) in NIFTI_SUFFIXES:
                ref = read_volume(f, ndim=2)
                rec["prob"] = str(write_volume(soft[None].astype(np.float32), self.output_dir / f"{stem}_prob.nii.gz",
                                               reference=ref))  # fmt: skip
                rec["mask"] = str(write_volume(binary[None].astype(np.uint8), self.output_dir / f"{stem}_mask.nii.gz",
                                               reference=ref, dtype=np.uint8))  # fmt: skip
            else:
                rec["prob"] = str(write_image2d(np.round(soft * 255).astype(np.uint8),
                                                self.output_dir / f"{stem}_prob.png", dtype=np.uint8))  # fmt: skip
                rec["mask"] = str(write_image2d(binary.astype(np.uint8) * 255, self.output_dir / f"{stem}_mask.png",
                                                dtype=np.uint8))  # fmt: skip
            overlay = self.output_dir / f"{stem}_overlay.png"
            with atomic_path(overlay) as tmp:
                rgb_overlay(image, prediction=binary).save(tmp, format="PNG")
            rec["overlay"] = str(overlay)
            records.append(rec)
            for handler in self.handlers:
                handler({**rec, "index": index, "total": len(self.files)})
        weights = self.ckpt_paths or self.loaded_from
        summary = {"checkpoint": describe_weights(weights), "image_size": self.image_size,
                   "postprocess": self.postprocess, "zero_black_background": self.zero_black_background,
                   "zero_corners": self.zero_corners, "crf_alpha": self.crf_alpha,
                   "intensity_prior": self.intensity_prior, "invert_mask": self.invert_mask, "flip_tta": self.flip_tta,
                   "patch_zoom": self.patch_zoom, "color_constancy": self.color_constancy,
                   "images": records}  # fmt: skip
        write_json_atomic(self.output_dir / "inference_summary.json", summary)
        return summary
