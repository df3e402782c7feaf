# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation layer below every task package: metrics, result types, overlays and report writers."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first access by __getattr__
    from .metrics import (
        ConfusionCounts,
        average_surface_distance,
        binary_mask,
        confusion_counts,
        dice_from_counts,
        dice_per_image,
        dice_score,
        hd95,
        iou_from_counts,
        nanmean_with_count,
        segmentation_scores,
        spacing_zyx,
        surface_distances,
    )
    from .overlays import (
        PRED_COLOR,
        TITLE_HEIGHT,
        TRUTH_COLOR,
        grey_overlay,
        paint_mask,
        render_overlay,
        render_panels,
        rgb_overlay,
        rgb_to_uint8,
        safe_name,
        to_uint8,
        write_episode_png,
        write_inference_overlay,
    )
    from .reports import (
        GT_FREE_NOTE,
        PROTOCOL_NOTE,
        json_safe,
        mode_block,
        mode_results,
        result_to_dict,
        write_episode_reports,
        write_image_reports,
        write_reports,
    )
    from .results import EvaluationResult, FoldResult, ModeResult, OverlaySample, ScanScore, fold_label

_EXPORTS = {
    "segmentation_scores": "metrics",
    "binary_mask": "metrics",
    "iou_from_counts": "metrics",
    "ConfusionCounts": "metrics",
    "confusion_counts": "metrics",
    "dice_from_counts": "metrics",
    "dice_score": "metrics",
    "dice_per_image": "metrics",
    "spacing_zyx": "metrics",
    "surface_distances": "metrics",
    "hd95": "metrics",
    "average_surface_distance": "metrics",
    "nanmean_with_count": "metrics",
    "TITLE_HEIGHT": "overlays",
    "PRED_COLOR": "overlays",
    "TRUTH_COLOR": "overlays",
    "to_uint8": "overlays",
    "rgb_to_uint8": "overlays",
    "paint_mask": "overlays",
    "grey_overlay": "overlays",
    "rgb_overlay": "overlays",
    "render_panels": "overlays",
    "render_overlay": "overlays",
    "write_episode_png": "overlays",
    "write_inference_overlay": "overlays",
    "safe_name": "overlays",
    "GT_FREE_NOTE": "reports",
    "PROTOCOL_NOTE": "reports",
    "json_safe": "reports",
    "mode_results": "reports",
    "mode_block": "reports",
    "result_to_dict": "reports",
    "write_reports": "reports",
    "write_episode_reports": "reports",
    "write_image_reports": "reports",
    "ScanScore": "results",
    "OverlaySample": "results",
    "FoldResult": "results",
    "ModeResult": "results",
    "EvaluationResult": "results",
    "fold_label": "results",
}
_SUBMODULES = (
    "metrics",
    "overlays",
    "reports",
    "results",
)

__all__ = [
    "segmentation_scores",
    "binary_mask",
    "iou_from_counts",
    "ConfusionCounts",
    "confusion_counts",
    "dice_from_counts",
    "dice_score",
    "dice_per_image",
    "spacing_zyx",
    "surface_distances",
    "hd95",
    "average_surface_distance",
    "nanmean_with_count",
    "TITLE_HEIGHT",
    "PRED_COLOR",
    "TRUTH_COLOR",
    "to_uint8",
    "rgb_to_uint8",
    "paint_mask",
    "grey_overlay",
    "rgb_overlay",
    "render_panels",
    "render_overlay",
    "write_episode_png",
    "write_inference_overlay",
    "safe_name",
    "GT_FREE_NOTE",
    "PROTOCOL_NOTE",
    "json_safe",
    "mode_results",
    "mode_block",
    "result_to_dict",
    "write_reports",
    "write_episode_reports",
    "write_image_reports",
    "ScanScore",
    "OverlaySample",
    "FoldResult",
    "ModeResult",
    "EvaluationResult",
    "fold_label",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
