# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Dataset lists: MONAI datalist JSON files and 2D ``images/`` + ``masks/`` folders, and label loading with maps.

A MONAI datalist is ``{"training": [{"image": "...", "label": "..."}, ...], "validation": [...], ...}`` with paths
relative to the JSON's folder (read with ``monai.data.load_decathlon_datalist``). A 2D folder dataset is
``<root>/images/<name>.<ext>`` plus ``<root>/masks/<name><mask_suffix>.<ext>``, matched by stem; image and mask
extensions may differ (``.jpg``/``.png``/``.gif``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labelless.errors import DataError
from labelless.io.readers import read_volume
from labelless.io.volume import Volume
from labelless.utils import sort_ids

from .labelmap import LabelMap

__all__ = [
    "load_datalist",
    "find_image_mask_pairs",
    "ImageMaskPairs",
    "binary_label_map",
    "read_label",
    "IMAGE_EXTS",
    "MASK_EXTS",
]

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".nii", ".nii.gz", ".mha", ".nrrd", ".dcm")
MASK_EXTS = (".png", ".gif", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".mha", ".nrrd", ".jpg", ".jpeg")


def _split_name(path: Path, exts: Sequence[str]) -> tuple[str, str] | None:
    """(stem, ext) when the file name ends with one of ``exts`` (case-insensitive), else ``None``."""
    low = path.name.lower()
    for ext in sorted(exts, key=len, reverse=True):
        if low.endswith(ext) and len(low) > len(ext):
            return path.name[: -len(ext)], ext
    return None


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    *,
    base_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> list[dict]:
    """Read a MONAI datalist JSON; relative ``image``/``label`` paths are resolved against the JSON's folder.

    Args:
        path: the JSON file.
        key: the list to read (``"training"``, ``"validation"``, ``"test"``, ...).
        base_dir: folder relative paths are resolved against (default: the JSON's folder).
        check_files: raise when a listed image or label file does not exist.

    Returns:
        A list of dicts with absolute ``image`` (and ``label`` when given) paths; other keys are kept.

    Raises:
        DataError: missing or unparsable JSON, missing key, entries without ``image``, missing files.

    Examples::

        items = load_datalist("dataset.json", "validation")   # [{"image": "/abs/img1.nii.gz", "label": ...}, ...]
    """
    from monai.data import load_decathlon_datalist

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "datalist file does not exist")
    try:
        items = load_decathlon_datalist(p, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    except json.JSONDecodeError as e:
        raise DataError(p, f"cannot parse datalist ({e})") from e
    except ValueError as e:
        raise DataError(p, f"cannot use datalist key {key!r} ({e})") from e
    except (OSError, TypeError, KeyError, AttributeError) as e:
        raise DataError(p, f"cannot parse datalist ({type(e).__name__}: {e})") from e
    except Exception as e:  # noqa: BLE001 - json.JSONDecodeError and friends
        raise DataError(p, f"cannot parse datalist ({type(e).__name__}: {e})") from e
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "image" not in item:
            raise DataError(p, f"entry {i} of {key!r} has no 'image' ({item!r})")
        if check_files:
            for k in ("image", "label"):
                if k in item and isinstance(item[k], str) and not Path(item[k]).exists():
                    raise DataError(p, f"entry {i} of {key!r}: {k} file {item[k]} does not exist")
        out.append(dict(item))
    return out


@dataclass
class ImageMaskPairs:
    """Result of :func:`find_image_mask_pairs`.

    Args:
        pairs: ``{"name", "image", "label"}`` dicts (``label`` is ``None`` for images without mask when those are
            allowed), sorted naturally by name.
        images_without_mask: image files with no matching mask.
        masks_without_image: mask files with no matching image.
    """

    pairs: list[dict] = field(default_factory=list)
    images_without_mask: list[Path] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)

    def labelled(self) -> list[dict]:
        """Pairs that have a mask, as a MONAI-style datalist."""
        return [p for p in self.pairs if p["label"] is not None]

    def __len__(self) -> int:
        return len(self.pairs)


def find_image_mask_pairs(
    root: str | os.PathLike,
    images_dir: str = "images",
    masks_dir: str | None = "masks",
    mask_suffix: str = "",
    image_exts: Sequence[str] = IMAGE_EXTS,
    mask_exts: Sequence[str] = MASK_EXTS,
    allow_missing_masks: bool = False,
) -> ImageMaskPairs:
    """Match ``<root>/<images_dir>/<name>.<ext>`` with ``<root>/<masks_dir>/<name><mask_suffix>.<ext>`` by stem.

    Args:
        root: dataset folder.
        images_dir: image sub-folder (``""`` for ``root`` itself).
        masks_dir: mask sub-folder; ``None`` for unlabelled folders (every pair gets ``label=None``).
        mask_suffix: text between the image stem and the mask extension, e.g. ``"_segmentation"`` (ISIC 2018).
        image_exts, mask_exts: accepted extensions (case-insensitive); other files are ignored.
        allow_missing_masks: keep images without a mask (``label=None``) instead of raising; they are always
            reported in ``images_without_mask`` and logged.

    Returns:
        :class:`ImageMaskPairs`.

    Raises:
        DataError: missing folders, no images, two images (or masks) with the same stem, images without masks when
            ``allow_missing_masks`` is false.

    Examples::

        ddti = find_image_mask_pairs("ddti")                                   # images/*.png + masks/*.gif
        isic = find_image_mask_pairs("ISIC2018", "images", "masks", mask_suffix="_segmentation")
    """
    root = Path(root)
    img_dir = root / images_dir if images_dir else root
    if not img_dir.is_dir():
        raise DataError(img_dir, "image folder does not exist")
    images: dict[str, Path] = {}
    for f in sorted(img_dir.iterdir()):
        sp = _split_name(f, image_exts) if f.is_file() and not f.name.startswith(".") else None
        if sp is None:
            continue
        if sp[0] in images:
            raise DataError(f, f"two images share the name {sp[0]!r} ({images[sp[0]].name}, {f.name})")
        images[sp[0]] = f
    if not images:
        raise DataError(img_dir, f"no images with extensions {list(image_exts)}")
    masks: dict[str, Path] = {}
    if masks_dir is not None:
        m_dir = root / masks_dir
        if not m_dir.is_dir():
            raise DataError(m_dir, "mask folder does not exist")
        for f in sorted(m_dir.iterdir()):
            sp = _split_name(f, mask_exts) if f.is_file() and not f.name.startswith(".") else None
            if sp is None:
                continue
            stem = sp[0]
            if mask_suffix:
                if not stem.endswith(mask_suffix):
                    continue
                stem = stem[: -len(mask_suffix)]
            if stem in masks:
                raise DataError(f, f"two masks share the name {stem!r} ({masks[stem].name}, {f.name})")
            masks[stem] = f
    out = ImageMaskPairs()
    for name in sort_ids(images):
        label = masks.get(name)
        if label is None and masks_dir is not None:
            out.images_without_mask.append(images[name])
        out.pairs.append({"name": name, "image": str(images[name]), "label": None if label is None else str(label)})
    out.masks_without_image = [masks[n] for n in sort_ids(masks) if n not in images]
    if out.images_without_mask:
        shown = ", ".join(p.name for p in out.images_without_mask[:5])
        more = "" if len(out.images_without_mask) <= 5 else f" (+{len(out.images_without_mask) - 5} more)"
        if not allow_missing_masks:
            raise DataError(root, f"{len(out.images_without_mask)} images have no mask: {shown}{more}")
        logger.warning("%s: %d images have no mask: %s%s", root, len(out.images_without_mask), shown, more)
    if out.masks_without_image:
        logger.warning("%s: %d masks have no image (ignored)", root, len(out.masks_without_image))
    return out


def binary_label_map(foreground: Sequence[int] | int = 255, name: str = "FG") -> LabelMap:
    """Label map 0 -> 0 and ``foreground`` value(s) -> 1 (e.g. 0/255 masks)."""
    fg = [int(foreground)] if isinstance(foreground, (int, np.integer)) else [int(v) for v in foreground]
    return LabelMap({0: 0, **{v: 1 for v in fg}}, {0: "BG", 1: name})


def read_label(
    path: str | os.PathLike,
    label_map: LabelMap | Mapping | None = None,
    *,
    threshold: float | None = None,
    ndim: int | None = None,
) -> Volume:
    """Read a label file and turn raw values into class ids.

    Args:
        path: any file :func:`~labelless.io.readers.read_volume` reads (float label files are fine).
        label_map: raw value -> class id (a :class:`LabelMap` or a config mapping such as ``{"255": 1}``;
            0 -> 0 is implied). ``None`` keeps the rounded raw values.
        threshold: binarise first (``raw >= threshold`` -> 1), e.g. 128 for masks resized with interpolation;
            ``label_map`` is then not used.
        ndim: as in :func:`read_volume` (``None`` accepts 2D and 3D).

    Returns:
        A :class:`Volume` of int16 class ids (2D masks have Z = 1).

    Raises:
        DataError: unreadable file, values outside the label map, non-integer values (naming the file).

    Examples::

        mask = read_label("masks/ISIC_0001.png", {"255": 1})
        cmr = read_label("label_3.nii.gz", get_preset("cmr").label_map)   # 200/500/600 -> 1/2/3
    """
    vol = read_volume(path, is_label=True, ndim=ndim)
    arr = vol.array
    if threshold is not None:
        return vol.with_array((arr >= threshold).astype(np.int16))
    lm = LabelMap.from_config(label_map)
    if lm is None:
        values = np.unique(arr)
        lm = LabelMap({int(round(float(v))): int(round(float(v))) for v in values})
    return vol.with_array(lm.apply(arr, source=vol.path))
