# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Synapse / BTCV abdominal CT preparation (fewshot_protocol.md §2.1).

Raw layout (the "Abdomen/RawData/Training" download): ``<raw>/img/img<NNNN>.nii.gz`` and
``<raw>/label/label<NNNN>.nii.gz``. Scans are re-indexed 0..N-1 in sorted file-name order; ``pid_sources.json``
records which file each pid came from.

Geometry. The reference copies the uncropped image's origin onto the border-cropped array (a 32-pixel shift of the
world geometry); here the origin follows the crop, so the written files overlay the raw scans. The arrays are the
same either way.
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
from labelless.utils import write_json_atomic

from .common import (
    as_size2d,
    check_output_dir,
    crop_border,
    finish_dataset,
    resample_image,
    resample_labels,
    resampled_size,
    window_to_range,
    write_case,
)

__all__ = ["prepare_synapse", "find_synapse_cases"]

logger = logging.getLogger("labelless.prepare")

_IMG_RE = re.compile(r"^img(?P<key>.+?)\.nii(\.gz)?$")


def find_synapse_cases(raw_dir: str | os.PathLike, require_labels: bool = True) -> list[tuple[Path, Path | None]]:
    """(image, label) file pairs in sorted image-file-name order.

    Raises:
        DataError: missing ``img`` folder, no images, or a missing label when ``require_labels``.
    """
    raw = Path(raw_dir)
    img_dir, lab_dir = raw / "img", raw / "label"
    if not img_dir.is_dir():
        raise DataError(img_dir, "no img folder (expected <raw>/img/img<NNNN>.nii.gz and <raw>/label/label<NNNN>...)")
    out = []
    for f in sorted(img_dir.iterdir(), key=lambda p: p.name):
        m = _IMG_RE.match(f.name)
        if not m:
            continue
        lab = None
        for ext in (".nii.gz", ".nii"):
            cand = lab_dir / f"label{m.group('key')}{ext}"
            if cand.exists():
                lab = cand
                break
        if lab is None and require_labels:
            raise DataError(f, f"no label file label{m.group('key')}.nii.gz in {lab_dir}")
        out.append((f, lab))
    if not out:
        raise DataError(img_dir, "no img<NNNN>.nii.gz files found")
    return out


def prepare_synapse(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    window: Sequence[float] = (-125.0, 275.0),
    border: int = 32,
    size: int | Sequence[int] = 256,
    size_rule: str = "reference",
    require_labels: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare Synapse/BTCV CT (fewshot_protocol.md §2.1) into ``image_<pid>.nii.gz``, ``label_<pid>.nii.gz``,
    ``classmap_1.json`` and ``pid_sources.json`` in ``out_dir``.

    Steps per scan: HU clip to ``window`` then min-max scale to [0, 255]; pids 0..N-1 in sorted file-name order;
    crop ``border`` px from every in-plane edge; in-plane resampling with the spacing multiplied by
    ``(n - 2 * border) / size`` (448 / 256 = 1.75 for 512² scans), linear, to exactly ``size``, origin kept; z
    spacing unchanged (slice count per ``size_rule``). Labels (ids 0..13, checked) are resampled as one-hot
    channels with linear interpolation and argmax.

    Args:
        raw_dir: folder with ``img/`` and ``label/``. Never modified.
        out_dir: output folder (created; must not be inside ``raw_dir``).
        window: HU window (low, high).
        border: pixels removed from each in-plane edge before resampling.
        size: output in-plane size (int for square, or (H, W)).
        size_rule: z slice count: ``"reference"`` (n + 1, the reference's ``int(n + 1)``; the extra slice is 0) or
            ``"round"`` (n).
        require_labels: every image must have a label file.
        overwrite: replace prepared files already in ``out_dir``.
        progress: show a progress bar.

    Returns:
        ``{"out_dir", "pids", "n_cases", "classmap"}``.

    Raises:
        DataError: missing files, label/image grid mismatch, label values outside 0..13, constant images.
    """
    out = check_output_dir(raw_dir, out_dir, overwrite)
    cases = find_synapse_cases(raw_dir, require_labels)
    label_map = get_preset("synapse").label_map
    h_out, w_out = as_size2d(size)
    lo, hi = (float(v) for v in window)
    sources = {}
    logger.info("Synapse: preparing %d scans from %s into %s", len(cases), raw_dir, out)
    for pid, (img_path, lab_path) in enumerate(tqdm(cases, desc="Synapse", disable=not progress)):
        image = read_volume(img_path)
        image = image.with_array(window_to_range(image.array, lo, hi, 255.0, source=img_path))
        label = None
        if lab_path is not None:
            raw_lab = read_volume(lab_path, is_label=True)
            if raw_lab.shape != image.shape or not np.allclose(raw_lab.affine, image.affine, atol=1e-3):
                raise DataError(lab_path, f"label grid {raw_lab.shape} differs from the image's {image.shape}")
            label = raw_lab.with_array(label_map.apply(raw_lab.array, source=lab_path).astype(np.uint8))
        image = crop_border(image, border)
        nz, ny, nx = image.shape
        sx, sy, sz = image.spacing
        spacing = (sx * nx / w_out, sy * ny / h_out, sz)
        grid = (w_out, h_out, resampled_size(nz, sz, sz, size_rule))
        image = resample_image(image, spacing, size=grid)
        if label is not None:
            label = resample_labels(crop_border(label, border), spacing, size=grid, classes=label_map.class_ids)
        write_case(out, pid, image, label, label_dtype=np.uint8)
        sources[str(pid)] = {"image": img_path.name, "label": None if lab_path is None else lab_path.name}
    write_json_atomic(out / "pid_sources.json", sources)
    classmap = finish_dataset(out, "synapse")
    return {"out_dir": str(out), "pids": list(sources), "n_cases": len(sources), "classmap": str(classmap)}
