# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Lesion masks of new images from a weak-supervision model (``evaluator`` of the CLTNet bundle's inference.json).

For every image: the probability map M (the A→B generator's mask, resized to the image), background / corner zeroing
and the binarisation of cltnet.md §6, written at the input's size and geometry:

- PNG/JPG input → ``<stem>_prob.png`` (M × 255, 8-bit), ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png``;
- 2D NIfTI input → ``<stem>_prob.nii.gz`` (float32) and ``<stem>_mask.nii.gz`` (uint8) with the input's affine,
  plus the overlay PNG.

``inference_summary.json`` lists the files and options. Outputs are written atomically; the output folder must not lie
inside the input folder, and files this runner wrote are never read back as inputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelless.data.images import list_images, load_rgb
from labelless.errors import DataError
from labelless.evaluation.overlays import rgb_overlay
from labelless.io.readers import read_volume
from labelless.io.suffixes import NIFTI_SUFFIXES, strip_suffix
from labelless.io.writers import write_image2d, write_volume
from labelless.paths import check_output_outside_inputs, locked_output
from labelless.transforms.postprocess import SoftMaskPostprocess
from labelless.utils import as_bool, atomic_path, is_unset, path_suffix, write_json_atomic
from labelless.weak.domains import WEAK_IMAGE_SUFFIXES
from labelless.weak.workflow import load_weak_weights, soft_mask

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
        ckpt_path: weights to load (``None``: the network as given).
        image_size: network input side.
        postprocess, zero_black_background, zero_corners, crf_alpha: :class:`SoftMaskPostprocess` options.
        device: torch device.

    Raises:
        ConfigError: output folder inside an input folder.
        DataError: missing or unreadable inputs, missing checkpoint (named).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        images: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        image_size: int = 256,
        postprocess: str = "threshold",
        zero_black_background: bool | str = True,
        zero_corners: bool | str = False,
        crf_alpha: float = 1.0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network = network
        self.files = list_weak_inputs(images)
        self.output_dir = check_output_outside_inputs(output_dir, self.files)
        self.ckpt_path = None if is_unset(ckpt_path) else Path(ckpt_path)
        self.image_size = int(image_size)
        self.post = SoftMaskPostprocess(postprocess, as_bool(zero_black_background, "zero_black_background"),
                                        as_bool(zero_corners, "zero_corners"), crf_alpha)  # fmt: skip
        self.device = torch.device(device)

    @locked_output
    def run(self) -> dict[str, Any]:
        """Segment every image; returns the summary (also written as ``inference_summary.json``)."""
        if self.ckpt_path is not None:
            load_weak_weights(self.network, self.ckpt_path, self.device)
        self.network.to(self.device).eval()
        records = []
        for f in self.files:
            image = load_rgb(f, size=None)
            soft = soft_mask(self.network, image, self.image_size, self.device).numpy()
            soft, binary = self.post(soft, image * 2.0 - 1.0)
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
            logger.info("%s -> %s (%d lesion pixels)", f, rec["mask"], rec["foreground_px"])
        summary = {"checkpoint": None if self.ckpt_path is None else str(self.ckpt_path), "image_size": self.image_size,
                   "postprocess": self.post.mode, "zero_black_background": self.post.zero_black_background,
                   "zero_corners": self.post.zero_corners, "images": records}  # fmt: skip
        write_json_atomic(self.output_dir / "inference_summary.json", summary)
        return summary
