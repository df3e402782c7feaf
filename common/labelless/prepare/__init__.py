# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Offline preparation of raw downloads into the prepared-volume layout (fewshot_protocol.md §2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelless.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first access (labelless.lazy)
    from .chaos import CHAOS_PNG_LABELS, find_chaos_cases, prepare_chaos, read_chaos_case
    from .cmr import find_cmr_cases, prepare_cmr
    from .common import (
        SIZE_RULES,
        as_size2d,
        check_output_dir,
        clip_top_percentile,
        crop_border,
        crop_or_pad_center,
        finish_dataset,
        resample_image,
        resample_labels,
        resampled_size,
        window_to_range,
        write_case,
    )
    from .synapse import find_synapse_cases, prepare_synapse

_EXPORTS = {
    "prepare_chaos": "chaos",
    "find_chaos_cases": "chaos",
    "read_chaos_case": "chaos",
    "CHAOS_PNG_LABELS": "chaos",
    "prepare_cmr": "cmr",
    "find_cmr_cases": "cmr",
    "SIZE_RULES": "common",
    "clip_top_percentile": "common",
    "window_to_range": "common",
    "resampled_size": "common",
    "resample_image": "common",
    "resample_labels": "common",
    "crop_or_pad_center": "common",
    "crop_border": "common",
    "as_size2d": "common",
    "check_output_dir": "common",
    "write_case": "common",
    "finish_dataset": "common",
    "prepare_synapse": "synapse",
    "find_synapse_cases": "synapse",
}
_SUBMODULES = (
    "chaos",
    "cmr",
    "common",
    "synapse",
)

__all__ = [
    "prepare_chaos",
    "find_chaos_cases",
    "read_chaos_case",
    "CHAOS_PNG_LABELS",
    "prepare_cmr",
    "find_cmr_cases",
    "SIZE_RULES",
    "clip_top_percentile",
    "window_to_range",
    "resampled_size",
    "resample_image",
    "resample_labels",
    "crop_or_pad_center",
    "crop_border",
    "as_size2d",
    "check_output_dir",
    "write_case",
    "finish_dataset",
    "prepare_synapse",
    "find_synapse_cases",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, __all__)
