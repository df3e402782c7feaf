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

from .classes import ClassFolderDataset, read_exclude_list, skin_pools
from .episodes import ClassPairSource, ImagePool, MetaTrainEpisodes, as_image_tensor, as_mask_tensor, class_ids
from .export import EXPORT_CLASSES, EXPORT_SOURCES, export_classes
from .inference import FewShotImageInferenceRunner, list_query_files, support_mask_at
from .protocol import Predictor, TestEpisode, draw_test_episodes, episode_dice, evaluate_episodes, network_predictor
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
    "support_mask_at",
    "list_query_files",
    "FewShotImageInferenceRunner",
    "Predictor",
    "TestEpisode",
    "draw_test_episodes",
    "episode_dice",
    "network_predictor",
    "evaluate_episodes",
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
