# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Dataset layouts, label maps and dataset presets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelless.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first access (labelless.lazy)
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

_EXPORTS = {
    "MASK_STEMS": "images",
    "list_images": "images",
    "find_mask": "images",
    "ImageMaskPairs": "images",
    "find_image_mask_pairs": "images",
    "binarize_mask": "images",
    "mask_on_grid": "images",
    "resize_image": "images",
    "resize_mask": "images",
    "read_rgb": "images",
    "read_mask": "images",
    "load_rgb": "images",
    "load_grey": "images",
    "load_mask": "images",
    "image_size": "images",
    "ImageFolderPool": "images",
    "split_pool": "images",
    "EpisodeKeys": "keys",
    "DomainKeys": "keys",
    "SemiSupKeys": "keys",
    "LabelMap": "labelmap",
    "PreparedVolumeDataset": "layouts",
    "compute_classmap": "layouts",
    "IMAGE_RE": "layouts",
    "PHANTOM_KINDS": "phantoms",
    "PHANTOM_VERSION": "phantoms",
    "phantom_spacing": "phantoms",
    "phantom_affine": "phantoms",
    "make_phantom": "phantoms",
    "write_phantom_dataset": "phantoms",
    "default_dataset_dir": "phantoms",
    "DatasetPreset": "presets",
    "PRESETS": "presets",
    "get_preset": "presets",
}
_SUBMODULES = (
    "images",
    "keys",
    "labelmap",
    "layouts",
    "phantoms",
    "presets",
)

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, __all__)
