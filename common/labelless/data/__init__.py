# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Dataset layouts, label maps and dataset presets."""

from __future__ import annotations

from .labelmap import LabelMap
from .presets import PRESETS, DatasetPreset, get_preset

__all__ = ["LabelMap", "DatasetPreset", "PRESETS", "get_preset"]
