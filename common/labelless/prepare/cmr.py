# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""MS-CMRSeg 2019 bSSFP cardiac MRI preparation (fewshot_protocol.md §2.3, following Q-Net).

Raw layout: ``patient<N>_C0.nii.gz`` with ``patient<N>_C0_manual.nii.gz`` beside it (in ``<raw>`` or one folder
level below). Labels keep the raw coding 200 (LV myocardium), 500 (LV blood pool), 600 (RV); the remap to 1/2/3
happens at load time with the ``cmr`` preset's label map.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from labelless.data.presets import get_preset
from labelless.errors import DataError
from labelless.io.readers import read_volume
from labelless.utils import sort_ids

from .common import (
    check_output_dir,
    clip_top_percentile,
    crop_or_pad_center,
    finish_dataset,
    resample_image,
    resample_labels,
    write_case,
)

__all__ = ["prepare_cmr", "find_cmr_cases"]

logger = logging.getLogger("labelless.prepare")

_C0_RE = re.compile(r"^patient(?P<pid>\d+)_C0\.nii(\.gz)?$", re.IGNORECASE)


def find_cmr_cases(raw_dir: str | os.PathLike, require_labels: bool = True) -> dict[str, tuple[Path, Path | None]]:
    """pid -> (``patient<N>_C0.nii.gz``, ``patient<N>_C0_manual.nii.gz`` or ``None``), pids sorted as integers.

    Raises:
        DataError: no scans, a pid found twice, or a missing label when ``require_labels``.
    """
    raw = Path(raw_dir)
    found: dict[str, tuple[Path, Path | None]] = {}
    for f in sorted([*raw.glob("patient*_C0.nii*"), *raw.glob("*/patient*_C0.nii*")]):
        m = _C0_RE.match(f.name)
        if not m:
            continue
        pid = str(int(m.group("pid")))
        if pid in found:
            raise DataError(f, f"patient {pid} found twice ({found[pid][0]})")
        lab = None
        for ext in (".nii.gz", ".nii"):
            cand = f.with_name(f"patient{m.group('pid')}_C0_manual{ext}")
            if cand.exists():
                lab = cand
                break
        if lab is None and require_labels:
            raise DataError(f, "no matching patient<N>_C0_manual.nii.gz label file")
        found[pid] = (f, lab)
    if not found:
        raise DataError(raw, "no patient<N>_C0.nii.gz files found")
    return {pid: found[pid] for pid in sort_ids(found)}


def prepare_cmr(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    spacing: Sequence[float] = (1.25, 1.25, 7.99),
    size: int | Sequence[int] = 256,
    clip_percentile: float = 99.5,
    size_rule: str = "reference",
    require_labels: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare MS-CMRSeg bSSFP (fewshot_protocol.md §2.3) into ``image_<pid>.nii.gz``, ``label_<pid>.nii.gz``
    (raw values 0/200/500/600, int16) and ``classmap_1.json`` in ``out_dir``.

    Steps per scan: clip above the ``clip_percentile`` percentile; linear resampling to ``spacing`` (labels:
    one-hot, linear, argmax over 0/200/500/600); centre crop (or pad with the image minimum / 0) to ``size``.

    Args:
        raw_dir: folder with ``patient<N>_C0.nii.gz`` and ``patient<N>_C0_manual.nii.gz``. Never modified.
        out_dir: output folder (created; must not be inside ``raw_dir``).
        spacing: output voxel size (x, y, z) in mm.
        size: output in-plane size (int for square, or (H, W)).
        clip_percentile: intensities above this percentile of the volume are clipped.
        size_rule: ``"reference"`` (``int(n * old / new + 1)`` voxels) or ``"round"``.
        require_labels: every scan must have a manual label file.
        overwrite: replace prepared files already in ``out_dir``.
        progress: show a progress bar.

    Returns:
        ``{"out_dir", "pids", "n_cases", "classmap"}``.

    Raises:
        DataError: missing files, label/image grid mismatch, label values other than 0/200/500/600.
    """
    out = check_output_dir(raw_dir, out_dir, overwrite)
    cases = find_cmr_cases(raw_dir, require_labels)
    label_map = get_preset("cmr").label_map
    raw_values = sorted(label_map.values)
    logger.info("MS-CMRSeg: preparing %d scans from %s into %s", len(cases), raw_dir, out)
    for pid, (img_path, lab_path) in tqdm(cases.items(), desc="MS-CMRSeg", disable=not progress):
        image = read_volume(img_path)
        label = None
        if lab_path is not None:
            raw_lab = read_volume(lab_path, is_label=True)
            if raw_lab.shape != image.shape or not np.allclose(raw_lab.affine, image.affine, atol=1e-3):
                raise DataError(lab_path, f"label grid {raw_lab.shape} differs from the image's {image.shape}")
            label_map.apply(raw_lab.array, source=lab_path)  # validates: only 0/200/500/600
            label = raw_lab.with_array(np.rint(raw_lab.array).astype(np.int16))
        image = image.with_array(clip_top_percentile(image.array, clip_percentile))
        image = resample_image(image, spacing, size_rule=size_rule)
        image = crop_or_pad_center(image, size, pad_value=float(image.array.min()))
        if label is not None:
            label = resample_labels(label, spacing, size_rule=size_rule, classes=raw_values)
            label = crop_or_pad_center(label, size, pad_value=0)
        write_case(out, pid, image, label, label_dtype=np.int16)
    classmap = finish_dataset(out, "cmr")
    return {"out_dir": str(out), "pids": list(cases), "n_cases": len(cases), "classmap": str(classmap)}
