# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The data layer of semi-supervised ultrasound segmentation (sabrnet.md §2): layouts, the seeded split, readers.

Data are read from where they are (never copied). Four layouts (:func:`detect_layout`)::

    hc18       <root>/labeled/images/NNN_HC.png, labeled/masks/NNN_HC.png (0/255 filled head),
               labeled/pixel_size_and_hc.csv (filename, pixel size(mm), head circumference (mm)), unlabeled/*.png
               case = the leading digits (NNN_2HC, NNN_3HC are repeats of fetus NNN and stay with it)
    ddti       <root>/images/<patient>_<image>(<k>).png, masks/<same stem>.gif (0/255, a few empty),
               [diagnosis.csv]; case = the number before "_"
    reference  <root>/label_data/{image,label}/ and list files train_full_list.txt | train_<n>_list.txt,
               val_full_list.txt | val_<n>_list.txt, test_list.txt (in label_data/ or <root>);
               <root>/unlabel_data/image/ with unlabel_list.txt | unlabel_list_<n>.txt; labels are PNGs of class
               indices (255 read as 1); the lists define the split; case = the stem (or ``case_pattern``)
    folders    a user's data: <root>/images/ + <root>/<mask_dir>/ (default "masks", e.g. "labels"), optional
               <root>/unlabeled/ of images without masks; case = the stem (or ``case_pattern``)

**Split** (:func:`build_split`, sabrnet.md §2.2): a seeded split **by case** into 70 % train, 10 % val, 20 % test
(:func:`split_cases`); the labelled ratio ``r`` picks labelled *cases* inside train (:func:`labeled_cases`: at least
one; the cases of a smaller ratio are a subset of those of a larger one for the same seed); the other train images are
unlabelled (their masks are never read: ``label=None``) and the extra pool (HC18 ``unlabeled/``, a user's
``unlabeled/``) joins them. Pool items get the case ``unlabeled/<id>`` (HC18's unlabelled images are other fetuses).
``eval_split="all"`` makes every labelled image a test image (a separate test set).

**Reading** (sabrnet.md §2.3): :func:`load_ultrasound` gives ``[3, S, S]`` float in [−1, 1] (grey → 3 channels,
bilinear resize antialiased when shrinking, mean 0.5 / std 0.5) from

- PNG/JPG/BMP/TIFF (the :mod:`labelless.data.images` rules): 8-bit / 255, **16-bit / 65535** (also when Pillow
  reads a 16-bit PNG as 32-bit integers); RGB and **RGBA** images become their ITU-R BT.601 luma (alpha dropped:
  ultrasound screenshots are often stored as RGB(A)); palette images their colours' luma;
- NIfTI: a 2D image or a 3D file with one slice (several slices: DataError);
- DICOM (and NRRD/MHA), read with SimpleITK: a single frame; a **multi-frame** file (cine loop) gives its **first
  frame with a warning**; colour (RGB/YBR) frames become their luma.

  NIfTI/DICOM values: 8-bit / 255; otherwise kept when in [0, 1], / 255 when integer in [0, 255], else min–max scaled
  to [0, 1] (16-bit scanner data has no fixed white level).

:func:`load_label` gives ``[S, S]`` int64 class indices (nearest-exact resize, GIF/PNG/NIfTI; 255 → 1; a value
≥ ``n_classes`` is a DataError naming the file). :class:`SemiSupDataset` wraps items into dicts with the
:class:`~labelless.data.keys.SemiSupKeys` names plus ``case``, ``original_size``, ``pixel_size`` and ``hc_mm``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from labelless.data.images import (
    MASK_STEMS,
    find_image_mask_pairs,
    find_mask,
    image_size,
    list_images,
    load_grey,
    resize_image,
)
from labelless.data.keys import SemiSupKeys
from labelless.errors import ConfigError, DataError
from labelless.io.readers import image_format, read_image2d, read_volume
from labelless.io.suffixes import IMAGE_2D_SUFFIXES, MASK_2D_SUFFIXES, strip_suffix
from labelless.utils import LRUCache, sort_ids

__all__ = [
    "SEMISUP_LAYOUTS",
    "SEMISUP_EVAL_SPLITS",
    "DEFAULT_FRACTIONS",
    "SemiSupItem",
    "SemiSupSplit",
    "detect_layout",
    "case_id",
    "split_cases",
    "labeled_cases",
    "build_split",
    "read_ultrasound",
    "ultrasound_size",
    "load_ultrasound",
    "load_label",
    "SemiSupDataset",
]

logger = logging.getLogger(__name__)

#: Layouts :func:`detect_layout` recognises (in the order they are tried).
SEMISUP_LAYOUTS = ("reference", "hc18", "ddti", "folders")
#: ``eval_split`` values of :func:`build_split`: ``test`` / ``val`` (the part evaluated), ``all`` (all labelled images
#: are test images).
SEMISUP_EVAL_SPLITS = ("test", "val", "all")
#: Case fractions (train, val, test) of sabrnet.md §2.2.
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)

_HC18_CSV = "pixel_size_and_hc.csv"
_HC18_COLUMNS = ("filename", "pixel size(mm)", "head circumference (mm)")
#: case id = the leading number before "_" (HC18 NNN_HC / NNN_2HC, DDTI <patient>_<image>(<k>)).
_NUMBER_PREFIX = r"^(\d+)_"
_DDTI_NAME = re.compile(r"^\d+_\d+(\(\d+\))?$")
_HC18_MASK_STEMS = MASK_STEMS + ("{id}_Annotation",)


# ---------------------------------------------------------------------------------------------- items and splits
@dataclass
class SemiSupItem:
    """One image of a semi-supervised data set.

    Args:
        image: image file.
        label: mask file, ``None`` for an unlabelled image.
        case: patient / fetus id (the unit of the split).
        pixel_size: mm per pixel of the stored image (HC18), or ``None``.
        hc_mm: reference head circumference in mm (HC18), or ``None``.
        name: image name (default: the file stem).
    """

    image: str
    label: str | None = None
    case: str = ""
    pixel_size: float | None = None
    hc_mm: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.image = os.fspath(self.image)
        self.label = None if self.label is None else os.fspath(self.label)
        if not self.name:
            self.name = strip_suffix(self.image)
        if not self.case:
            self.case = self.name

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        return asdict(self)

    def without_label(self) -> SemiSupItem:
        """A copy with ``label=None`` (an unlabelled training image)."""
        return replace(self, label=None)


@dataclass
class SemiSupSplit:
    """The parts of a semi-supervised data set.

    Args:
        labeled: labelled training images.
        unlabeled: unlabelled training images (``label`` is always ``None``).
        val: validation images (labelled).
        test: test images (labelled).
        layout: the layout read.
        root: the data set folder.
        seed: split seed.
        labeled_ratio: fraction of training cases labelled (``None`` when list files define the split).
        fractions: (train, val, test) case fractions (``None`` when list files define the split).
        eval_split: ``"test"``, ``"val"`` or ``"all"``.
        list_variant: the ``<n>`` of the reference list files, if any.
    """

    labeled: list[SemiSupItem] = field(default_factory=list)
    unlabeled: list[SemiSupItem] = field(default_factory=list)
    val: list[SemiSupItem] = field(default_factory=list)
    test: list[SemiSupItem] = field(default_factory=list)
    layout: str = "folders"
    root: str = ""
    seed: int = 0
    labeled_ratio: float | None = None
    fractions: tuple[float, float, float] | None = DEFAULT_FRACTIONS
    eval_split: str = "test"
    list_variant: str | None = None

    def parts(self) -> dict[str, list[SemiSupItem]]:
        """``{"labeled", "unlabeled", "val", "test"}`` item lists."""
        return {"labeled": self.labeled, "unlabeled": self.unlabeled, "val": self.val, "test": self.test}

    def eval_items(self) -> list[SemiSupItem]:
        """The images evaluated: ``val`` for ``eval_split="val"``, else ``test``."""
        return self.val if self.eval_split == "val" else self.test

    def manifest(self) -> dict[str, Any]:
        """JSON-safe description: layout, source folder, seed, ratio, fractions, counts, and per part the sorted case
        ids and image names."""
        parts = self.parts()
        return {
            "layout": self.layout,
            "source": self.root,
            "seed": int(self.seed),
            "labeled_ratio": None if self.labeled_ratio is None else float(self.labeled_ratio),
            "fractions": None if self.fractions is None else [float(f) for f in self.fractions],
            "eval_split": self.eval_split,
            "list_variant": self.list_variant,
            "counts": {k: len(v) for k, v in parts.items()},
            "cases": {k: sort_ids({i.case for i in v}) for k, v in parts.items()},
            "images": {k: [i.name for i in v] for k, v in parts.items()},
        }

    def __repr__(self) -> str:
        c = {k: len(v) for k, v in self.parts().items()}
        return f"SemiSupSplit({self.layout}, {self.root!r}, {c})"


# ---------------------------------------------------------------------------------------------- layouts
def _reference_list_dir(root: Path) -> Path:
    """Where the reference list files are: ``label_data/`` when it holds any, else the root."""
    return root / "label_data" if any((root / "label_data").glob("*list*.txt")) else root


def detect_layout(root: str | os.PathLike, mask_dir: str = "masks", image_dir: str = "images") -> str:
    """The layout of a data set folder: ``"reference"``, ``"hc18"``, ``"ddti"`` or ``"folders"`` (module docstring).

    ``ddti`` is ``images/`` + ``masks/`` with a ``diagnosis.csv``, or with GIF masks and every image named
    ``<patient>_<image>[(<k>)]``; any other ``images/`` + ``<mask_dir>/`` folder is ``folders``.

    Raises:
        DataError: the folder is missing or matches no layout (the message lists what was expected).
    """
    p = Path(root)
    if not p.is_dir():
        raise DataError(p, "data set folder does not exist")
    if (p / "label_data" / "image").is_dir() and (p / "label_data" / "label").is_dir():
        return "reference"
    if (p / "labeled" / "images").is_dir() and (p / "labeled" / "masks").is_dir():
        return "hc18"
    if (p / image_dir).is_dir() and (p / mask_dir).is_dir():
        if (p / "diagnosis.csv").is_file():
            return "ddti"
        images = list_images(p / image_dir)
        gif = any(f.suffix.lower() == ".gif" for f in (p / mask_dir).iterdir())
        if images and gif and all(_DDTI_NAME.match(n) for n in images):
            return "ddti"
        return "folders"
    raise DataError(
        p,
        "no known ultrasound layout: expected labeled/images + labeled/masks (+ unlabeled/; HC18), "
        f"label_data/image + label_data/label (+ unlabel_data/image; reference list files), or {image_dir}/ + "
        f"{mask_dir}/ (+ unlabeled/; folders, DDTI; pass mask_dir for another mask folder name)",
    )


def case_id(name: str, pattern: str | None = None) -> str:
    """The case (patient / fetus) of an image name: the first group of ``pattern`` (or its whole match) when it
    matches, else the name itself.

    Examples::

        case_id("012_2HC", r"^(\\d+)_")   # "012"
        case_id("102_1(2)", r"^(\\d+)_")  # "102"
        case_id("img_7")                  # "img_7"
    """
    if pattern:
        m = re.match(pattern, name)
        if m:
            return m.group(1) if m.groups() and m.group(1) is not None else m.group(0)
    return name


def _rounded(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        f = tuple(float(v) for v in fractions)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from e
    if len(f) != 3 or any(v < 0 or not math.isfinite(v) for v in f) or f[0] <= 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ConfigError(f"fractions (train, val, test) must be >= 0, train > 0, and sum to 1; got {fractions!r}")
    return f  # type: ignore[return-value]


def split_cases(
    case_ids: Sequence[str], seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[str]]:
    """A seeded split **by case** into ``{"train", "val", "test"}`` (each sorted).

    Counts are the rounded fractions of the number of distinct cases; with 3 cases or more, every part whose fraction
    is positive gets at least one case, and train always keeps one.

    Args:
        case_ids: case ids (repeats are fine: one case may hold several images).
        seed: seed of the permutation.
        fractions: (train, val, test), summing to 1.

    Raises:
        ConfigError: bad fractions. DataError: no case.
    """
    f = _check_fractions(fractions)
    ids = sort_ids(set(str(c) for c in case_ids))
    n = len(ids)
    if n == 0:
        raise DataError(None, "no case to split")
    n_val, n_test = _rounded(f[1] * n), _rounded(f[2] * n)
    if n >= 3:
        n_val = max(n_val, 1 if f[1] > 0 else 0)
        n_test = max(n_test, 1 if f[2] > 0 else 0)
    while n_val + n_test > n - 1:
        if n_val > n_test or (n_val == n_test and n_val > 0 and f[1] <= f[2]):
            n_val -= 1
        else:
            n_test -= 1
    order = [ids[i] for i in np.random.default_rng(int(seed)).permutation(n)]
    test, val = order[:n_test], order[n_test : n_test + n_val]
    return {"train": sort_ids(order[n_test + n_val :]), "val": sort_ids(val), "test": sort_ids(test)}


def labeled_cases(train_cases: Sequence[str], labeled_ratio: float, seed: int = 0) -> list[str]:
    """The labelled cases among the training cases: ``max(1, round(r · n))`` of them, seeded.

    The same seed gives nested choices: the cases of ``r = 0.2`` are among those of ``r = 0.5``.

    Raises:
        ConfigError: ratio outside (0, 1]. DataError: no training case.
    """
    r = float(labeled_ratio)
    if not 0.0 < r <= 1.0:
        raise ConfigError(f"labeled_ratio must be in (0, 1], got {labeled_ratio!r}")
    ids = sort_ids(set(str(c) for c in train_cases))
    if not ids:
        raise DataError(None, "no training case to label")
    n = min(len(ids), max(1, _rounded(r * len(ids))))
    order = np.random.default_rng([int(seed), 1]).permutation(len(ids))
    return sort_ids(ids[i] for i in order[:n])


def _read_hc18_csv(path: Path) -> dict[str, tuple[float, float]]:
    """``{stem: (pixel size mm, head circumference mm)}`` from the HC18 CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise DataError(path, f"cannot read the CSV ({e})") from e
    if not rows:
        raise DataError(path, "empty CSV")
    header = [h.strip().lower() for h in rows[0]]
    try:
        cols = [header.index(c) for c in _HC18_COLUMNS]
    except ValueError:
        raise DataError(path, f"expected the columns {', '.join(_HC18_COLUMNS)}; found {', '.join(rows[0])}") from None
    out: dict[str, tuple[float, float]] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            name, ps, hc = (row[c].strip() for c in cols)
            ps_f, hc_f = float(ps), float(hc)
        except (IndexError, ValueError):
            raise DataError(path, f"line {i}: expected a file name and two numbers, got {row}") from None
        if not (ps_f > 0 and math.isfinite(ps_f)):
            raise DataError(path, f"line {i}: pixel size {ps!r} is not a positive number")
        out[strip_suffix(name)] = (ps_f, hc_f)
    return out


def _pool(folder: Path, required: bool, why: str, case_pattern: str | None, prefix: str) -> list[SemiSupItem]:
    """Items of an extra unlabelled folder (case ``<prefix>/<case>``)."""
    if not folder.is_dir():
        if required:
            raise DataError(folder, f"unlabelled image folder does not exist ({why})")
        return []
    files = list_images(folder)
    if not files:
        if required:
            raise DataError(folder, f"unlabelled image folder holds no images ({', '.join(IMAGE_2D_SUFFIXES)}; {why})")
        logger.warning("%s: unlabelled image folder holds no images; ignored", folder)
        return []
    return [SemiSupItem(str(p), None, f"{prefix}/{case_id(n, case_pattern)}", name=n) for n, p in files.items()]


def _labelled_items(
    images_dir: Path, masks_dir: Path, case_pattern: str | None, stems: Sequence[str] = MASK_STEMS
) -> list[SemiSupItem]:
    pairs = find_image_mask_pairs(images_dir, masks_dir, mask_stems=stems)
    return [SemiSupItem(p["image"], p["label"], case_id(p["name"], case_pattern), name=p["name"]) for p in pairs.pairs]


def _read_list(path: Path) -> list[tuple[int, str]]:
    """(line number, entry) of a list file (blank lines and ``#`` comments skipped)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise DataError(path, f"cannot read the list file ({e})") from e
    return [(i, s.strip()) for i, s in enumerate(lines, start=1) if s.strip() and not s.strip().startswith("#")]


def _resolve_listed(list_file: Path, line: int, entry: str, folder: Path, suffixes: Sequence[str]) -> Path:
    """The file a list entry names (a file name, or a stem completed with ``suffixes``) in ``folder``."""
    base = Path(entry).name
    direct = folder / base
    if direct.is_file():
        return direct
    found = find_mask(folder, strip_suffix(base), ("{id}",), suffixes)
    if found is None:
        raise DataError(list_file, f"line {line} names {entry!r}, which is not in {folder}")
    return found


def _reference_items(
    list_file: Path, image_dir: Path, label_dir: Path | None, case_pattern: str | None
) -> list[SemiSupItem]:
    items = []
    for line, entry in _read_list(list_file):
        img = _resolve_listed(list_file, line, entry, image_dir, IMAGE_2D_SUFFIXES)
        label = None
        if label_dir is not None:
            label = find_mask(label_dir, strip_suffix(img), MASK_STEMS, MASK_2D_SUFFIXES)
            if label is None:
                raise DataError(list_file, f"line {line}: {entry!r} has no label in {label_dir}")
        name = strip_suffix(img)
        lab = None if label is None else str(label)
        items.append(SemiSupItem(str(img), lab, case_id(name, case_pattern), name=name))
    return items


def _first_file(folder: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def _reference_split(
    root: Path, eval_split: str, list_variant: str | None, case_pattern: str | None, require_unlabeled: bool | None
) -> SemiSupSplit:
    image_dir, label_dir = root / "label_data" / "image", root / "label_data" / "label"
    lists = _reference_list_dir(root)
    n = None if list_variant in (None, "", "full") else str(list_variant)
    split = SemiSupSplit(layout="reference", root=str(root), labeled_ratio=None, fractions=None,
                         eval_split=eval_split, list_variant=n)  # fmt: skip
    u_dir = root / "unlabel_data" / "image"
    need_u = (eval_split != "all") if require_unlabeled is None else bool(require_unlabeled)
    if eval_split == "all":
        split.test = _labelled_items(image_dir, label_dir, case_pattern)
    else:
        train = _first_file(lists, ["train_full_list.txt"] if n is None else [f"train_{n}_list.txt"])
        test = _first_file(lists, ["test_list.txt"])
        val = _first_file(lists, (["val_full_list.txt"] if n is None else [f"val_{n}_list.txt", "val_full_list.txt"]))
        for what, f in (("train", train), ("test", test)):
            if f is None:
                want = "train_full_list.txt" if what == "train" and n is None else f"train_{n}_list.txt"
                want = want if what == "train" else "test_list.txt"
                raise DataError(lists, f"reference layout: the list file {want} is missing")
        split.labeled = _reference_items(train, image_dir, label_dir, case_pattern)
        split.test = _reference_items(test, image_dir, label_dir, case_pattern)
        if val is not None:
            split.val = _reference_items(val, image_dir, label_dir, case_pattern)
        else:
            logger.warning("%s: no validation list file (val_full_list.txt / val_<n>_list.txt); val is empty", lists)
        seen: dict[str, str] = {}
        for part in ("labeled", "val", "test"):
            for item in getattr(split, part):
                other = seen.setdefault(item.case, part)
                if other != part:
                    logger.warning("%s: case %s is in both %s and %s lists", root, item.case, other, part)
    u_lists = [root / "unlabel_data", root, lists]
    names = ["unlabel_list.txt"] if n is None else [f"unlabel_list_{n}.txt", "unlabel_list.txt"]
    u_list = next((f for d in u_lists if (f := _first_file(d, names)) is not None), None)
    if u_list is not None and u_dir.is_dir():
        split.unlabeled = [
            replace(i, case=f"unlabel_data/{i.case}") for i in _reference_items(u_list, u_dir, None, case_pattern)
        ]
        if not split.unlabeled and need_u:
            raise DataError(u_list, "the unlabelled list file names no image")
    else:
        split.unlabeled = _pool(u_dir, need_u, "reference layout", case_pattern, "unlabel_data")
    return split


def _check_items(split: SemiSupSplit) -> None:
    """Every image readable (header), every mask of the size of its image."""
    for part, items in split.parts().items():
        for item in items:
            size = ultrasound_size(item.image)
            if item.label is not None and part != "unlabeled":
                msize = ultrasound_size(item.label)
                if msize != size:
                    raise DataError(item.label, f"mask size {msize} differs from the image size {size} ({item.image})")


def build_split(
    root: str | os.PathLike,
    labeled_ratio: float = 0.2,
    seed: int = 0,
    layout: str = "auto",
    eval_split: str = "test",
    mask_dir: str = "masks",
    image_dir: str = "images",
    unlabeled_dir: str = "unlabeled",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    list_variant: str | int | None = None,
    case_pattern: str | None = None,
    require_unlabeled: bool | None = None,
    check_files: bool = True,
) -> SemiSupSplit:
    """Read a data set folder and split it for semi-supervised training (sabrnet.md §2.2).

    Args:
        root: the data set folder (read in place).
        labeled_ratio: fraction of the training **cases** that keep their masks (at least one case); not used by the
            reference layout, whose list files define the split.
        seed: split seed (same seed, same split).
        layout: ``"auto"`` (:func:`detect_layout`) or one of :data:`SEMISUP_LAYOUTS`.
        eval_split: ``"test"`` or ``"val"`` (the part evaluated, :meth:`SemiSupSplit.eval_items`), or ``"all"``:
            every labelled image is a test image (a separate test set; ``labeled``/``val`` are then empty and the
            unlabelled pool optional).
        mask_dir, image_dir, unlabeled_dir: folder names of the ``folders``/``ddti`` layouts (``unlabeled_dir`` also
            for HC18).
        fractions: (train, val, test) case fractions.
        list_variant: reference layout: the ``<n>`` of ``train_<n>_list.txt`` / ``val_<n>_list.txt`` /
            ``unlabel_list_<n>.txt``; ``None`` or ``"full"``: ``train_full_list.txt``, ``unlabel_list.txt``.
        case_pattern: regular expression whose first group (or match) is the case id of an image name; default:
            the leading number before ``_`` for HC18 and DDTI, the stem otherwise.
        require_unlabeled: whether the extra unlabelled folder must exist and hold images; ``None``: required by the
            HC18 and reference layouts (except with ``eval_split="all"``), optional otherwise.
        check_files: read every image header and compare each kept mask's size with its image (header reads only).

    Returns:
        the :class:`SemiSupSplit`; unlabelled items never carry a label.

    Raises:
        ConfigError: bad ratio, fractions, layout or eval_split.
        DataError (one line, naming the file or folder): unknown layout, a missing or empty unlabelled folder when it
            is required, an image without mask, a mask whose size differs from its image, an unreadable image, a
            list file naming a missing file, a bad HC18 CSV.

    Examples::

        split = build_split("/data/hc18", labeled_ratio=0.2, seed=0)
        split.manifest()["counts"]          # {"labeled": ..., "unlabeled": ..., "val": ..., "test": ...}
        test = build_split("/data/my_test_set", eval_split="all").test
    """
    root_p = Path(root)
    if eval_split not in SEMISUP_EVAL_SPLITS:
        raise ConfigError(f"eval_split must be one of {SEMISUP_EVAL_SPLITS}, got {eval_split!r}")
    if layout not in ("auto",) + SEMISUP_LAYOUTS:
        raise ConfigError(f"layout must be 'auto' or one of {SEMISUP_LAYOUTS}, got {layout!r}")
    fr = _check_fractions(fractions)
    ratio = float(labeled_ratio)
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"labeled_ratio must be in (0, 1], got {labeled_ratio!r}")
    found = detect_layout(root_p, mask_dir, image_dir) if layout == "auto" else layout
    if not root_p.is_dir():
        raise DataError(root_p, "data set folder does not exist")

    if found == "reference":
        split = _reference_split(root_p, eval_split, None if list_variant is None else str(list_variant),
                                 case_pattern, require_unlabeled)  # fmt: skip
        split.seed = int(seed)
    else:
        pool_required = require_unlabeled
        if found == "hc18":
            pattern = _NUMBER_PREFIX if case_pattern is None else case_pattern
            lab = root_p / "labeled"
            items = _labelled_items(lab / "images", lab / "masks", pattern, _HC18_MASK_STEMS)
            csv_path = lab / _HC18_CSV
            if csv_path.is_file():
                table = _read_hc18_csv(csv_path)
                missing = [i.name for i in items if i.name not in table]
                for i in items:
                    i.pixel_size, i.hc_mm = table.get(i.name, (None, None))
                if missing:
                    logger.warning("%s: no row for %d image(s) (%s...); their pixel size is unknown", csv_path,
                                   len(missing), ", ".join(missing[:3]))  # fmt: skip
            else:
                logger.warning("%s: missing; pixel sizes and reference head circumferences are unknown", csv_path)
            pool_dir, why = root_p / unlabeled_dir, "HC18 layout"
            if pool_required is None:
                pool_required = eval_split != "all"
        else:
            pattern = (_NUMBER_PREFIX if found == "ddti" else None) if case_pattern is None else case_pattern
            items = _labelled_items(root_p / image_dir, root_p / mask_dir, pattern)
            pool_dir, why = root_p / unlabeled_dir, "require_unlabeled"
        pool = _pool(pool_dir, bool(pool_required), why, pattern, unlabeled_dir)
        split = SemiSupSplit(layout=found, root=str(root_p), seed=int(seed), labeled_ratio=ratio, fractions=fr,
                             eval_split=eval_split)  # fmt: skip
        if eval_split == "all":
            split.test, split.unlabeled, split.labeled_ratio, split.fractions = items, pool, None, None
        else:
            parts = split_cases([i.case for i in items], seed=seed, fractions=fr)
            chosen = set(labeled_cases(parts["train"], ratio, seed))
            val, test = set(parts["val"]), set(parts["test"])
            for item in items:
                if item.case in test:
                    split.test.append(item)
                elif item.case in val:
                    split.val.append(item)
                elif item.case in chosen:
                    split.labeled.append(item)
                else:
                    split.unlabeled.append(item.without_label())
            split.unlabeled += pool
    if check_files:
        _check_items(split)
    return split


# ---------------------------------------------------------------------------------------------- readers
def _unit_scale(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """NIfTI / DICOM values to [0, 1] (module docstring rule)."""
    a = np.asarray(arr, dtype=np.float64)
    if np.dtype(dtype) == np.uint8:
        return a / 255.0
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0.0 and hi <= 255.0 and np.array_equal(a, np.rint(a)):
        return a / 255.0
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _read_sitk_2d(path: Path) -> np.ndarray:
    """A DICOM / NRRD / MHA image as (H, W) in [0, 1]: colour → luma, multi-frame → first frame (warning)."""
    import SimpleITK as sitk  # noqa: N813

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise DataError(path, f"cannot read file ({lines[-1][:300] if lines else 'SimpleITK error'})") from e
    arr = sitk.GetArrayFromImage(img)
    dtype = arr.dtype
    if img.GetNumberOfComponentsPerPixel() > 1:
        rgb = arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, axis=-1)
        arr = rgb.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114])
    if arr.ndim == 3:
        if arr.shape[0] > 1:
            warnings.warn(f"{path}: multi-frame file ({arr.shape[0]} frames); the first frame is used", stacklevel=3)
        arr = arr[0]
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2D image (or frames of one), got an array of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(path, "image contains NaN or infinite values")
    return _unit_scale(arr, dtype)


def _read_pil_grey(path: Path) -> np.ndarray:
    """A PIL-format image as (H, W) grey in [0, 1]: 8-bit and colour images by :func:`labelless.data.images.load_grey`;
    16-bit grey (Pillow mode ``I;16``, or mode ``I`` with values in 0..65535: how Pillow reads a 16-bit PNG) / 65535;
    other integer images by the NIfTI/DICOM rule."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception as e:  # noqa: BLE001 - any PIL failure becomes a DataError naming the file
        raise DataError(path, f"cannot read image ({type(e).__name__}: {e})") from e
    if not (mode.startswith("I") or mode == "F"):
        return load_grey(path, size=None)[0].numpy()
    arr = read_volume(path, ndim=2).array[0]
    if mode.startswith("I;16") or (mode == "I" and float(arr.min()) >= 0 and float(arr.max()) <= 65535):
        return arr / 65535.0
    return _unit_scale(arr, arr.dtype)


def read_ultrasound(path: str | os.PathLike) -> np.ndarray:
    """An ultrasound image as (H, W) float32 grey in [0, 1] at its stored size (module docstring rules).

    Raises:
        DataError: missing, unreadable or unsupported file, a volume with several slices (NIfTI), NaN values.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file does not exist")
    fmt = image_format(p)
    if fmt == "image2d":
        grey = _read_pil_grey(p)
    elif fmt == "nifti":
        vol = read_volume(p, ndim=None)
        if vol.shape[0] != 1:
            raise DataError(p, f"3D volume with {vol.shape[0]} slices: expected a 2D image (or a one-slice volume)")
        grey = _unit_scale(vol.array[0], np.dtype(vol.meta.get("dtype", "float32")))
    elif fmt == "sitk":
        grey = _read_sitk_2d(p)
    else:
        raise DataError(p, "a folder: expected one image file (a DICOM series is not a 2D ultrasound image)")
    return np.ascontiguousarray(grey, dtype=np.float32)


def ultrasound_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image or mask file from its header (PIL formats, NIfTI, DICOM/NRRD/MHA).

    Raises:
        DataError: missing or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file does not exist")
    fmt = image_format(p)
    if fmt == "image2d":
        return image_size(p)
    import SimpleITK as sitk  # noqa: N813

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise DataError(p, f"cannot read the header ({lines[-1][:300] if lines else 'SimpleITK error'})") from e
    size = reader.GetSize()
    return int(size[1]), int(size[0])


def _image_tensor(path: str | os.PathLike, size: int | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """([1, S, S] grey in [0, 1], original (H, W))."""
    grey = read_ultrasound(path)
    t = torch.from_numpy(grey)[None]
    return (t if size is None else resize_image(t, int(size))), (int(grey.shape[0]), int(grey.shape[1]))


def _normalised(grey: torch.Tensor) -> torch.Tensor:
    """[1, S, S] grey in [0, 1] → [3, S, S] in [−1, 1] (mean 0.5, std 0.5)."""
    return (grey.expand(3, -1, -1) - 0.5) / 0.5


def load_ultrasound(path: str | os.PathLike, size: int | None = 256) -> torch.Tensor:
    """An ultrasound image as the network input: float32 ``[3, size, size]`` in [−1, 1] (sabrnet.md §2.3).

    Grey (:func:`read_ultrasound`) → bilinear resize (antialiased when shrinking; ``size=None`` keeps the stored
    size) → 3 channels → ``(x − 0.5) / 0.5``. The stored size is :func:`ultrasound_size`.

    Raises:
        DataError: as :func:`read_ultrasound`.
    """
    grey, _ = _image_tensor(path, size)
    return _normalised(grey).contiguous()


def load_label(path: str | os.PathLike, size: int | None = 256, n_classes: int = 2) -> torch.Tensor:
    """A label image as int64 class indices ``[size, size]`` (nearest-exact resize; ``size=None``: stored size).

    PNG/GIF/BMP/TIFF (grey or grey-palette values, colour palettes as palette indices), NIfTI and DICOM. The value
    255 is read as 1 (0/255 binary masks and the reference's labels).

    Raises:
        ConfigError: ``n_classes < 2``.
        DataError (naming the file): unreadable file, colour label, non-integer or negative values, a value
            ``>= n_classes`` after the 255 rule (e.g. a mask resized with interpolation).
    """
    n_classes = int(n_classes)
    if n_classes < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes!r}")
    p = Path(path)
    arr = np.asarray(read_image2d(p, is_label=True))
    if arr.ndim != 2:
        raise DataError(p, f"a label image must be 2D, got shape {arr.shape}")
    a = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise DataError(p, "label contains NaN or infinite values")
    if not np.array_equal(a, np.rint(a)) or float(a.min()) < 0:
        raise DataError(p, "label values must be non-negative integers (class indices, or 0/255)")
    lab = a.astype(np.int64)
    lab[lab == 255] = 1
    bad = np.unique(lab[lab >= n_classes])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise DataError(
            p,
            f"label value(s) {shown} outside 0..{n_classes - 1} (n_classes={n_classes}; 255 is read as 1); a mask "
            "resized with interpolation or saved as JPEG must be thresholded first",
        )
    t = torch.from_numpy(lab)
    if size is not None and tuple(t.shape) != (int(size), int(size)):
        t = F.interpolate(t[None, None].float(), size=(int(size), int(size)), mode="nearest-exact")[0, 0].long()
    return t


class SemiSupDataset(Dataset):
    """Items of a semi-supervised part as dicts.

    Each item is ``{"image": [3, S, S] float in [−1, 1], "label": [1, S, S] int64 (labelled items only),
    "name": str, "case": str, "original_size": (H, W), "pixel_size": float (nan when unknown), "hc_mm": float
    (nan when unknown)}`` (``image``, ``label``, ``name`` are the :class:`~labelless.data.keys.SemiSupKeys` names).
    Use one dataset per part (labelled and unlabelled items in one dataset do not collate). ``original_size``
    collates into ``[H_batch, W_batch]``. Cycling over the data is the engines' business.

    Args:
        items: :class:`SemiSupItem` objects (or their dicts, e.g. from a manifest).
        image_size: network input side S (``None``: stored size, for batch size 1).
        n_classes: number of classes of the labels (values checked by :func:`load_label`).
        with_labels: ``False`` drops the labels (an unlabelled view of labelled items).
        transform: optional callable (e.g. a MONAI dictionary transform) applied to each item dict after loading.
        cache_size: loaded (resized) images and labels kept in memory; 0 disables the cache.

    Raises:
        ConfigError: bad sizes. DataError: unreadable files (when an item is loaded).
    """

    def __init__(
        self,
        items: Sequence[SemiSupItem | Mapping[str, Any]],
        image_size: int | None = 256,
        n_classes: int = 2,
        with_labels: bool = True,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        cache_size: int = 256,
    ) -> None:
        self.items = [i if isinstance(i, SemiSupItem) else SemiSupItem(**dict(i)) for i in items]
        if image_size is not None and int(image_size) < 1:
            raise ConfigError(f"image_size must be positive or None, got {image_size!r}")
        if int(n_classes) < 2:
            raise ConfigError(f"n_classes must be >= 2, got {n_classes!r}")
        self.image_size = None if image_size is None else int(image_size)
        self.n_classes = int(n_classes)
        self.with_labels = bool(with_labels)
        self.transform = transform
        self._cache = LRUCache(int(cache_size)) if int(cache_size) > 0 else None

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, item: SemiSupItem) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        grey, original = _image_tensor(item.image, self.image_size)
        label = None
        if self.with_labels and item.label is not None:
            label = load_label(item.label, self.image_size, self.n_classes)
            if self.image_size is None and tuple(label.shape) != original:
                raise DataError(item.label, f"mask size {tuple(label.shape)} differs from the image size {original}")
        return grey, original, label

    def __getitem__(self, index: int) -> Any:
        item = self.items[int(index)]
        if self._cache is not None:
            grey, original, label = self._cache.get_or_load(int(index), lambda: self._load(item))
        else:
            grey, original, label = self._load(item)
        out: dict[str, Any] = {
            SemiSupKeys.IMAGE: _normalised(grey).clone(),
            SemiSupKeys.NAME: item.name,
            "case": item.case,
            "original_size": original,
            "pixel_size": float("nan") if item.pixel_size is None else float(item.pixel_size),
            "hc_mm": float("nan") if item.hc_mm is None else float(item.hc_mm),
        }
        if label is not None:
            out[SemiSupKeys.LABEL] = label[None].clone()
        return self.transform(out) if self.transform is not None else out
