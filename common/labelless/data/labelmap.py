# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Label maps: raw label values on disk -> contiguous class ids with display names."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from labelless.errors import DataError

__all__ = ["LabelMap"]


@dataclass(frozen=True)
class LabelMap:
    """Turns raw label values into class ids and names.

    Args:
        values: raw value -> class id (0 = background). Every raw value that may occur on disk must be listed;
            other values are rejected with an error naming the file.
        names: class id -> display name (names are for display; code refers to classes by id).

    Float-valued label files are accepted: values are rounded to the nearest integer first, and a value further
    than ``tolerance`` from an integer is rejected.

    Examples::

        cmr = LabelMap({0: 0, 200: 1, 500: 2, 600: 3}, {0: "BG", 1: "LV-MYO", 2: "LV-BP", 3: "RV"})
        ids = cmr.apply(raw_label, source="label_3.nii.gz")
    """

    values: Mapping[int, int]
    names: Mapping[int, str] = field(default_factory=dict)
    tolerance: float = 1e-3

    @classmethod
    def identity(cls, names: Mapping[int, str]) -> LabelMap:
        """A label map whose raw values already are the class ids listed in ``names``."""
        return cls({int(k): int(k) for k in names}, {int(k): str(v) for k, v in names.items()})

    @classmethod
    def from_config(cls, cfg: Mapping | LabelMap | None, names: Mapping | None = None) -> LabelMap | None:
        """Build from a config value: ``{"200": 1, ...}`` (JSON keys are strings) or a ``LabelMap``.

        Raw 0 maps to background (0) unless the mapping says otherwise, so ``{"255": 1}`` accepts 0/255 masks.
        """
        if cfg is None or isinstance(cfg, LabelMap):
            return cfg
        values = {int(float(k)): int(v) for k, v in dict(cfg).items()}
        values.setdefault(0, 0)
        nm = {int(k): str(v) for k, v in dict(names or {}).items()}
        return cls(values, nm)

    @property
    def class_ids(self) -> list[int]:
        """Sorted class ids, background included."""
        return sorted(set(int(v) for v in self.values.values()) | {0})

    def name(self, class_id: int) -> str:
        return str(self.names.get(int(class_id), f"class_{int(class_id)}"))

    def id_of(self, name_or_id: str | int) -> int:
        """Class id from a name (case-insensitive, ``KID_l`` == ``KID_L``) or an id."""
        if isinstance(name_or_id, (int, np.integer)):
            return int(name_or_id)
        s = str(name_or_id)
        if s.lstrip("-").isdigit():
            return int(s)
        for cid, nm in self.names.items():
            if nm.upper() == s.upper():
                return int(cid)
        raise DataError(None, f"class {s!r} is not in the label map (known: {dict(self.names)})")

    def apply(self, label: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
        """Map a raw label array (any numeric dtype) to class ids (int16). Raises ``DataError`` on bad values."""
        arr = np.asarray(label)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise DataError(source, "label contains NaN or infinite values")
            rounded = np.rint(arr)
            if arr.size and np.max(np.abs(arr - rounded)) > self.tolerance:
                raise DataError(source, "label contains non-integer values (is this an image rather than a label?)")
            arr = rounded.astype(np.int64)
        else:
            arr = arr.astype(np.int64, copy=False)
        uniq = np.unique(arr)
        unknown = [int(u) for u in uniq if int(u) not in self.values]
        if unknown:
            raise DataError(
                source, f"label values {unknown} are not in the label map (allowed raw values: {sorted(self.values)})"
            )
        out = np.zeros(arr.shape, dtype=np.int16)
        for raw in uniq:
            out[arr == raw] = self.values[int(raw)]
        return out
