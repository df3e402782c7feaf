# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""2D few-shot segmentation data of the FSMS bundle (fsms.md): class folders, target pools, synthetic data, export.

- :mod:`labelless.fewshot2d.classes`: :class:`ClassFolderDataset` (layouts A/B), :class:`ImageFolderPool`,
  :func:`split_pool`, :func:`skin_pools`, and the image/mask reading rules (RGB in [0, 1], 0/1 masks).
- :mod:`labelless.fewshot2d.synthetic`: synthetic shape classes, skin-lesion phantoms, :func:`default_fsms_data`.
- :mod:`labelless.fewshot2d.export`: :func:`export_classes` (labelled 2D classes from the shared data).
- :mod:`labelless.fewshot2d.episodes`: :class:`MetaTrainEpisodes` (T one-way K-shot tasks + U unlabelled images).
- :mod:`labelless.fewshot2d.protocol`: the reference episode protocol (:func:`evaluate_episodes`, pooled
  :func:`episode_dice`, seeded :func:`draw_test_episodes`) and :func:`network_predictor`.
- :mod:`labelless.fewshot2d.inference`: :class:`FewShot2DInferenceRunner` (PNG masks and overlays of new images).
"""

from __future__ import annotations

from .classes import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    ClassFolderDataset,
    ImageFolderPool,
    binarize_mask,
    load_mask,
    load_rgb,
    mask_on_grid,
    read_exclude_list,
    resize_image,
    resize_mask,
    skin_pools,
    split_pool,
)
from .episodes import ClassPairSource, ImagePool, MetaTrainEpisodes
from .export import EXPORT_CLASSES, EXPORT_SOURCES, export_classes, scale_to_uint8
from .inference import FewShot2DInferenceRunner
from .protocol import draw_test_episodes, episode_dice, evaluate_episodes, network_predictor
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

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "ClassFolderDataset",
    "ImageFolderPool",
    "binarize_mask",
    "load_mask",
    "load_rgb",
    "mask_on_grid",
    "read_exclude_list",
    "resize_image",
    "resize_mask",
    "skin_pools",
    "split_pool",
    "EXPORT_CLASSES",
    "EXPORT_SOURCES",
    "export_classes",
    "scale_to_uint8",
    "SHAPE_FAMILIES",
    "SYNTHETIC_VERSION",
    "TEXTURE_KINDS",
    "default_fsms_data",
    "make_shape_class",
    "make_skin_phantom",
    "render_shape_instance",
    "write_shape_classes",
    "write_skin_phantoms",
    "ClassPairSource",
    "ImagePool",
    "MetaTrainEpisodes",
    "FewShot2DInferenceRunner",
    "draw_test_episodes",
    "episode_dice",
    "evaluate_episodes",
    "network_predictor",
]
