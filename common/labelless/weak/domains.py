# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Domains A (lesion) and B (normal) for weakly supervised segmentation from image-level labels (cltnet.md §1).

The only training supervision is the domain of an image. Pixel labels, where a source has them, are written for the
test / validation images only and are never read for training.

- :func:`volume_domain_slices`: axial slices of one labelled volume → domain A (lesion area ≥ ``min_lesion_px``) and
  domain B (no lesion pixel), inside a body/brain mask covering ≥ ``min_body_fraction`` of the largest one (§1.2).
- :func:`write_volume_domains`: many volumes (BraTS case folders, or a prepared layout ``image_<id>`` /
  ``label_<id>``), split **by case** (seeded) into train (A/B slices, no masks) and test (A slices with masks + B).
- :func:`lesion_free_patches`: corner crops of lesion images, without any pixel label (§1.2 "ISIC → B patches").
- :func:`write_image_domains`: lesion images (e.g. ISIC) → train A, B patches of the train images, test A with masks.
- :func:`write_tagged_domains`: a CSV of image-level tags (``image,label[,split][,mask]``) → the same folders.
- :class:`WeakDomainFolders`: the reference folder layout (``trainA/``, ``trainB/``, ``testA/images`` +
  ``testA/labels``, ``val/images`` + ``val/labels``, ``testB/``), folder names configurable, PNG/JPG and NIfTI slices.

Written layout (the reference's, read back by :class:`WeakDomainFolders`)::

    <out>/trainA/<id>.png              lesion images (no masks)
    <out>/trainB/<id>.png              normal images
    <out>/testA/images/<id>.png        lesion images of held-out cases
    <out>/testA/labels/<id>_segmentation.png   their 0/255 masks (evaluation only)
    <out>/testB/<id>.png               normal images of held-out cases
    <out>/manifest.json                what was written, from which case/slice, with which options

Outputs are written into a fresh folder (refused when it exists and is not empty, or lies inside an input folder);
each file atomically.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelless.data.images import find_image_mask_pairs, list_images, load_mask, read_rgb
from labelless.errors import ConfigError, DataError
from labelless.io.readers import read_volume
from labelless.io.suffixes import IMAGE_2D_SUFFIXES, NIFTI_SUFFIXES, strip_suffix
from labelless.io.writers import write_image2d
from labelless.options import as_float, as_int
from labelless.transforms.translation import shades_of_grey
from labelless.utils import as_bool, sort_ids, write_json_atomic

__all__ = [
    "WEAK_IMAGE_SUFFIXES",
    "DomainSlice",
    "volume_domain_slices",
    "find_volume_cases",
    "split_cases",
    "write_volume_domains",
    "corner_slices",
    "lesion_free_patches",
    "grid_crops",
    "grid_crop_slices",
    "lesion_removed_image",
    "write_image_domains",
    "write_tagged_domains",
    "WeakDomainFolders",
]

logger = logging.getLogger(__name__)

#: Images of weak-domain folders: 2D images and 2D NIfTI slices.
WEAK_IMAGE_SUFFIXES = IMAGE_2D_SUFFIXES + NIFTI_SUFFIXES
_LESION_TAGS = {"a", "1", "lesion", "disease", "abnormal", "tumour", "tumor", "positive", "yes", "true"}
_NORMAL_TAGS = {"b", "0", "normal", "healthy", "negative", "no", "false"}


# ---------------------------------------------------------------------------------------------- outputs
def _fresh_output(out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """Check ``out_dir`` before any work: not inside (or equal to) an input folder, empty or absent."""
    out = Path(out_dir).resolve()
    for item in inputs:
        src = Path(item).resolve()
        src_dir = src if src.is_dir() else src.parent
        if out == src_dir or src_dir in out.parents:
            raise ConfigError(f"output folder {out} lies inside the input folder {src_dir}; choose another one")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} exists and is not empty; give a new folder")
    return out


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """Write into a hidden sibling folder and rename it onto ``out`` only when everything was written: a failed run
    leaves no half-written output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty (checked by _fresh_output)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _to_uint8_rgb(image01: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) floats in [0, 1] → (H, W, 3) uint8."""
    a = np.clip(np.asarray(image01, dtype=np.float64), 0.0, 1.0)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.round(a * 255.0).astype(np.uint8)


def _resize(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize (H, W) or (H, W, C) to ``size × size``: ``bilinear`` (images) or ``nearest`` (labels)."""
    a = np.asarray(array, dtype=np.float32)
    chw = torch.from_numpy(a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0).copy())[None]
    if tuple(chw.shape[-2:]) == (size, size):
        return a
    kw = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(chw, size=(size, size), mode=mode, **kw)[0].numpy()
    return out[0] if a.ndim == 2 else np.moveaxis(out, 0, -1)


# ---------------------------------------------------------------------------------------------- volumes
@dataclass
class DomainSlice:
    """One axial slice assigned to a domain: ``image`` (size, size, 3) uint8, ``mask`` (size, size) bool."""

    case: str
    z: int
    domain: str
    image: np.ndarray
    mask: np.ndarray
    lesion_px: int
    body_fraction: float

    @property
    def name(self) -> str:
        return f"{self.case}_z{self.z:03d}"


def volume_domain_slices(
    image: np.ndarray,
    lesion: np.ndarray,
    body: np.ndarray | None = None,
    case: str = "case",
    min_body_fraction: float = 0.3,
    min_lesion_px: int = 100,
    size: int = 256,
    source: str | os.PathLike | None = None,
    orientation: str = "reference",
) -> list[DomainSlice]:
    """The domain-A and domain-B axial slices of one volume (cltnet.md §1.2).

    1. Slices whose body (brain) area is ≥ ``min_body_fraction`` of the volume's largest body slice.
    2. A: lesion area ≥ ``min_lesion_px`` (at the stored resolution); B: no lesion pixel; slices in between are not
       used.
    3. Intensity: inside the body, clipped to the volume's [0.5, 99.5] percentiles of body voxels and scaled to
       [0, 1]; outside the body 0. Resized to ``size`` (bilinear; masks nearest) and replicated to RGB.

    Args:
        image: (Z, H, W) intensities (e.g. BraTS FLAIR).
        lesion: (Z, H, W) lesion labels; any value > 0 is lesion (BraTS whole tumour).
        body: (Z, H, W) body/brain mask; ``None``: the voxels that differ from the image's minimum.
        case: case id (slice names ``<case>_z<zzz>``).
        min_body_fraction, min_lesion_px, size: the rules above.
        source: the file, for error messages.
        orientation: ``"reference"`` (default): rows are the file's first voxel axis, as in the NIfTI array order the
            reference's PNGs (and the CLTNet sample folders) were written in; ``"display"``: rows are the second voxel
            axis (the :class:`~labelless.io.Volume` ``[z, y, x]`` view).

    Returns:
        the kept slices in z order, each with its domain ``"A"`` or ``"B"``.

    Raises:
        DataError: shapes differ, NaN intensities inside the body, or no body voxel.
    """
    img = np.asarray(image, dtype=np.float32)
    les = np.asarray(lesion) > 0
    if img.ndim != 3 or les.shape != img.shape:
        raise DataError(source, f"image {img.shape} and lesion labels {les.shape} must be (Z, H, W) of one shape")
    bod = (img != np.nanmin(img)) if body is None else np.asarray(body) > 0
    if bod.shape != img.shape:
        raise DataError(source, f"body mask {bod.shape} differs from the image {img.shape}")
    if not bod.any():
        raise DataError(source, "the body (brain) mask is empty")
    inside = img[bod]
    if not np.all(np.isfinite(inside)):
        raise DataError(source, "NaN or infinite intensities inside the body mask")
    if not 0.0 <= float(min_body_fraction) <= 1.0 or int(min_lesion_px) < 1 or int(size) < 8:
        raise ConfigError(
            f"need 0 <= min_body_fraction <= 1, min_lesion_px >= 1, size >= 8; got {min_body_fraction}, "
            f"{min_lesion_px}, {size}"
        )
    if orientation not in ("reference", "display"):
        raise ConfigError(f"orientation must be 'reference' or 'display', got {orientation!r}")
    lo, hi = (float(v) for v in np.percentile(inside, [0.5, 99.5]))
    scale = hi - lo if hi > lo else 1.0
    area = bod.reshape(bod.shape[0], -1).sum(axis=1)
    les_area = les.reshape(les.shape[0], -1).sum(axis=1)
    keep = area >= float(min_body_fraction) * float(area.max())
    out = []
    for z in np.flatnonzero(keep):
        n_les = int(les_area[z])
        domain = "A" if n_les >= int(min_lesion_px) else ("B" if n_les == 0 else None)
        if domain is None:
            continue
        sl = np.where(bod[z], np.clip((img[z] - lo) / scale, 0.0, 1.0), 0.0)
        lz = les[z].astype(np.float32)
        if orientation == "reference":
            sl, lz = sl.T, lz.T
        rgb = _to_uint8_rgb(_resize(sl, int(size), "bilinear"))
        msk = _resize(lz, int(size), "nearest") > 0.5
        out.append(DomainSlice(str(case), int(z), domain, rgb, msk, n_les, float(area[z] / area.max())))
    return out


def _first(folder: Path, patterns: Sequence[str]) -> Path | None:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def find_volume_cases(root: str | os.PathLike) -> dict[str, dict[str, Path | None]]:
    """The labelled volumes of ``root``: BraTS-layout case folders or a prepared layout.

    - BraTS layout: one folder per case holding ``*Flair*.nii*`` (or ``*flair*``), ``*brainmask*.nii*`` (optional)
      and ``*OTMultiClass*.nii*`` / ``*seg*.nii*`` (lesion labels, > 0 = lesion).
    - Prepared layout: ``image_<id>.nii.gz`` + ``label_<id>.nii.gz`` (> 0 = lesion; body = voxels above the minimum).

    Returns:
        case id -> ``{"image", "label", "body"}`` paths (``body`` may be ``None``), ids in natural order.

    Raises:
        DataError: ``root`` missing, or no case found (the message lists the two layouts).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "volume folder does not exist")
    cases: dict[str, dict[str, Path | None]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image = _first(sub, ["*[Ff]lair*.nii.gz", "*[Ff]lair*.nii", "*FLAIR*.nii.gz"])
        label = _first(sub, ["*OTMultiClass*.nii*", "*[Ss]eg*.nii*", "*[Ll]abel*.nii*"])
        if image is not None and label is not None:
            cases[sub.name] = {"image": image, "label": label, "body": _first(sub, ["*brainmask*.nii*"])}
    for img in sorted(root.glob("image_*.nii*")):
        pid = strip_suffix(img)[len("image_") :]
        label = _first(root, [f"label_{pid}.nii.gz", f"label_{pid}.nii"])
        if label is not None:
            cases[pid] = {"image": img, "label": label, "body": None}
    if not cases:
        raise DataError(
            root,
            "no labelled volumes: expected case folders with *Flair*.nii.gz + *OTMultiClass*/*seg*.nii.gz (BraTS "
            "layout) or image_<id>.nii.gz + label_<id>.nii.gz (prepared layout)",
        )
    return {k: cases[k] for k in sort_ids(cases)}


def split_cases(ids: Sequence[str], n_test: int = 1, n_val: int = 0, seed: int = 0) -> dict[str, list[str]]:
    """A seeded split **by case**: ``{"train": [...], "val": [...], "test": [...]}`` (each sorted).

    Raises:
        ConfigError: negative counts, or no case left for training.
    """
    ids = sort_ids(ids)
    n_test, n_val = int(n_test), int(n_val)
    if n_test < 0 or n_val < 0 or n_test + n_val >= len(ids):
        raise ConfigError(f"{len(ids)} case(s) cannot give {n_test} test + {n_val} val case(s) and keep one to train")
    order = [ids[i] for i in np.random.default_rng(int(seed)).permutation(len(ids))]
    test, val = sort_ids(order[:n_test]), sort_ids(order[n_test : n_test + n_val])
    return {"train": [i for i in ids if i not in test and i not in val], "val": val, "test": test}


def _write_png(image: np.ndarray, out: Path, rel: str) -> str:
    """Write ``image`` as ``out/rel`` (PNG, atomically); returns ``rel`` (manifests hold paths relative to the
    output folder)."""
    write_image2d(image, out / rel, dtype=np.uint8)
    return rel


def write_volume_domains(
    volumes_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_test: int = 1,
    n_val: int = 0,
    seed: int = 0,
    min_body_fraction: float = 0.3,
    min_lesion_px: int = 100,
    size: int = 256,
    orientation: str = "reference",
) -> dict[str, Any]:
    """Build the weak-domain folders from labelled volumes (BraTS case folders or a prepared layout).

    Training cases give ``trainA`` / ``trainB`` slices without masks; test (and val) cases give ``testA`` (``val``)
    images with ``_segmentation`` masks and ``testB`` (``valB``) normal slices. The split is by case, never by slice.
    ``min_body_fraction``, ``min_lesion_px``, ``size`` and ``orientation`` are those of :func:`volume_domain_slices`.

    Returns:
        the manifest (also written as ``<out_dir>/manifest.json``): counts per folder, the split, the options and one
        record per written slice.

    Raises:
        ConfigError: the output folder exists and is not empty, lies inside ``volumes_dir``, or a bad split.
        DataError: unreadable or inconsistent volumes (naming the file).
    """
    cases = find_volume_cases(volumes_dir)
    final = _fresh_output(out_dir, [volumes_dir])
    with _staged(final) as out:
        split = split_cases(list(cases), n_test, n_val, seed)
        records: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for part, ids in split.items():
            for cid in ids:
                paths = cases[cid]
                img = read_volume(paths["image"])
                lab = read_volume(paths["label"], is_label=True)
                if lab.shape != img.shape:
                    raise DataError(paths["label"], f"label shape {lab.shape} differs from the image {img.shape}")
                body = None
                if paths["body"] is not None:
                    body = read_volume(paths["body"], is_label=True).array
                    if body.shape != img.shape:
                        raise DataError(paths["body"], f"brain mask {body.shape} differs from the image {img.shape}")
                slices = volume_domain_slices(img.array, lab.array, body, cid, min_body_fraction, min_lesion_px, size,
                                              source=paths["image"], orientation=orientation)  # fmt: skip
                for s in slices:
                    if part == "train":
                        folder = "trainA" if s.domain == "A" else "trainB"
                        rec = {"image": _write_png(s.image, out, f"{folder}/{s.name}.png")}
                    elif s.domain == "A":
                        folder = "testA" if part == "test" else "val"
                        rec = {"image": _write_png(s.image, out, f"{folder}/images/{s.name}.png"),
                               "label": _write_png(s.mask.astype(np.uint8) * 255, out,
                                                   f"{folder}/labels/{s.name}_segmentation.png")}  # fmt: skip
                    else:
                        folder = "testB" if part == "test" else "valB"
                        rec = {"image": _write_png(s.image, out, f"{folder}/{s.name}.png")}
                    counts[folder] = counts.get(folder, 0) + 1
                    records.append({**rec, "folder": folder, "case": cid, "z": s.z, "domain": s.domain,
                                    "lesion_px": s.lesion_px, "body_fraction": round(s.body_fraction, 4)})  # fmt: skip
                logger.info("%s (%s): %d A, %d B slices", cid, part, sum(s.domain == "A" for s in slices),
                            sum(s.domain == "B" for s in slices))  # fmt: skip
        if not counts.get("trainA") or not counts.get("trainB"):
            n_a, n_b = counts.get("trainA", 0), counts.get("trainB", 0)
            raise DataError(volumes_dir, f"the training cases gave {n_a} lesion and {n_b} normal slices; both domains "
                                         "need images")  # fmt: skip
        manifest = {"source": str(Path(volumes_dir).resolve()), "split": split, "counts": counts,
                    "options": {"n_test": n_test, "n_val": n_val, "seed": seed, "min_body_fraction": min_body_fraction,
                                "min_lesion_px": min_lesion_px, "size": size, "orientation": orientation},
                    "slices": records}  # fmt: skip
        write_json_atomic(out / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------------------------- 2D images
PATCH_SCALES = ("resize", "image")
#: What ``trainB`` of :func:`write_image_domains` holds.
NORMAL_SOURCES = ("corners", "inpaint", "both", "grid")
#: The skin surfaces :func:`lesion_removed_image` can paint with.
INPAINT_FILLS = ("quadratic", "planar")
#: The :func:`lesion_removed_image` options ``write_image_domains(inpaint_options=...)`` passes on.
INPAINT_OPTIONS = ("max_area", "min_area", "min_contrast", "max_border", "margin", "fill", "paint_corners")
#: Which crops of the ``lesion_crops`` grid :func:`write_image_domains` puts in ``trainA``.
A_CROPS = ("lesion", "all")


def _check_patch_scale(patch_scale: str) -> None:
    if patch_scale not in PATCH_SCALES:
        raise ConfigError(f"patch_scale must be one of {PATCH_SCALES}, got {patch_scale!r}")


def _patch_at_image_scale(crop: np.ndarray, image_hw: tuple[int, int], size: int) -> np.ndarray:
    """A corner crop shrunk by the factors that take its image to ``size × size`` (so its skin has the scale of the
    domain-A images), then mirror-tiled to ``size × size`` (reflection: no seams)."""
    h, w = image_hw
    ph = max(int(round(crop.shape[0] * size / h)), 2)
    pw = max(int(round(crop.shape[1] * size / w)), 2)
    chw = torch.from_numpy(np.moveaxis(np.asarray(crop, dtype=np.float32), -1, 0).copy())[None]
    small = np.moveaxis(F.interpolate(chw, size=(ph, pw), mode="area")[0].numpy(), 0, -1)
    reps_h, reps_w = -(-size // ph), -(-size // pw)
    rows = [small if i % 2 == 0 else small[::-1] for i in range(reps_h)]
    col = np.concatenate(rows, axis=0)
    tiles = [col if j % 2 == 0 else col[:, ::-1] for j in range(reps_w)]
    return np.ascontiguousarray(np.concatenate(tiles, axis=1)[:size, :size])


def corner_slices(shape: Sequence[int], side_fraction: float = 0.3) -> dict[str, tuple[slice, slice]]:
    """Row/column slices of the four corner crops (``tl``, ``tr``, ``bl``, ``br``) of side
    ``side_fraction · min(H, W)`` of an image of ``shape`` ``(H, W, ...)`` (cltnet.md §1.2)."""
    h, w = int(shape[0]), int(shape[1])
    s = max(int(round(float(side_fraction) * min(h, w))), 1)
    top, bottom, left, right = slice(0, s), slice(h - s, h), slice(0, s), slice(w - s, w)
    return {"tl": (top, left), "tr": (top, right), "bl": (bottom, left), "br": (bottom, right)}


def grid_crops(rgb: np.ndarray, n: int, side_fraction: float = 0.3, size: int = 256) -> list[tuple[str, np.ndarray]]:
    """``n × n`` evenly spaced square crops of side ``side_fraction · min(H, W)`` of an image, each resized to
    ``size`` like the corner patches of :func:`lesion_free_patches` (``patch_scale="resize"``): lesion views at the
    B patches' magnification (not in cltnet.md §1.2, whose A images are the whole images). The first and last rows
    and columns of crops touch the frame, so the corner crops are among them.

    Returns:
        ``(name, (size, size, 3) uint8)`` with names ``r<i>c<j>``.
    """
    a = np.asarray(rgb, dtype=np.float32)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise DataError(None, f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return [(name, _to_uint8_rgb(_resize(a[rows, cols], int(size), "bilinear")))
            for name, (rows, cols) in grid_crop_slices(a.shape, n, side_fraction).items()]  # fmt: skip


def grid_crop_slices(shape: Sequence[int], n: int, side_fraction: float = 0.3) -> dict[str, tuple[slice, slice]]:
    """Row/column slices of the ``n × n`` crops of :func:`grid_crops` in an image of ``shape`` ``(H, W, ...)``, by
    crop name ``r<i>c<j>`` (the diagnostics read a crop's pixels in the source image's mask with them)."""
    if int(n) < 1:
        raise ConfigError(f"the crop grid needs n >= 1, got {n!r}")
    if not 0.0 < float(side_fraction) <= 1.0:
        raise ConfigError(f"side_fraction must be in (0, 1], got {side_fraction!r}")
    h, w = int(shape[0]), int(shape[1])
    s = max(int(round(float(side_fraction) * min(h, w))), 1)
    tops = np.linspace(0, h - s, int(n)).round().astype(int) if n > 1 else [(h - s) // 2]
    lefts = np.linspace(0, w - s, int(n)).round().astype(int) if n > 1 else [(w - s) // 2]
    return {f"r{i}c{j}": (slice(int(t), int(t) + s), slice(int(left), int(left) + s))
            for i, t in enumerate(tops) for j, left in enumerate(lefts)}  # fmt: skip


def lesion_free_patches(
    rgb: np.ndarray,
    side_fraction: float = 0.3,
    min_mean: float = 0.2,
    max_std: float = 0.05,
    size: int = 256,
    patch_scale: str = "resize",
) -> list[tuple[str, np.ndarray]]:
    """Candidate lesion-free patches of a lesion image, made without pixel labels (cltnet.md §1.2).

    The four corner crops of side ``side_fraction · min(H, W)``; a crop is rejected when its mean intensity is below
    ``min_mean`` (vignetting) or the standard deviation of its colours is above ``max_std`` (structure: possibly
    lesion). The default ``max_std`` 0.05 was chosen on the CLTNet ISIC validation samples (32 corners of 8 lesion
    images, masks read for this calibration only): corners with a colour std ≤ 0.05 held at most 5 % lesion pixels,
    those above it up to 39 %. Corners can still contain lesion; the docs warn about it.

    Args:
        rgb: (H, W, 3) floats in [0, 1].
        side_fraction, min_mean, max_std: the rules above.
        size: output side.
        patch_scale: ``"resize"`` (spec §1.2: the crop resized to ``size``, i.e. magnified about 1 / side_fraction
            times relative to the A images) or ``"image"`` (the crop kept at the scale of the A images, which are
            the whole image resized to ``size``, and mirror-tiled to ``size``: B skin then has A's texture scale).

    Returns:
        ``(corner, (size, size, 3) uint8)`` for the kept corners (``tl``, ``tr``, ``bl``, ``br``).
    """
    a = np.asarray(rgb, dtype=np.float32)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise DataError(None, f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    if not 0.0 < float(side_fraction) <= 0.5:
        raise ConfigError(f"side_fraction must be in (0, 0.5], got {side_fraction!r}")
    _check_patch_scale(patch_scale)
    h, w = a.shape[:2]
    out = []
    for name, (rows, cols) in corner_slices(a.shape, side_fraction).items():
        crop = a[rows, cols]
        if not _lesion_free(crop, min_mean, max_std):
            continue
        if patch_scale == "image":
            patch = _patch_at_image_scale(crop, (h, w), int(size))
        else:
            patch = _resize(crop, int(size), "bilinear")
        out.append((name, _to_uint8_rgb(patch)))
    return out


def _lesion_free(patch: np.ndarray, min_mean: float, max_std: float) -> bool:
    """The lesion-free rules of :func:`lesion_free_patches` on an RGB patch of floats in [0, 1]: mean intensity
    ≥ ``min_mean`` and mean colour standard deviation ≤ ``max_std``."""
    return float(patch.mean()) >= float(min_mean) and float(patch.reshape(-1, 3).std(axis=0).mean()) <= float(max_std)


def _corner_triangles(h: int, w: int) -> np.ndarray:
    """True in the four corner triangles that ``zero_corners`` (cltnet.md §6) blanks, scaled to ``(h, w)``."""
    from labelless.transforms.postprocess import zero_corners

    return zero_corners(np.ones((h, w))) == 0


def lesion_removed_image(
    rgb: np.ndarray,
    size: int = 256,
    max_area: float = 0.65,
    min_area: float = 0.005,
    min_contrast: float = 0.25,
    max_border: float = 0.05,
    margin: float = 0.05,
    seed: int = 0,
    fill: str = "quadratic",
    paint_corners: bool = False,
) -> np.ndarray | None:
    """A lesion image with its darkest blob painted over by the surrounding skin: a "normal" image at the field of
    view of the A images, made **without pixel labels** (not in cltnet.md §1.2, whose B images are corner crops).

    The blob is the largest connected component of the pixels darker than the image's Otsu threshold of grey
    intensity, computed outside the corner triangles of §6 and the black frame (near-black pixels connected to the
    image border). It is extended over the lesion's lighter rim (the connected pixels darker than the median of the
    skin away from it by more than 3 robust standard deviations), its holes are filled, and it is grown by
    ``margin · size`` pixels. It is replaced by a quadratic (``fill="quadratic"``) or planar (``"planar"``) surface per
    channel fitted to the skin away from it (the illumination gradient), plus the fine texture (the residual of a
    Gaussian blur) of skin copied from elsewhere in the image, blended over a soft edge. The image is skipped (None)
    when the blob

    - touches more than ``max_border`` of the image border (a lesion cut by the frame, or a frame-filling one:
      no skin to paint it with),
    - covers more than ``max_area`` or less than ``min_area`` of the valid pixels, or
    - is not darker than the skin around it by ``min_contrast`` (relative mean grey): Otsu then split a uniform
      image, e.g. within a lesion.

    The defaults were set on the 13 images of the ISIC-2016 val split and the 8 CLTNet ISIC ``val`` samples (masks
    read for this calibration only). With them, 8 of those 21 images are kept, and on average 2 % of the pixels a
    kept image leaves unchanged are lesion (up to 11 %): the Otsu rule is the intensity baseline's, and where it misses
    part of the lesion, B keeps that part; the docs say so.

    Args:
        rgb: (H, W, 3) floats in [0, 1].
        size: output side (the image is resized to ``size × size`` first, like the A images).
        max_area, min_area, min_contrast, max_border: the skip rules above.
        margin: growth of the blob as a fraction of ``size``.
        seed: seed of where the texture is copied from (the same seed gives the same image).
        fill: ``"quadratic"`` (the default, for blobs with skin all round) or ``"planar"``: a plane, clipped per
            channel to the 2nd–98th percentiles of the far skin. A quadratic extrapolates to white or black where a
            relaxed ``max_border`` lets the blob reach the frame; the clipped plane does not.
        paint_corners: also paint the blob inside the corner triangles (not the black frame). Off by default: the
            triangles are blanked at inference (``zero_corners``); with a relaxed ``max_border`` a lesion reaching a
            corner would otherwise stay in the "normal" image.

    Returns:
        ``(size, size, 3)`` uint8, or None when the image is skipped.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    a = np.asarray(rgb, dtype=np.float32)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise DataError(None, f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    if not 0.0 <= float(min_area) < float(max_area) <= 1.0:
        raise ConfigError(f"need 0 <= min_area < max_area <= 1, got {min_area!r}, {max_area!r}")
    if fill not in INPAINT_FILLS:
        raise ConfigError(f"fill must be one of {INPAINT_FILLS}, got {fill!r}")
    paint_corners = as_bool(paint_corners, "paint_corners")
    img = _resize(a, int(size), "bilinear").astype(np.float64)
    grey = img.mean(-1)
    h, w = grey.shape
    border = np.zeros((h, w), bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    black, _ = ndimage.label(grey < 0.1)
    frame = np.isin(black, np.unique(black[border & (black > 0)]))
    valid = ~frame & ~_corner_triangles(h, w)
    if valid.sum() < 16:
        return None
    dark = (grey < threshold_otsu(grey[valid])) & valid
    dark = ndimage.binary_opening(dark, structure=np.ones((3, 3)), iterations=1)
    labels, n = ndimage.label(dark)
    if n == 0:
        return None
    blob = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
    grow = max(int(round(float(margin) * size)), 1)
    cross = ndimage.generate_binary_structure(2, 1)
    far = valid & ~ndimage.binary_dilation(blob, structure=cross, iterations=2 * grow)
    if far.sum() < 16:
        return None
    # the lesion's lighter rim: pixels connected to the blob and darker than the far skin's median - 3 robust sd
    med = float(np.median(grey[far]))
    sd = 1.4826 * float(np.median(np.abs(grey[far] - med)))
    rim, _ = ndimage.label((grey < med - 3.0 * sd) & valid | blob)
    blob = np.isin(rim, np.unique(rim[blob]))
    blob = ndimage.binary_fill_holes(blob)
    blob = ndimage.binary_dilation(blob, structure=cross, iterations=grow)
    if float((blob & border).sum()) > float(max_border) * float(border.sum()):
        return None
    painted = blob & ~frame if paint_corners else blob & valid
    blob &= valid
    share = float(blob.sum()) / float(valid.sum())
    far = valid & ~ndimage.binary_dilation(blob, structure=cross, iterations=grow)
    if not float(min_area) <= share <= float(max_area) or far.sum() < 16:
        return None
    skin = float(grey[far].mean())
    if (skin - float(grey[blob].mean())) / max(skin, 1e-6) < float(min_contrast):
        return None
    # skin colour under the blob: a quadratic (or clipped planar) surface per channel fitted to the far skin
    yy, xx = np.mgrid[0:h, 0:w] / float(max(h, w))
    basis = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], axis=-1)
    basis = basis[..., :3] if fill == "planar" else basis
    coef, *_ = np.linalg.lstsq(basis[far], img[far], rcond=None)
    smooth = basis @ coef
    if fill == "planar":
        smooth = np.clip(smooth, np.percentile(img[far], 2, axis=0), np.percentile(img[far], 98, axis=0))
    blob = painted
    texture = img - ndimage.gaussian_filter(img, (3.0, 3.0, 0.0))
    rng = np.random.default_rng(int(seed))
    best, best_cover = (0, 0), -1.0
    for _ in range(32):  # a shift that lands the blob on skin
        dy, dx = int(rng.integers(-h // 2, h // 2 + 1)), int(rng.integers(-w // 2, w // 2 + 1))
        cover = float(np.roll(far, (dy, dx), axis=(0, 1))[blob].mean())
        if cover > best_cover:
            best, best_cover = (dy, dx), cover
    copied = np.roll(texture, best, axis=(0, 1)) * np.roll(far, best, axis=(0, 1))[..., None]
    soft = np.clip(ndimage.gaussian_filter(blob.astype(np.float64), grow / 2.0) * 2.0, 0.0, 1.0)[..., None]
    soft = np.where(blob[..., None], 1.0, soft) * (~frame if paint_corners else valid)[..., None]
    out = img * (1.0 - soft) + (smooth + copied) * soft
    return _to_uint8_rgb(out)


def _image_ids_split(ids: Sequence[str], test_fraction: float) -> tuple[list[str], list[str]]:
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    ordered = sort_ids(ids)
    n_train = len(ordered) - int(round(float(test_fraction) * len(ordered)))
    return ordered[:n_train], ordered[n_train:]


def write_image_domains(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None = None,
    test_fraction: float = 0.4,
    side_fraction: float = 0.3,
    min_mean: float = 0.2,
    max_std: float = 0.05,
    size: int = 256,
    patch_scale: str = "resize",
    val_fraction: float = 0.0,
    normals: str = "corners",
    inpaint_options: dict[str, Any] | None = None,
    lesion_crops: int = 0,
    a_crops: str = "lesion",
    color_constancy: float = 0.0,
) -> dict[str, Any]:
    """Lesion images (e.g. ISIC) → ``trainA`` (the first ``1 − test_fraction`` of the sorted ids, images only),
    ``trainB`` (lesion-free corner patches of the **train** images, :func:`lesion_free_patches`) and ``testA``
    (the other images, with their masks from ``masks_dir`` when given).

    With ``val_fraction > 0`` the last ``val_fraction`` of all ids before the test ids become a labelled
    validation split ``val/images`` + ``val/labels`` (for checkpoint and post-processing selection): those images
    are neither in ``trainA`` nor a source of ``trainB`` patches, and ``masks_dir`` is required.

    ``normals`` chooses what ``trainB`` holds: ``"corners"`` (the corner patches, spec §1.2), ``"inpaint"`` (the
    training images with their dark blob painted over, :func:`lesion_removed_image`: normal skin at the A images'
    field of view; not in the spec), ``"both"`` or ``"grid"`` (the crops of the ``lesion_crops`` grid that pass the
    corner patches' lesion-free rules, ``min_mean`` / ``max_std``: more B patches at the same magnification; not in the
    spec; needs ``lesion_crops``). ``inpaint_options`` (keys in :data:`INPAINT_OPTIONS`) are passed
    to :func:`lesion_removed_image`, e.g. ``{"max_border": 0.5, "max_area": 0.8, "fill": "planar",
    "paint_corners": True}`` keeps more images (lesions cut by the frame), painted less faithfully.

    ``lesion_crops = n > 0`` (not in the spec) makes ``trainA`` hold an ``n × n`` grid of crops of each training image
    (:func:`grid_crops`, side ``side_fraction``) at the magnification of the corner patches instead of the whole image:
    A and B then show skin at the same scale, and a model trained on them is applied to whole images by sliding a
    window of the crop's size over them (``patch_zoom = 1 / side_fraction`` at inference). ``a_crops`` says which
    crops: ``"lesion"`` (default) only those that fail the lesion-free rules (``min_mean`` / ``max_std``), i.e. the
    crops that may show the lesion: a crop of plain skin carries the image's "lesion" tag but no lesion, and a crop
    that is also a B patch must not be in A as well; ``"all"`` every crop (what ``lesion_crops`` wrote before
    the cltnet bundle 0.2.5: the B patches were then A crops too). An image none of whose crops may show a
    lesion gives no A crop.

    ``color_constancy = p > 0`` (not in the spec) maps each whole training image's illuminant to grey
    (:func:`~labelless.transforms.translation.shades_of_grey` with power ``p``) before its A views and B patches are
    cut; which crops are lesion-free is still decided on the original colours, so ``p`` changes the pixels and not the
    split. The val and test images are written unchanged: evaluate and run such a model with the same
    ``color_constancy``, which applies the mapping to each input image.

    The masks of training images are never read. Images are written as ``size × size`` RGB PNGs; ``patch_scale``
    as in :func:`lesion_free_patches`.

    Raises:
        ConfigError: output folder not fresh or inside an input; bad fractions.
        DataError: no images, unreadable files, a test image without mask, no patch kept.
    """
    _check_patch_scale(patch_scale)
    if normals not in NORMAL_SOURCES:
        raise ConfigError(f"normals must be one of {NORMAL_SOURCES}, got {normals!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    lesion_crops = as_int(lesion_crops, "lesion_crops (0: whole images)", 0)
    if lesion_crops and patch_scale != "resize":
        raise ConfigError("lesion_crops makes A crops at the magnification of patch_scale='resize'; "
                          f"got patch_scale={patch_scale!r}")  # fmt: skip
    if a_crops not in A_CROPS:
        raise ConfigError(f"a_crops must be one of {A_CROPS}, got {a_crops!r}")
    if normals == "grid" and lesion_crops < 2:
        raise ConfigError("normals='grid' takes its B patches from the lesion_crops grid: give lesion_crops >= 2")
    color_constancy = as_float(color_constancy, "color_constancy", 0.0)
    inpaint_options = dict(inpaint_options or {})
    unknown = sorted(set(inpaint_options) - set(INPAINT_OPTIONS))
    if unknown:
        raise ConfigError(f"inpaint_options: unknown keys {unknown}; known: {list(INPAINT_OPTIONS)}")
    if "paint_corners" in inpaint_options:
        inpaint_options["paint_corners"] = as_bool(inpaint_options["paint_corners"], "paint_corners")
    if float(val_fraction) > 0 and masks_dir is None:
        raise ConfigError("val_fraction > 0 needs masks_dir: the validation images are scored against masks")
    images = list_images(images_dir)
    if not images:
        raise DataError(images_dir, f"no images ({', '.join(IMAGE_2D_SUFFIXES)}) in the folder")
    final = _fresh_output(out_dir, [images_dir] + ([masks_dir] if masks_dir is not None else []))
    with _staged(final) as out:
        train, test = _image_ids_split(list(images), test_fraction)
        n_val = int(round(float(val_fraction) * len(images)))
        if n_val >= len(train):
            raise ConfigError(f"val_fraction {val_fraction} leaves no training image "
                              f"({len(train)} ids before the test ids)")  # fmt: skip
        train, val = train[: len(train) - n_val], train[len(train) - n_val :]
        labelled = {}
        if masks_dir is not None and (test or val):
            pairs = find_image_mask_pairs(images_dir, masks_dir)
            labelled = {p["name"]: Path(p["label"]) for p in pairs.pairs}
        records, counts = [], {"trainA": 0, "trainB": 0, "testA": 0}
        if val:
            counts["val"] = 0
        for i, pid in enumerate(train):
            original = read_rgb(images[pid])
            rgb = shades_of_grey(original, color_constancy, channel_last=True) if color_constancy else original
            views = grid_crops(rgb, lesion_crops, side_fraction, size) if lesion_crops else [("", None)]
            rules = views  # the lesion-free rules read the original colours
            if color_constancy and lesion_crops:
                rules = grid_crops(original, lesion_crops, side_fraction, size)
            free = {name for name, crop in rules
                    if crop is not None and _lesion_free(np.float32(crop) / 255.0, min_mean, max_std)}  # fmt: skip
            for crop_name, crop in views:
                if a_crops == "lesion" and crop_name in free:
                    continue
                a_img = _to_uint8_rgb(_resize(rgb, size, "bilinear")) if crop is None else crop
                rel = f"trainA/{pid}_{crop_name}.png" if crop_name else f"trainA/{pid}.png"
                records.append({"folder": "trainA", "image": _write_png(a_img, out, rel)})
                counts["trainA"] += 1
            removed = None
            if normals in ("inpaint", "both"):
                removed = lesion_removed_image(rgb, size=size, seed=i, **inpaint_options)
            if removed is not None:
                records.append({"folder": "trainB", "image": _write_png(removed, out, f"trainB/{pid}_inpaint.png"),
                                "source": str(images[pid])})  # fmt: skip
                counts["trainB"] += 1
            patches = []
            if normals == "grid":
                patches = [(name, crop) for name, crop in views if name in free]
            elif normals != "inpaint":
                patches = lesion_free_patches(original, side_fraction, min_mean, max_std, size, patch_scale)
                if color_constancy:  # the same corners, cut from the colour-corrected image
                    kept = {name for name, _ in patches}
                    patches = [(name, patch) for name, patch in
                               lesion_free_patches(rgb, side_fraction, 0.0, np.inf, size, patch_scale)
                               if name in kept]  # fmt: skip
            for corner, patch in patches:
                records.append({"folder": "trainB", "image": _write_png(patch, out, f"trainB/{pid}_{corner}.png"),
                                "source": str(images[pid])})  # fmt: skip
                counts["trainB"] += 1
        for folder, ids in (("val", val), ("testA", test)):
            for pid in ids:
                rgb = read_rgb(images[pid])
                rec = {"folder": folder, "image": _write_png(_to_uint8_rgb(_resize(rgb, size, "bilinear")), out,
                                                             f"{folder}/images/{pid}.png")}  # fmt: skip
                if labelled:
                    if pid not in labelled:
                        raise DataError(images[pid], f"no mask for this {folder} image in {masks_dir}")
                    mask = load_mask(labelled[pid], size=None)[0].numpy()
                    if mask.shape != rgb.shape[:2]:
                        raise DataError(labelled[pid], f"mask size {mask.shape} differs from the image {rgb.shape[:2]}")
                    m = _resize(mask, size, "nearest") > 0.5
                    rec["label"] = _write_png(m.astype(np.uint8) * 255, out, f"{folder}/labels/{pid}_segmentation.png")
                records.append(rec)
                counts[folder] += 1
        if not counts["trainA"]:
            raise DataError(
                images_dir,
                "every crop of the lesion_crops grid passed the lesion-free rules "
                "(min_mean, max_std), so none is left as a lesion view; tighten them or use a_crops='all'",
            )
        if not counts["trainB"]:
            what = {
                "corners": "no corner patch passed the lesion-free rules (min_mean / max_std); relax them",
                "inpaint": "no training image could have its lesion painted over (lesion_removed_image: every one "
                "touches the frame, fills it or has no dark blob); use normals='both' or 'corners'",
                "both": "no corner patch passed the lesion-free rules and no lesion could be painted over",
                "grid": "no crop of the lesion_crops grid passed the lesion-free rules (min_mean, max_std); relax them",
            }
            raise DataError(images_dir, what[normals])
        manifest = {"source": str(Path(images_dir).resolve()), "counts": counts, "train_ids": train, "test_ids": test,
                    "val_ids": val,
                    "options": {"test_fraction": test_fraction, "val_fraction": val_fraction,
                                "side_fraction": side_fraction, "min_mean": min_mean, "max_std": max_std,
                                "size": size, "patch_scale": patch_scale, "normals": normals,
                                "inpaint_options": inpaint_options, "lesion_crops": lesion_crops,
                                "a_crops": a_crops, "color_constancy": color_constancy},
                    "images": records}  # fmt: skip
        write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _domain_of(tag: str, where: str) -> str:
    t = str(tag).strip().lower()
    if t in _LESION_TAGS:
        return "A"
    if t in _NORMAL_TAGS:
        return "B"
    raise DataError(where, f"image-level label {tag!r} is neither lesion ({sorted(_LESION_TAGS)}) nor normal "
                           f"({sorted(_NORMAL_TAGS)})")  # fmt: skip


def write_tagged_domains(csv_path: str | os.PathLike, out_dir: str | os.PathLike, size: int | None = None) -> dict:
    """Build the weak-domain folders from a CSV of image-level tags.

    Columns: ``image`` (path, relative to the CSV's folder or absolute), ``label`` (lesion: ``lesion``, ``1``,
    ``A``, ``disease``, ``abnormal``, ``tumour``, ...; normal: ``normal``, ``0``, ``B``, ``healthy``, ...), optional
    ``split`` (``train`` default, ``test``, ``val``) and optional ``mask`` (test/val lesion images only, for
    evaluation). Images are converted to RGB PNGs (``size``: resized to ``size × size``; ``None`` keeps the size).

    Raises:
        DataError: missing columns, a row naming a missing or unreadable file (row and file named), unknown tags,
            a mask on a training row, no lesion or no normal training image.
        ConfigError: output folder not fresh or inside the CSV's folder.
    """
    src = Path(csv_path)
    if not src.is_file():
        raise DataError(src, "tag CSV does not exist")
    with src.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DataError(src, "expected a header with the columns image,label (optional: split, mask)")
    base = src.parent
    plan = []
    for i, row in enumerate(rows, start=2):
        where = f"{src}, line {i}"
        img = Path(row["image"].strip())
        img = img if img.is_absolute() else base / img
        if not img.is_file():
            raise DataError(img, f"image named in {where} does not exist")
        split = (row.get("split") or "train").strip().lower()
        if split not in ("train", "test", "val"):
            raise DataError(where, f"split must be train, test or val, got {split!r}")
        domain = _domain_of(row["label"], where)
        mask = (row.get("mask") or "").strip()
        mpath = None
        if mask:
            if split == "train":
                raise DataError(where, "a training image must not carry a mask (weak supervision only)")
            mpath = Path(mask) if Path(mask).is_absolute() else base / mask
            if not mpath.is_file():
                raise DataError(mpath, f"mask named in {where} does not exist")
        plan.append((img, split, domain, mpath))
    n_a = sum(1 for _, s, d, _ in plan if s == "train" and d == "A")
    n_b = sum(1 for _, s, d, _ in plan if s == "train" and d == "B")
    if not n_a or not n_b:
        raise DataError(src, f"the training rows hold {n_a} lesion and {n_b} normal image(s); both domains need images")
    final = _fresh_output(out_dir, [base])
    with _staged(final) as out:
        records, counts, names = [], {}, set()
        for img, split, domain, mpath in plan:
            folder = {"train": f"train{domain}", "test": f"test{domain}", "val": "val" if domain == "A" else "valB"}
            folder = folder[split]
            name = strip_suffix(img)
            while (folder, name) in names:
                name += "_"
            names.add((folder, name))
            rgb = read_rgb(img)
            pic = _to_uint8_rgb(rgb if size is None else _resize(rgb, int(size), "bilinear"))
            sub = f"{folder}/images" if folder in ("testA", "val") else folder
            rec = {"folder": folder, "image": _write_png(pic, out, f"{sub}/{name}.png"), "source": str(img)}
            if mpath is not None and folder in ("testA", "val"):
                m = load_mask(mpath, size=None)[0].numpy()
                if m.shape != rgb.shape[:2]:
                    raise DataError(mpath, f"mask size {m.shape} differs from the image size {rgb.shape[:2]} ({img})")
                m = m if size is None else _resize(m, int(size), "nearest")
                rec["label"] = _write_png((m > 0.5).astype(np.uint8) * 255, out,
                                          f"{folder}/labels/{name}_segmentation.png")  # fmt: skip
            records.append(rec)
            counts[folder] = counts.get(folder, 0) + 1
        manifest = {"source": str(src.resolve()), "counts": counts, "options": {"size": size}, "images": records}
        write_json_atomic(out / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class WeakDomainFolders:
    """The weak-domain folder layout of a user's data (the reference's, names configurable).

    Args:
        root: the dataset folder.
        train_a, train_b: folders of lesion / normal training images (no masks needed; PNG/JPG or 2D NIfTI).
        test: folder of labelled test images, with ``images``/``labels`` sub-folders (the CLTNet BraTS sample folder
            calls it ``test``, the ISIC one ``testA``: both are tried when the given name is missing).
        val: folder of labelled validation images (``images``/``labels``), optional.
            ``test`` and ``val`` are looked up inside ``root``, then (a name other than the defaults) as given,
            absolute or relative to the working directory; a given name found nowhere raises.
        images, labels: sub-folder names inside ``test`` / ``val``.
        require_train: raise when a training folder is missing or empty (evaluation-only use sets it false).

    Attributes:
        train_a, train_b: image files; test, val: ``[{"name", "image", "label"}]`` pairs (masks matched as
        ``<id>``, ``<id>_segmentation``, ``<id>_mask``).

    Raises:
        DataError: a missing or empty training folder (named), test/val images without masks.
    """

    root: str | os.PathLike
    train_a_dir: str = "trainA"
    train_b_dir: str = "trainB"
    test_dir: str = "testA"
    val_dir: str = "val"
    images: str = "images"
    labels: str = "labels"
    require_train: bool | str = True
    train_a: list[Path] = field(init=False, default_factory=list)
    train_b: list[Path] = field(init=False, default_factory=list)
    test: list[dict] = field(init=False, default_factory=list)
    val: list[dict] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise DataError(root, "weak-domain dataset folder does not exist")
        need = as_bool(self.require_train, "require_train")
        for attr, name in (("train_a", self.train_a_dir), ("train_b", self.train_b_dir)):
            folder = root / name
            files = list(list_images(folder, WEAK_IMAGE_SUFFIXES).values()) if folder.is_dir() else []
            if need and not files:
                what = "does not exist" if not folder.is_dir() else "holds no images"
                raise DataError(folder, f"training folder {what} ({', '.join(WEAK_IMAGE_SUFFIXES)} expected)")
            setattr(self, attr, files)
        for attr, name in (("test", self.test_dir), ("val", self.val_dir)):
            folder = root / name
            if not folder.is_dir() and name in ("testA", "test"):
                folder = root / ("test" if name == "testA" else "testA")
            if not folder.is_dir() and name not in ("testA", "test", "val"):
                # a folder named by the user: inside the dataset folder, else as given (relative to the working
                # directory); a name found nowhere is an error, never a silently skipped test/validation split
                if Path(name).is_dir():
                    folder = Path(name)
                else:
                    raise DataError(folder, f"{attr} folder does not exist (looked for {name!r} inside {root} and "
                                            "relative to the working directory)")  # fmt: skip
            if (folder / self.images).is_dir():
                pairs = find_image_mask_pairs(folder / self.images, folder / self.labels,
                                              image_suffixes=WEAK_IMAGE_SUFFIXES)  # fmt: skip
                setattr(self, attr, pairs.pairs)

    def __repr__(self) -> str:
        return (f"WeakDomainFolders({str(self.root)!r}: trainA {len(self.train_a)}, trainB {len(self.train_b)}, "
                f"test {len(self.test)}, val {len(self.val)})")  # fmt: skip
