# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""2D few-shot segmentation data of the FSMS bundle (fsms.md): class folders, target pools, synthetic data, export.

- :mod:`labelless.fewshot.image.classes`: :class:`ClassFolderDataset` (layouts A/B), :class:`ImageFolderPool`,
  :func:`split_pool`, :func:`skin_pools`, and the image/mask reading rules (RGB in [0, 1], 0/1 masks).
- :mod:`labelless.fewshot.image.synthetic`: synthetic shape classes, skin-lesion phantoms, :func:`default_fsms_data`.
- :mod:`labelless.fewshot.image.export`: :func:`export_classes` (labelled 2D classes from the shared data).
- :mod:`labelless.fewshot.image.episodes`: :class:`MetaTrainEpisodes` (T one-way K-shot tasks + U unlabelled images).
- :mod:`labelless.fewshot.image.protocol`: the reference episode protocol (:func:`evaluate_episodes`, pooled
  :func:`episode_dice`, seeded :func:`draw_test_episodes`) and :func:`network_predictor`.
- :mod:`labelless.fewshot.image.inference`: :class:`FewShotImageInferenceRunner` (PNG masks and overlays of new images).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelless.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first access (labelless.lazy)
    from .classes import ClassFolderDataset, read_exclude_list, skin_pools
    from .episodes import ClassPairSource, ImagePool, MetaTrainEpisodes, as_image_tensor, as_mask_tensor, class_ids
    from .export import EXPORT_CLASSES, EXPORT_SOURCES, export_classes
    from .inference import (
        MIN_IMAGE_SIDE,
        OUTPUT_SUFFIXES,
        FewShotImageInferenceRunner,
        list_query_files,
        support_mask_at,
    )
    from .protocol import (
        SUPPORT_THRESHOLD_GRID,
        Predictor,
        TestEpisode,
        draw_test_episodes,
        episode_dice,
        evaluate_episodes,
        network_predictor,
        recentre_probabilities,
        support_calibrated_predictor,
        support_thresholds,
    )
    from .pseudo import (
        DarkRegionClassSource,
        PseudoLabelClassSource,
        dark_region_mask,
        pseudo_label_source,
        random_view,
    )
    from .synthetic import (
        SHAPE_FAMILIES,
        SYNTHETIC_VERSION,
        TEXTURE_KINDS,
        default_fsms_data,
        make_shape_class,
        make_skin_phantom,
        render_shape_instance,
        write_shape_classes,
        write_skin_phantoms,
    )
    from .workflow import (
        FewShotImageEvaluationRunner,
        UnionClassSource,
        evaluate_pools,
        image_mask_pool,
        inference_inputs,
        meta_class_source,
        target_pools,
    )

_EXPORTS = {
    "read_exclude_list": "classes",
    "ClassFolderDataset": "classes",
    "skin_pools": "classes",
    "ClassPairSource": "episodes",
    "ImagePool": "episodes",
    "class_ids": "episodes",
    "MetaTrainEpisodes": "episodes",
    "as_image_tensor": "episodes",
    "as_mask_tensor": "episodes",
    "EXPORT_SOURCES": "export",
    "EXPORT_CLASSES": "export",
    "export_classes": "export",
    "MIN_IMAGE_SIDE": "inference",
    "OUTPUT_SUFFIXES": "inference",
    "support_mask_at": "inference",
    "list_query_files": "inference",
    "FewShotImageInferenceRunner": "inference",
    "Predictor": "protocol",
    "TestEpisode": "protocol",
    "draw_test_episodes": "protocol",
    "episode_dice": "protocol",
    "network_predictor": "protocol",
    "SUPPORT_THRESHOLD_GRID": "protocol",
    "support_thresholds": "protocol",
    "recentre_probabilities": "protocol",
    "support_calibrated_predictor": "protocol",
    "evaluate_episodes": "protocol",
    "PseudoLabelClassSource": "pseudo",
    "DarkRegionClassSource": "pseudo",
    "dark_region_mask": "pseudo",
    "random_view": "pseudo",
    "pseudo_label_source": "pseudo",
    "SHAPE_FAMILIES": "synthetic",
    "TEXTURE_KINDS": "synthetic",
    "SYNTHETIC_VERSION": "synthetic",
    "make_shape_class": "synthetic",
    "render_shape_instance": "synthetic",
    "make_skin_phantom": "synthetic",
    "write_shape_classes": "synthetic",
    "write_skin_phantoms": "synthetic",
    "default_fsms_data": "synthetic",
    "UnionClassSource": "workflow",
    "meta_class_source": "workflow",
    "target_pools": "workflow",
    "image_mask_pool": "workflow",
    "inference_inputs": "workflow",
    "evaluate_pools": "workflow",
    "FewShotImageEvaluationRunner": "workflow",
}
_SUBMODULES = (
    "classes",
    "episodes",
    "export",
    "inference",
    "protocol",
    "pseudo",
    "synthetic",
    "workflow",
)

__all__ = [
    "read_exclude_list",
    "ClassFolderDataset",
    "skin_pools",
    "ClassPairSource",
    "ImagePool",
    "class_ids",
    "MetaTrainEpisodes",
    "as_image_tensor",
    "as_mask_tensor",
    "EXPORT_SOURCES",
    "EXPORT_CLASSES",
    "export_classes",
    "MIN_IMAGE_SIDE",
    "OUTPUT_SUFFIXES",
    "support_mask_at",
    "list_query_files",
    "FewShotImageInferenceRunner",
    "Predictor",
    "TestEpisode",
    "draw_test_episodes",
    "episode_dice",
    "network_predictor",
    "SUPPORT_THRESHOLD_GRID",
    "support_thresholds",
    "recentre_probabilities",
    "support_calibrated_predictor",
    "evaluate_episodes",
    "PseudoLabelClassSource",
    "DarkRegionClassSource",
    "dark_region_mask",
    "random_view",
    "pseudo_label_source",
    "SHAPE_FAMILIES",
    "TEXTURE_KINDS",
    "SYNTHETIC_VERSION",
    "make_shape_class",
    "render_shape_instance",
    "make_skin_phantom",
    "write_shape_classes",
    "write_skin_phantoms",
    "default_fsms_data",
    "UnionClassSource",
    "meta_class_source",
    "target_pools",
    "image_mask_pool",
    "inference_inputs",
    "evaluate_pools",
    "FewShotImageEvaluationRunner",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, __all__)
