# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Dataset presets of the few-shot protocol (fewshot_protocol.md §1, §5, §6.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from labelless.errors import ConfigError

from .labelmap import LabelMap

__all__ = ["DatasetPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class DatasetPreset:
    """Everything dataset-specific the few-shot machinery needs.

    Args:
        name: preset key (``chaos``, ``synapse``, ``cmr``, ``phantom_abdomen``, ``phantom_cardiac``).
        label_map: raw values -> class ids and names.
        test_classes: class ids evaluated in Setting 1.
        setting2_label_sets: label set -> class ids held out (and whose slices are removed from training).
        normalization: ``"volume_zscore"`` (MR) or ``"fold_zscore"`` (CT, statistics over the fold's training scans).
        body_threshold: absolute threshold of the body mask, or ``None`` to use ``body_threshold_rel``.
        body_threshold_rel: fraction of the 99.5th percentile used when ``body_threshold`` is ``None``.
        n_folds: number of cross-validation folds.
        classmap_names: class id -> key used in ``classmap_1.json`` files of this dataset (aliases accepted).
    """

    name: str
    label_map: LabelMap
    test_classes: tuple[int, ...]
    setting2_label_sets: dict[int, tuple[int, ...]] = field(default_factory=dict)
    normalization: str = "volume_zscore"
    body_threshold: float | None = 1e-4 + 50
    body_threshold_rel: float = 0.05
    n_folds: int = 5
    classmap_aliases: dict[str, str] = field(default_factory=dict)

    def test_classes_for(self, setting: int, label_set: int = 0) -> tuple[int, ...]:
        """Test classes of Setting 1 or of a Setting-2 label set."""
        if int(setting) == 1:
            return self.test_classes
        if int(setting) != 2:
            raise ConfigError(f"setting must be 1 or 2, got {setting!r}")
        if not self.setting2_label_sets:
            raise ConfigError(f"dataset {self.name!r} has no Setting 2 (only Setting 1 is defined for it)")
        if int(label_set) not in self.setting2_label_sets:
            raise ConfigError(
                f"label_set must be one of {sorted(self.setting2_label_sets)} for {self.name!r}, got {label_set!r}"
            )
        return self.setting2_label_sets[int(label_set)]


_CHAOS = LabelMap.identity({0: "BG", 1: "LIVER", 2: "RK", 3: "LK", 4: "SPLEEN"})
_SYNAPSE_NAMES = [
    "BGD", "SPLEEN", "KID_R", "KID_L", "GALLBLADDER", "ESOPHAGUS", "LIVER", "STOMACH",
    "AORTA", "IVC", "PS_VEIN", "PANCREAS", "AG_R", "AG_L",
]  # fmt: skip
_SYNAPSE = LabelMap.identity(dict(enumerate(_SYNAPSE_NAMES)))
_CMR = LabelMap({0: 0, 200: 1, 500: 2, 600: 3}, {0: "BG", 1: "LV-MYO", 2: "LV-BP", 3: "RV"})

PRESETS: dict[str, DatasetPreset] = {
    "chaos": DatasetPreset(
        name="chaos",
        label_map=_CHAOS,
        test_classes=(1, 2, 3, 4),
        setting2_label_sets={0: (2, 3), 1: (1, 4)},
        normalization="volume_zscore",
        body_threshold=1e-4 + 50,
    ),
    "synapse": DatasetPreset(
        name="synapse",
        label_map=_SYNAPSE,
        test_classes=(1, 2, 3, 6),
        setting2_label_sets={0: (2, 3), 1: (1, 6)},
        normalization="fold_zscore",
        body_threshold=1e-4,
        classmap_aliases={"KID_l": "KID_L"},
    ),
    "cmr": DatasetPreset(
        name="cmr",
        label_map=_CMR,
        test_classes=(2, 1, 3),
        setting2_label_sets={},
        normalization="volume_zscore",
        body_threshold=None,
        body_threshold_rel=0.05,
    ),
    # Synthetic phantoms written by labelless.data.phantoms (the embedded default).
    "phantom_abdomen": DatasetPreset(
        name="phantom_abdomen",
        label_map=_CHAOS,
        test_classes=(1, 2, 3, 4),
        setting2_label_sets={0: (2, 3), 1: (1, 4)},
        normalization="volume_zscore",
        body_threshold=1e-4 + 50,
    ),
    "phantom_cardiac": DatasetPreset(
        name="phantom_cardiac",
        label_map=_CMR,
        test_classes=(2, 1, 3),
        normalization="volume_zscore",
        body_threshold=None,
        body_threshold_rel=0.05,
    ),
}


def get_preset(name: str | DatasetPreset) -> DatasetPreset:
    """Look up a preset by name (case-insensitive)."""
    if isinstance(name, DatasetPreset):
        return name
    key = str(name).lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown dataset preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[key]
