# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The prepared-volume layout (``image_<id>.nii.gz``, ``label_<id>.nii.gz``, ``classmap_1.json``)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from labelless.errors import DataError
from labelless.io.readers import read_volume
from labelless.io.volume import Volume
from labelless.utils import sort_ids, write_json_atomic

from .labelmap import LabelMap
from .presets import PRESETS, DatasetPreset, get_preset

__all__ = ["PreparedVolumeDataset", "compute_classmap", "IMAGE_RE"]

IMAGE_RE = re.compile(r"^image_(?P<pid>[^.]+)\.(nii\.gz|nii)$")
_SUPERPIXEL_NAMES = ("superpix_{pid}.nii.gz", "superpix-MIDDLE_{pid}.nii.gz")
_BODYMASK_NAMES = ("bodymask_{pid}.nii.gz",)


def compute_classmap(labels: Mapping[str, np.ndarray], label_map: LabelMap, threshold: int = 1) -> dict:
    """Class-slice index (fewshot_protocol §2.4): {class name: {pid: [z with >= threshold pixels == class id]}}.

    Args:
        labels: pid -> (Z, H, W) array of class ids (already mapped).
        label_map: gives the class ids and names (background included, as in the reference files).
        threshold: minimum number of pixels of the class in a slice.
    """
    out: dict[str, dict[str, list[int]]] = {}
    for cid in label_map.class_ids:
        name = label_map.name(cid)
        out[name] = {}
        for pid in sort_ids(labels):
            counts = (np.asarray(labels[pid]) == cid).reshape(labels[pid].shape[0], -1).sum(axis=1)
            out[name][str(pid)] = [int(z) for z in np.nonzero(counts >= threshold)[0]]
    return out


def _presets_fitting(label: np.ndarray, exclude: str | None = None) -> list[str]:
    """Names of the dataset presets (real data first, phantoms last) whose label map accepts every value of
    ``label``; used to name the right preset when a label does not fit the chosen one."""
    arr = np.asarray(label)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or (arr.size and np.max(np.abs(arr - np.rint(arr))) > 1e-3):
            return []
        arr = np.rint(arr)
    values = {int(v) for v in np.unique(arr)}
    names = [n for n, p in PRESETS.items() if n != exclude and values <= set(p.label_map.values)]
    return sorted(names, key=lambda n: (n.startswith("phantom_"), n))


class PreparedVolumeDataset:
    """A folder in the prepared layout of fewshot_protocol §1.

    Args:
        root: folder with ``image_<pid>.nii.gz`` (and ``label_<pid>.nii.gz`` for labelled scans).
        preset: dataset preset (name or object); gives the label map unless ``label_map`` is set.
        label_map: overrides the preset's label map (e.g. ``{"200": 1, "500": 2, "600": 3}`` for MS-CMRSeg).
        derived_dir: folder with precomputed superpixels / body masks (``superpix_<pid>.nii.gz`` or the reference
            name ``superpix-MIDDLE_<pid>.nii.gz``); defaults to ``root``.
        cache: keep loaded volumes in memory.

    Pids are sorted as integers when they are integers. Labels are rounded, mapped to class ids and checked
    against the label map; image and label grids must match.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        preset: str | DatasetPreset = "chaos",
        label_map: LabelMap | Mapping | None = None,
        derived_dir: str | os.PathLike | None = None,
        cache: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        self.preset = get_preset(preset)
        names = self.preset.label_map.names
        self.label_map = LabelMap.from_config(label_map, names) or self.preset.label_map
        if isinstance(label_map, Mapping) and not self.label_map.names:
            self.label_map = LabelMap(self.label_map.values, names)
        self.derived_dir = Path(derived_dir) if derived_dir is not None else self.root
        found = {}
        for f in self.root.iterdir():
            m = IMAGE_RE.match(f.name)
            if m:
                found[m.group("pid")] = f
        if not found:
            raise DataError(self.root, "no image_<id>.nii.gz files found (expected the prepared layout)")
        self.pids: list[str] = sort_ids(found)
        self._image_paths = found
        self._cache = cache
        self._images: dict[str, Volume] = {}
        self._labels: dict[str, Volume] = {}
        self._classmap: dict | None = None

    def __len__(self) -> int:
        return len(self.pids)

    def __repr__(self) -> str:
        return f"PreparedVolumeDataset(root={str(self.root)!r}, n={len(self)}, preset={self.preset.name!r})"

    # ------------------------------------------------------------------ paths
    def image_path(self, pid: str | int) -> Path:
        pid = str(pid)
        if pid not in self._image_paths:
            raise DataError(self.root, f"no image for scan id {pid!r} (available: {self.pids})")
        return self._image_paths[pid]

    def label_path(self, pid: str | int) -> Path:
        img = self.image_path(pid)
        return img.with_name(img.name.replace("image_", "label_", 1))

    def has_label(self, pid: str | int) -> bool:
        return self.label_path(pid).exists()

    def _derived_path(self, pid: str | int, patterns: Sequence[str]) -> Path | None:
        for folder in dict.fromkeys([self.derived_dir, self.root]):
            for pat in patterns:
                p = folder / pat.format(pid=pid)
                if p.exists():
                    return p
        return None

    def superpixel_path(self, pid: str | int) -> Path | None:
        """Existing superpixel map of ``pid`` or ``None``."""
        return self._derived_path(pid, _SUPERPIXEL_NAMES)

    def bodymask_path(self, pid: str | int) -> Path | None:
        return self._derived_path(pid, _BODYMASK_NAMES)

    # ------------------------------------------------------------------ loading
    def load_image(self, pid: str | int) -> Volume:
        """Raw (not normalised) image as float32 (Z, H, W)."""
        pid = str(pid)
        if pid in self._images:
            return self._images[pid]
        vol = read_volume(self.image_path(pid))
        if self._cache:
            self._images[pid] = vol
        return vol

    def load_label(self, pid: str | int) -> Volume:
        """Label as int16 class ids (Z, H, W), checked against the label map and the image grid."""
        pid = str(pid)
        if pid in self._labels:
            return self._labels[pid]
        path = self.label_path(pid)
        if not path.exists():
            raise DataError(path, f"label file missing for scan {pid}")
        raw = read_volume(path, is_label=True)
        try:
            arr = self.label_map.apply(raw.array, source=path)
        except DataError as e:
            fits = _presets_fitting(raw.array, exclude=self.preset.name)
            if not fits:
                raise
            raise DataError(path, f"{e.problem}; they fit the {fits[0]!r} preset: use dataset_preset={fits[0]} "
                                  f"(--dataset_preset {fits[0]})") from e  # fmt: skip
        lab = raw.with_array(arr)
        img = self.load_image(pid)
        if lab.shape != img.shape:
            raise DataError(path, f"label grid {lab.shape} does not match image grid {img.shape} ({img.path})")
        if not np.allclose(lab.affine, img.affine, atol=1e-2):
            raise DataError(path, f"label geometry (affine) differs from the image's ({img.path})")
        if self._cache:
            self._labels[pid] = lab
        return lab

    def load_superpixels(self, pid: str | int) -> Volume:
        p = self.superpixel_path(pid)
        if p is None:
            raise DataError(self.derived_dir, f"no superpixel map for scan {pid}; run `labelless superpixels` first")
        sp = read_volume(p, is_label=True)
        sp = sp.with_array(np.rint(sp.array).astype(np.int32))
        if sp.shape != self.load_image(pid).shape:
            raise DataError(p, f"superpixel grid {sp.shape} does not match image grid {self.load_image(pid).shape}")
        return sp

    # ------------------------------------------------------------------ class-slice index
    def classmap(self, threshold: int = 1) -> dict:
        """The class-slice index: read ``classmap_<T>.json`` if present (aliases accepted), else computed."""
        if threshold == 1 and self._classmap is not None:
            return self._classmap
        f = self.root / f"classmap_{threshold}.json"
        if f.exists():
            try:
                cm = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f, f"cannot parse class-slice index ({e})") from e
            for alias, canon in self.preset.classmap_aliases.items():
                if alias in cm and canon not in cm:
                    cm[canon] = cm.pop(alias)
        else:
            cm = self.compute_classmap(threshold)
        if threshold == 1:
            self._classmap = cm
        return cm

    def compute_classmap(self, threshold: int = 1) -> dict:
        """Compute the class-slice index from the labels (all labelled scans)."""
        labels = {pid: self.load_label(pid).array for pid in self.pids if self.has_label(pid)}
        return compute_classmap(labels, self.label_map, threshold)

    def write_classmap(self, out_dir: str | os.PathLike, threshold: int = 1) -> Path:
        """Compute and write ``classmap_<T>.json`` to ``out_dir`` (atomically)."""
        return write_json_atomic(Path(out_dir) / f"classmap_{threshold}.json", self.compute_classmap(threshold))

    def class_slices(self, class_id: int, pid: str | int) -> list[int]:
        """Sorted z indices of scan ``pid`` that contain ``class_id`` (T = 1).

        Raises:
            DataError: the class, or the scan, is missing from the class-slice index (a scan absent from the index
                has unknown class slices; treating it as "no slice" would e.g. leave test-class slices in the
                Setting-2 training pool).
        """
        name = self.label_map.name(class_id)
        cm = self.classmap(1)
        index = self.root / "classmap_1.json"
        if name not in cm:
            raise DataError(index, f"class {name!r} missing from the class-slice index")
        entry = cm[name]
        if str(pid) not in entry:
            why = (
                "the index is stale or belongs to other data"
                if self.has_label(pid)
                else "the scan has no label file, so its class slices are unknown"
            )
            raise DataError(index, f"scan {pid} is missing from the class-slice index of class {name!r} ({why})")
        return sorted(int(z) for z in entry[str(pid)])
