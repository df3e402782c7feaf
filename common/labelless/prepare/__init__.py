# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Offline preparation of raw downloads into the prepared-volume layout (fewshot_protocol.md §2)."""

from __future__ import annotations

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
