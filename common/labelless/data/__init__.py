# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Dataset layouts, label maps and dataset presets."""

from __future__ import annotations

from .images import (
    MASK_STEMS,
    ImageFolderPool,
    ImageMaskPairs,
    binarize_mask,
    find_image_mask_pairs,
    find_mask,
    image_size,
    list_images,
    load_grey,
    load_mask,
    load_rgb,
    mask_on_grid,
    read_mask,
    read_rgb,
    resize_image,
    resize_mask,
    split_pool,
)
from .keys import DomainKeys, EpisodeKeys, SemiSupKeys
from .labelmap import LabelMap
from .layouts import IMAGE_RE, PreparedVolumeDataset, compute_classmap
from .phantoms import (
    PHANTOM_KINDS,
    PHANTOM_VERSION,
    default_dataset_dir,
    make_phantom,
    phantom_affine,
    phantom_spacing,
    write_phantom_dataset,
)
from .presets import PRESETS, DatasetPreset, get_preset

__all__ = [
    "MASK_STEMS",
    "list_images",
    "find_mask",
    "ImageMaskPairs",
    "find_image_mask_pairs",
    "binarize_mask",
    "mask_on_grid",
    "resize_image",
    "resize_mask",
    "read_rgb",
    "read_mask",
    "load_rgb",
    "load_grey",
    "load_mask",
    "image_size",
    "ImageFolderPool",
    "split_pool",
    "EpisodeKeys",
    "DomainKeys",
    "SemiSupKeys",
    "LabelMap",
    "PreparedVolumeDataset",
    "compute_classmap",
    "IMAGE_RE",
    "PHANTOM_KINDS",
    "PHANTOM_VERSION",
    "phantom_spacing",
    "phantom_affine",
    "make_phantom",
    "write_phantom_dataset",
    "default_dataset_dir",
    "DatasetPreset",
    "PRESETS",
    "get_preset",
]
