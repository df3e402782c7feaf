# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Export labelled 2D data as layout-A meta-training classes (fsms.md §1.3).

One class per (dataset, structure), read from the shared development data layouts (``../shared/data/README.md``):

=========================== =================================================================================
class                       source
=========================== =================================================================================
``chaos_liver``             ``chaos_t2spir/`` prepared volumes, axial slices, label 1
``chaos_right_kidney``      label 2
``chaos_left_kidney``       label 3
``chaos_spleen``            label 4
``brats_whole_tumour``      ``brats2015/<case>/Flair_subtrMeanDivStd.nii.gz`` axial slices, ``OTMultiClass`` > 0
``hc18_fetal_head``         ``hc18/labeled/images/<id>.png`` + ``hc18/labeled/masks/<id>.png`` (0/255)
``ddti_thyroid_nodule``     ``ddti/images/<id>.png`` + ``ddti/masks/<id>.gif`` (0/255)
=========================== =================================================================================

An instance qualifies when its structure covers at least ``min_fraction`` of the image and its resized mask is
non-empty at the 56×56 support grid. When more than ``max_instances`` qualify, a seeded choice is made: the
candidates are visited in a seeded random order (seed ``(seed, class index)``) and the first ``max_instances``
that qualify are kept, which is a uniform random subset of the qualifying ones, and only the volumes it touches are
read. Images are min–max scaled per image to [0, 255], resized bilinearly to ``size × size``, replicated to RGB and
written as JPEG (quality 95); masks are resized bilinearly, thresholded at 0.5 and written as PNG 0/255. Each class
is written into a temporary folder and moved into place; ``export_manifest.json`` records the provenance of every
instance.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelless.data.images import binarize_mask, find_mask, list_images, mask_on_grid, resize_image, resize_mask
from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import ConfigError, DataError
from labelless.evaluation.overlays import to_uint8
from labelless.io.readers import read_image2d, read_volume
from labelless.utils import LRUCache, sort_ids, write_json_atomic

__all__ = ["EXPORT_SOURCES", "EXPORT_CLASSES", "export_classes"]

logger = logging.getLogger(__name__)

#: Source name -> folder under the data root.
EXPORT_SOURCES = {"chaos": "chaos_t2spir", "brats": "brats2015", "hc18": "hc18", "ddti": "ddti"}
#: Source name -> exported class names.
EXPORT_CLASSES = {
    "chaos": ("chaos_liver", "chaos_right_kidney", "chaos_left_kidney", "chaos_spleen"),
    "brats": ("brats_whole_tumour",),
    "hc18": ("hc18_fetal_head",),
    "ddti": ("ddti_thyroid_nodule",),
}
_CHAOS_LABELS = {"chaos_liver": 1, "chaos_right_kidney": 2, "chaos_left_kidney": 3, "chaos_spleen": 4}
_GRID = 56


@dataclass
class _Candidate:
    """One possible instance: its id in the exported class and how to load (image 2D float, mask 2D bool)."""

    pid: str
    source: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "item"


# ---------------------------------------------------------------------------------------------- sources
def _chaos_candidates(folder: Path) -> dict[str, list[_Candidate]]:
    ds = PreparedVolumeDataset(folder, preset="chaos")
    labelled = [pid for pid in ds.pids if ds.has_label(pid)]
    if not labelled:
        raise DataError(folder, "no label_<id>.nii.gz files: nothing to export")

    def load_scan(pid: str) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(ds.load_image(pid).array), np.asarray(ds.load_label(pid).array)

    cache = LRUCache(4)
    out: dict[str, list[_Candidate]] = {}
    for name, cid in _CHAOS_LABELS.items():
        cands = []
        for pid in labelled:
            for z in ds.class_slices(cid, pid):

                def load(pid: str = pid, z: int = z, cid: int = cid) -> tuple[np.ndarray, np.ndarray]:
                    img, lab = cache.get_or_load(pid, lambda p=pid: load_scan(p))
                    return img[z], lab[z] == cid

                cands.append(_Candidate(f"{pid}_z{z:03d}", f"{ds.image_path(pid).name}[z={z}]", load))
        out[name] = cands
    return out


def _brats_candidates(folder: Path) -> dict[str, list[_Candidate]]:
    cases = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        flair = sorted(case.glob("*Flair*.nii*")) or sorted(case.glob("*flair*.nii*"))
        label = sorted(case.glob("OTMultiClass*.nii*")) or sorted(case.glob("*seg*.nii*"))
        if flair and label:
            cases.append((case.name, flair[0], label[0]))
        else:
            logger.info("%s: no FLAIR image and OTMultiClass label; case skipped", case)
    if not cases:
        raise DataError(folder, "no case folder with a FLAIR image (*Flair*.nii.gz) and OTMultiClass label")
    paths = {name: (f, lab) for name, f, lab in cases}

    def load_case(name: str) -> tuple[np.ndarray, np.ndarray]:
        f, lab = paths[name]
        img, seg = read_volume(f), read_volume(lab, is_label=True)
        if img.shape != seg.shape:
            raise DataError(lab, f"label grid {seg.shape} does not match the FLAIR grid {img.shape} ({f})")
        return np.asarray(img.array), np.rint(np.asarray(seg.array)) > 0

    cache = LRUCache(2)
    cands = []
    for name, f, _ in cases:
        n_z = _nifti_depth(f)
        for z in range(n_z):

            def load(name: str = name, z: int = z) -> tuple[np.ndarray, np.ndarray]:
                img, wt = cache.get_or_load(name, lambda n=name: load_case(n))
                return img[z], wt[z]

            cands.append(_Candidate(f"{_safe_id(name)}_z{z:03d}", f"{name}/{f.name}[z={z}]", load))
    return {"brats_whole_tumour": cands}


def _nifti_depth(path: Path) -> int:
    """Number of axial slices (third voxel axis) of a NIfTI file, from its header."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as e:  # noqa: BLE001 - any nibabel failure becomes a DataError naming the file
        raise DataError(path, f"cannot read NIfTI header ({type(e).__name__}: {e})") from e
    if len(shape) < 3:
        raise DataError(path, f"expected a 3D volume, got shape {shape}")
    return int(shape[2])


def _pair_candidates(img_dir: Path, msk_dir: Path, cls: str) -> dict[str, list[_Candidate]]:
    if not img_dir.is_dir():
        raise DataError(img_dir, "image folder does not exist")
    if not msk_dir.is_dir():
        raise DataError(msk_dir, "mask folder does not exist")
    files = list_images(img_dir)
    cands, seen = [], set()
    for stem in sort_ids(files):
        mask = find_mask(msk_dir, stem)
        if mask is None:
            raise DataError(files[stem], f"no mask for this image in {msk_dir}")

        def load(img: Path = files[stem], msk: Path = mask) -> tuple[np.ndarray, np.ndarray]:
            image = read_image2d(img, mode="L")
            m = binarize_mask(read_image2d(msk, is_label=True), msk)
            if image.shape != m.shape:
                raise DataError(msk, f"mask size {m.shape} differs from the image size {image.shape} ({img})")
            return image, m

        pid = _safe_id(stem)
        while pid in seen:  # e.g. "12_1(2)" and "12_1_2"
            pid += "_"
        seen.add(pid)
        cands.append(_Candidate(pid, f"{files[stem].parent.name}/{files[stem].name}", load))
    if not cands:
        raise DataError(img_dir, "no image files")
    return {cls: cands}


def _candidates(source: str, folder: Path) -> dict[str, list[_Candidate]]:
    if source == "chaos":
        return _chaos_candidates(folder)
    if source == "brats":
        return _brats_candidates(folder)
    if source == "hc18":
        return _pair_candidates(folder / "labeled" / "images", folder / "labeled" / "masks", "hc18_fetal_head")
    return _pair_candidates(folder / "images", folder / "masks", "ddti_thyroid_nodule")


# ---------------------------------------------------------------------------------------------- export
def _select(
    cands: list[_Candidate], rng: np.random.Generator, max_instances: int, min_fraction: float, size: int
) -> Iterator[tuple[_Candidate, np.ndarray, np.ndarray]]:
    """Qualifying (candidate, image uint8 RGB, mask uint8 0/255), in a seeded random order, at most max_instances."""
    kept = 0
    grid = max(1, round(size * _GRID / 224))
    for i in rng.permutation(len(cands)):
        if kept >= max_instances:
            return
        cand = cands[int(i)]
        image, mask = cand.load()
        if not np.all(np.isfinite(image)):
            raise DataError(cand.source, "image contains NaN or infinite values")
        if float(mask.mean()) < min_fraction:
            continue
        m = resize_mask(torch.from_numpy(mask.astype(np.float32))[None], size)
        if not bool(mask_on_grid(m, grid).any()):
            continue
        grey = resize_image(torch.from_numpy(to_uint8(image) / 255.0)[None], size)[0].numpy()
        rgb = np.repeat(np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
        kept += 1
        yield cand, rgb, (m[0].numpy() > 0).astype(np.uint8) * 255


def _write_class(out: Path, name: str, items: list[tuple[_Candidate, np.ndarray, np.ndarray]]) -> None:
    """Write one class into a temporary folder and move it into place (replacing an older export)."""
    from labelless.io.writers import write_image2d, write_jpeg

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    os.chmod(tmp, 0o755)
    try:
        for cand, rgb, mask in items:
            write_jpeg(rgb, tmp / f"{cand.pid}.jpg")
            write_image2d(mask, tmp / f"{cand.pid}.png", dtype=np.uint8)
        dest = out / name
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out))
            os.replace(dest, old / name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_classes(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    sources: Sequence[str] = ("chaos", "brats", "hc18", "ddti"),
    max_instances: int = 10,
    min_fraction: float = 0.01,
    size: int = 224,
    seed: int = 0,
) -> dict[str, int]:
    """Export labelled 2D slices/images of the shared data as layout-A classes (fsms.md §1.3).

    Args:
        data_root: the shared data folder (with ``chaos_t2spir/``, ``brats2015/``, ``hc18/``, ``ddti/``).
        out_dir: destination folder of the classes (``<out_dir>/<class>/<id>.jpg`` + ``<id>.png``).
        sources: which of ``"chaos"``, ``"brats"``, ``"hc18"``, ``"ddti"`` to export; leave a source out to skip it.
        max_instances: cap on the instances per class (seeded choice when more qualify).
        min_fraction: minimum fraction of the image covered by the structure.
        size: output image size.
        seed: seed of the choice.

    Returns:
        class name -> number of instances written (classes with no qualifying instance are not written; they
        appear with 0 and a warning).

    Raises:
        DataError: ``data_root`` or a requested source folder is missing (the message names it), or a source file
            is unreadable or inconsistent.
        ConfigError: unknown source, ``max_instances < 1``, ``min_fraction`` outside [0, 1), ``size < 8``.

    Examples::

        summary = export_classes("../shared/data", "exported_classes", sources=("chaos", "hc18"), max_instances=10)
        # {"chaos_liver": 10, "chaos_right_kidney": 10, ..., "hc18_fetal_head": 10}
    """
    root, out = Path(data_root), Path(out_dir)
    srcs = [str(s).lower() for s in ([sources] if isinstance(sources, str) else sources)]
    unknown = [s for s in srcs if s not in EXPORT_SOURCES]
    if unknown:
        raise ConfigError(f"unknown export source(s) {unknown}; known: {sorted(EXPORT_SOURCES)}")
    if not srcs:
        raise ConfigError("no export source given")
    max_instances, min_fraction, size, seed = int(max_instances), float(min_fraction), int(size), int(seed)
    if max_instances < 1:
        raise ConfigError(f"max_instances must be >= 1, got {max_instances}")
    if not 0.0 <= min_fraction < 1.0:
        raise ConfigError(f"min_fraction must be in [0, 1), got {min_fraction}")
    if size < 8:
        raise ConfigError(f"size must be >= 8, got {size}")
    if not root.is_dir():
        raise DataError(root, "data folder does not exist")
    folders = {s: root / EXPORT_SOURCES[s] for s in srcs}
    for s, folder in folders.items():
        if not folder.is_dir():
            raise DataError(folder, f"source folder of {s!r} is missing (leave {s!r} out of `sources` to skip it)")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, int] = {}
    provenance: dict[str, list[dict[str, Any]]] = {}
    all_classes = [c for s in EXPORT_SOURCES for c in EXPORT_CLASSES[s]]
    for s in dict.fromkeys(srcs):
        for name, cands in _candidates(s, folders[s]).items():
            rng = np.random.default_rng([seed, all_classes.index(name)])
            items = list(_select(cands, rng, max_instances, min_fraction, size))
            items = [items[i] for i in _natural_order([it[0].pid for it in items])]
            summary[name] = len(items)
            provenance[name] = [{"id": c.pid, "source": c.source} for c, _, _ in items]
            if not items:
                warnings.warn(f"{folders[s]}: no instance of {name!r} covers >= {min_fraction:.1%}; class not written",
                              stacklevel=2)  # fmt: skip
                continue
            if len(items) < 2:
                warnings.warn(f"{name}: only {len(items)} instance(s); a 1-shot episode needs 2", stacklevel=2)
            _write_class(out, name, items)
            logger.info("exported %s: %d instance(s) from %d candidate(s)", name, len(items), len(cands))
    params = {"data_root": str(root), "sources": srcs, "max_instances": max_instances, "min_fraction": min_fraction,
              "size": size, "seed": seed}  # fmt: skip
    manifest = {"params": params, "classes": summary, "instances": provenance}
    previous = out / "export_manifest.json"
    if previous.is_file():  # keep the record of classes exported earlier into the same folder
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
            manifest["classes"] = {**old.get("classes", {}), **summary}
            manifest["instances"] = {**old.get("instances", {}), **provenance}
        except (OSError, ValueError, AttributeError):
            logger.warning("%s: unreadable previous export manifest replaced", previous)
    write_json_atomic(previous, manifest)
    return summary


def _natural_order(ids: list[str]) -> list[int]:
    """Indices that sort ``ids`` naturally (as :func:`labelless.utils.sort_ids`)."""
    order = sort_ids(ids)
    pos = {pid: i for i, pid in enumerate(ids)}
    return [pos[pid] for pid in order]
