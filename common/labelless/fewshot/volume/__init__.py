# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Few-shot machinery shared by SSL-ALPNet, DSPNet and PSMNet: folds, episodes, the evaluation protocol."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first access by __getattr__
    from .baseline import IntensityFeatures, IntensityPrototypePredictor
    from .episodes import (
        SelfSupervisedEpisodeDataset,
        build_slice_pool,
        feature_grid_size,
        is_degenerate_mask,
        normalize_scans,
    )
    from .folds import FoldSplit, fold_boundaries, fold_split
    from .inference import NOT_QUERY_PREFIXES, NOT_QUERY_SUFFIXES, FewShotVolumeInferenceRunner, list_query_files
    from .protocol import (
        MODES,
        Predictor,
        chunk_of_slice,
        evaluate,
        evaluate_fold,
        prediction_filename,
        protocol_chunks,
        score_predictions,
        score_scan,
        scored_range,
        segment_volume,
        support_relative_chunks,
        support_relative_extent,
        support_relative_slices,
        support_shot_slices,
        support_slices,
    )
    from .superpixels import (
        BODYMASK_NAME,
        MANIFEST_NAME,
        RAW_NAME,
        SUPERPIX_NAME,
        default_derived_dir,
        precompute_superpixels,
        process_scan,
        superpixel_params,
    )
    from .workflow import (
        FewShotVolumeEvaluationRunner,
        checkpoint_name,
        effective_preset,
        fold_norm_stats,
        inference_inputs,
        resolve_dataset,
        resolve_derived_dir,
        training_episodes,
    )

_EXPORTS = {
    "IntensityFeatures": "baseline",
    "IntensityPrototypePredictor": "baseline",
    "build_slice_pool": "episodes",
    "normalize_scans": "episodes",
    "is_degenerate_mask": "episodes",
    "feature_grid_size": "episodes",
    "SelfSupervisedEpisodeDataset": "episodes",
    "FoldSplit": "folds",
    "fold_boundaries": "folds",
    "fold_split": "folds",
    "NOT_QUERY_PREFIXES": "inference",
    "NOT_QUERY_SUFFIXES": "inference",
    "list_query_files": "inference",
    "FewShotVolumeInferenceRunner": "inference",
    "MODES": "protocol",
    "Predictor": "protocol",
    "support_slices": "protocol",
    "support_shot_slices": "protocol",
    "chunk_of_slice": "protocol",
    "protocol_chunks": "protocol",
    "support_relative_extent": "protocol",
    "support_relative_chunks": "protocol",
    "support_relative_slices": "protocol",
    "scored_range": "protocol",
    "segment_volume": "protocol",
    "score_scan": "protocol",
    "evaluate_fold": "protocol",
    "evaluate": "protocol",
    "score_predictions": "protocol",
    "prediction_filename": "protocol",
    "SUPERPIX_NAME": "superpixels",
    "BODYMASK_NAME": "superpixels",
    "RAW_NAME": "superpixels",
    "MANIFEST_NAME": "superpixels",
    "superpixel_params": "superpixels",
    "default_derived_dir": "superpixels",
    "process_scan": "superpixels",
    "precompute_superpixels": "superpixels",
    "effective_preset": "workflow",
    "resolve_dataset": "workflow",
    "resolve_derived_dir": "workflow",
    "training_episodes": "workflow",
    "checkpoint_name": "workflow",
    "FewShotVolumeEvaluationRunner": "workflow",
    "inference_inputs": "workflow",
    "fold_norm_stats": "workflow",
}
_SUBMODULES = (
    "baseline",
    "episodes",
    "folds",
    "inference",
    "protocol",
    "superpixels",
    "workflow",
)

__all__ = [
    "IntensityFeatures",
    "IntensityPrototypePredictor",
    "build_slice_pool",
    "normalize_scans",
    "is_degenerate_mask",
    "feature_grid_size",
    "SelfSupervisedEpisodeDataset",
    "FoldSplit",
    "fold_boundaries",
    "fold_split",
    "NOT_QUERY_PREFIXES",
    "NOT_QUERY_SUFFIXES",
    "list_query_files",
    "FewShotVolumeInferenceRunner",
    "MODES",
    "Predictor",
    "support_slices",
    "support_shot_slices",
    "chunk_of_slice",
    "protocol_chunks",
    "support_relative_extent",
    "support_relative_chunks",
    "support_relative_slices",
    "scored_range",
    "segment_volume",
    "score_scan",
    "evaluate_fold",
    "evaluate",
    "score_predictions",
    "prediction_filename",
    "SUPERPIX_NAME",
    "BODYMASK_NAME",
    "RAW_NAME",
    "MANIFEST_NAME",
    "superpixel_params",
    "default_derived_dir",
    "process_scan",
    "precompute_superpixels",
    "effective_preset",
    "resolve_dataset",
    "resolve_derived_dir",
    "training_episodes",
    "checkpoint_name",
    "FewShotVolumeEvaluationRunner",
    "inference_inputs",
    "fold_norm_stats",
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
