# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Semi-supervised ultrasound segmentation (SABR-Net, sabrnet.md): data layer, synthetic set, HC18 measures."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first access by __getattr__
    from .data import (
        DEFAULT_FRACTIONS,
        SEMISUP_EVAL_SPLITS,
        SEMISUP_LAYOUTS,
        SemiSupDataset,
        SemiSupItem,
        SemiSupSplit,
        build_split,
        case_id,
        detect_layout,
        labeled_cases,
        load_label,
        load_ultrasound,
        read_ultrasound,
        split_cases,
        ultrasound_size,
    )
    from .hc import (
        ELLIPSE_FIT_METHODS,
        Ellipse,
        ellipse_circumference,
        ellipse_mask,
        fit_ellipse,
        fit_ellipse_points,
        hc_errors,
        head_circumference_mm,
    )
    from .inference import SemiSupInferenceRunner, inference_inputs, list_ultrasound_inputs, read_pixel_sizes
    from .protocol import SemiSupEvaluationRunner, evaluate_items, image_scores, predict_masks, write_semisup_reports
    from .synthetic import (
        SYNTHETIC_ULTRASOUND_VERSION,
        ULTRASOUND_PHANTOM_KINDS,
        default_ultrasound_dir,
        make_ultrasound_phantom,
        write_synthetic_ultrasound,
    )
    from .workflow import (
        STAGES,
        PairedSemiSupDataset,
        SemiSupValidationHandler,
        build_optimizer,
        build_trainer,
        load_stage_weights,
        predict_logits,
        resolve_split,
        training_dataset,
    )

_EXPORTS = {
    "SEMISUP_LAYOUTS": "data",
    "SEMISUP_EVAL_SPLITS": "data",
    "DEFAULT_FRACTIONS": "data",
    "SemiSupItem": "data",
    "SemiSupSplit": "data",
    "detect_layout": "data",
    "case_id": "data",
    "split_cases": "data",
    "labeled_cases": "data",
    "build_split": "data",
    "read_ultrasound": "data",
    "ultrasound_size": "data",
    "load_ultrasound": "data",
    "load_label": "data",
    "SemiSupDataset": "data",
    "ELLIPSE_FIT_METHODS": "hc",
    "Ellipse": "hc",
    "fit_ellipse": "hc",
    "fit_ellipse_points": "hc",
    "ellipse_mask": "hc",
    "ellipse_circumference": "hc",
    "head_circumference_mm": "hc",
    "hc_errors": "hc",
    "inference_inputs": "inference",
    "list_ultrasound_inputs": "inference",
    "read_pixel_sizes": "inference",
    "SemiSupInferenceRunner": "inference",
    "predict_masks": "protocol",
    "image_scores": "protocol",
    "evaluate_items": "protocol",
    "SemiSupEvaluationRunner": "protocol",
    "write_semisup_reports": "protocol",
    "ULTRASOUND_PHANTOM_KINDS": "synthetic",
    "SYNTHETIC_ULTRASOUND_VERSION": "synthetic",
    "make_ultrasound_phantom": "synthetic",
    "write_synthetic_ultrasound": "synthetic",
    "default_ultrasound_dir": "synthetic",
    "STAGES": "workflow",
    "resolve_split": "workflow",
    "PairedSemiSupDataset": "workflow",
    "training_dataset": "workflow",
    "build_optimizer": "workflow",
    "build_trainer": "workflow",
    "load_stage_weights": "workflow",
    "predict_logits": "workflow",
    "SemiSupValidationHandler": "workflow",
}
_SUBMODULES = (
    "data",
    "hc",
    "inference",
    "protocol",
    "synthetic",
    "workflow",
)

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
    "ELLIPSE_FIT_METHODS",
    "Ellipse",
    "fit_ellipse",
    "fit_ellipse_points",
    "ellipse_mask",
    "ellipse_circumference",
    "head_circumference_mm",
    "hc_errors",
    "inference_inputs",
    "list_ultrasound_inputs",
    "read_pixel_sizes",
    "SemiSupInferenceRunner",
    "predict_masks",
    "image_scores",
    "evaluate_items",
    "SemiSupEvaluationRunner",
    "write_semisup_reports",
    "ULTRASOUND_PHANTOM_KINDS",
    "SYNTHETIC_ULTRASOUND_VERSION",
    "make_ultrasound_phantom",
    "write_synthetic_ultrasound",
    "default_ultrasound_dir",
    "STAGES",
    "resolve_split",
    "PairedSemiSupDataset",
    "training_dataset",
    "build_optimizer",
    "build_trainer",
    "load_stage_weights",
    "predict_logits",
    "SemiSupValidationHandler",
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
