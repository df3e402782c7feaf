# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""CHAOS T2-SPIR preparation (fewshot_protocol.md §2.2): DICOM + PNG masks -> the prepared-volume layout.

Raw layout (the CHAOS "Train_Sets/MR" download): ``<raw>/<pid>/T2SPIR/DICOM_anon/*.dcm`` and
``<raw>/<pid>/T2SPIR/Ground/*.png`` (an ``MR/`` level above the pid folders is accepted too).

Orientation. The reference converts the DICOMs with ``dcm2nii``, which stores the rows bottom-up, and flips the
PNG masks' row axis to match. Here the DICOM series is read with SimpleITK in DICOM pixel order, which is also the
PNG masks' order, so image and masks already agree; both are then flipped along the row axis (with the affine
updated, so world positions are unchanged). The result has the orientation of the distributed data (axis codes
L, A, S for an axial series) and masks aligned with the image. Flipping only the masks, as the reference
notebook's line reads on its own, would mirror them against our image.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from labelless.data.labelmap import LabelMap
from labelless.errors import DataError
from labelless.io.geometry import flip_rows as _flip_rows
from labelless.io.readers import read_image2d, read_volume
from labelless.io.sitk_reader import dicom_series_files
from labelless.io.volume import Volume
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

__all__ = ["prepare_chaos", "find_chaos_cases", "read_chaos_case", "CHAOS_PNG_LABELS"]

logger = logging.getLogger("labelless.prepare")

#: PNG grey values of the CHAOS MR ground truth -> class ids (liver, right kidney, left kidney, spleen).
CHAOS_PNG_LABELS = LabelMap({0: 0, 63: 1, 126: 2, 189: 3, 252: 4}, {0: "BG", 1: "LIVER", 2: "RK", 3: "LK", 4: "SPLEEN"})
_TRAILING_INT = re.compile(r"(\d+)(?!.*\d)")


def find_chaos_cases(raw_dir: str | os.PathLike, sequence: str = "T2SPIR") -> dict[str, Path]:
    """pid -> ``<raw>/<pid>/<sequence>`` folders that hold a ``DICOM_anon`` folder (integer pids sorted as integers).

    Raises:
        DataError: no case found.
    """
    raw = Path(raw_dir)
    found: dict[str, Path] = {}
    for base in (raw, raw / "MR"):
        if not base.is_dir():
            continue
        for d in base.iterdir():
            if (d / sequence / "DICOM_anon").is_dir():
                found[d.name] = d / sequence
        if found:
            break
    if not found:
        raise DataError(raw, f"no CHAOS cases found (expected <raw>/<pid>/{sequence}/DICOM_anon/*.dcm)")
    return {pid: found[pid] for pid in sort_ids(found)}


def _instance_number(path: Path) -> int:
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["InstanceNumber"])
    return int(ds.get("InstanceNumber", 0) or 0)


def _match_masks(dicom_files: Sequence[Path], ground: Path) -> list[Path]:
    """The PNG of each DICOM slice (in the slices' z order): same file stem, else InstanceNumber order."""
    pngs = sorted(p for p in ground.iterdir() if p.suffix.lower() == ".png")
    if len(pngs) != len(dicom_files):
        raise DataError(ground, f"{len(pngs)} PNG masks for {len(dicom_files)} DICOM slices")
    by_stem = {p.stem: p for p in pngs}
    if all(Path(f).stem in by_stem for f in dicom_files):
        return [by_stem[Path(f).stem] for f in dicom_files]
    # names differ: pair the PNGs sorted by their trailing number with the slices sorted by InstanceNumber
    logger.warning("%s: mask names do not match the DICOM names; pairing by InstanceNumber order", ground)

    def trailing(p: Path) -> int:
        m = _TRAILING_INT.search(p.stem)
        if m is None:
            raise DataError(p, "cannot pair this mask with a DICOM slice (no number in its name)")
        return int(m.group(1))

    pngs_sorted = sorted(pngs, key=trailing)
    inst = sorted(dicom_files, key=_instance_number)
    pair = {Path(d): p for d, p in zip(inst, pngs_sorted)}
    return [pair[Path(f)] for f in dicom_files]


def read_chaos_case(case_dir: str | os.PathLike, flip_rows: bool = True) -> tuple[Volume, Volume | None]:
    """Read one raw CHAOS case: the DICOM series and (if present) the stacked, mapped PNG masks.

    Args:
        case_dir: ``<raw>/<pid>/T2SPIR``.
        flip_rows: flip image and masks along the row axis (see the module docstring).

    Returns:
        ``(image, label)``; ``label`` (class ids 0..4, uint8) is ``None`` when there is no ``Ground`` folder.

    Raises:
        DataError: unreadable DICOM, mask count or size mismatch, unknown mask values (naming the PNG).
    """
    case_dir = Path(case_dir)
    dicom_dir = case_dir / "DICOM_anon"
    files = dicom_series_files(dicom_dir)
    image = read_volume(dicom_dir)
    label = None
    ground = case_dir / "Ground"
    if ground.is_dir():
        slices = []
        for png in _match_masks(files, ground):
            m = read_image2d(png, is_label=True)
            if m.shape != image.shape[1:]:
                raise DataError(png, f"mask size {m.shape} differs from the DICOM slice size {image.shape[1:]}")
            slices.append(CHAOS_PNG_LABELS.apply(m, source=png).astype(np.uint8))
        label = image.with_array(np.stack(slices, axis=0))
    else:
        logger.warning("%s: no Ground folder, image only", case_dir)
    if flip_rows:
        arr, aff = _flip_rows(image.array, image.affine)
        image = Volume(arr, aff, image.path, None, dict(image.meta))
        if label is not None:
            larr, _ = _flip_rows(label.array, label.affine)
            label = Volume(larr, aff.copy(), label.path, None, dict(label.meta))
    return image, label


def prepare_chaos(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    pids: Sequence[str | int] | None = None,
    spacing: Sequence[float] = (1.25, 1.25, 7.7),
    size: int | Sequence[int] = 256,
    clip_percentile: float = 99.5,
    flip_rows: bool = True,
    size_rule: str = "reference",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare CHAOS T2-SPIR (fewshot_protocol.md §2.2) into ``image_<pid>.nii.gz``, ``label_<pid>.nii.gz``,
    ``classmap_1.json`` in ``out_dir``.

    Steps per case: DICOM series -> volume (slices sorted by position); PNG masks stacked in the same slice order,
    63/126/189/252 -> 1/2/3/4 (other values are an error naming the PNG); row flip of image and masks; top
    ``clip_percentile`` clip; linear resampling to ``spacing`` (labels: one-hot, linear, argmax); centre crop/pad
    to ``size`` (pad: image minimum / 0). World geometry is kept correct throughout.

    Args:
        raw_dir: CHAOS MR folder with ``<pid>/T2SPIR/DICOM_anon`` and ``<pid>/T2SPIR/Ground``. Never modified.
        out_dir: output folder (created; must not be inside ``raw_dir``).
        pids: only these case ids (default: all found).
        spacing: output voxel size (x, y, z) in mm.
        size: output in-plane size (int for square, or (H, W)).
        clip_percentile: intensities above this percentile of the volume are clipped.
        flip_rows: flip image and masks along the row axis to the distributed data's orientation.
        size_rule: ``"reference"`` (``int(n * old / new + 1)`` voxels, matches the distributed data's slice counts)
            or ``"round"``.
        overwrite: replace prepared files already in ``out_dir``.
        progress: show a progress bar.

    Returns:
        ``{"out_dir", "pids", "n_cases", "classmap"}``.

    Raises:
        DataError: missing raw folder or cases, bad DICOM/PNG data, output inside the raw folder.
    """
    out = check_output_dir(raw_dir, out_dir, overwrite)
    cases = find_chaos_cases(raw_dir)
    if pids is not None:
        wanted = [str(p) for p in (pids if isinstance(pids, (list, tuple)) else [pids])]
        missing = [p for p in wanted if p not in cases]
        if missing:
            raise DataError(raw_dir, f"cases {missing} not found (available: {list(cases)})")
        cases = {p: cases[p] for p in wanted}
    logger.info("CHAOS: preparing %d cases from %s into %s", len(cases), raw_dir, out)
    for pid, case_dir in tqdm(cases.items(), desc="CHAOS", disable=not progress):
        image, label = read_chaos_case(case_dir, flip_rows=flip_rows)
        image = image.with_array(clip_top_percentile(image.array, clip_percentile))
        image = resample_image(image, spacing, size_rule=size_rule)
        image = crop_or_pad_center(image, size, pad_value=float(image.array.min()))
        if label is not None:
            label = resample_labels(label, spacing, size_rule=size_rule, classes=CHAOS_PNG_LABELS.class_ids)
            label = crop_or_pad_center(label, size, pad_value=0)
        write_case(out, pid, image, label, label_dtype=np.uint8)
        logger.info("CHAOS case %s -> %s %s", pid, image.shape, "with label" if label is not None else "(no label)")
    classmap = finish_dataset(out, "chaos")
    return {"out_dir": str(out), "pids": list(cases), "n_cases": len(cases), "classmap": str(classmap)}
