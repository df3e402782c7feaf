# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of labelless (array transforms and their dictionary twins)."""

from __future__ import annotations

from .augment import (
    RandFewShotAugment,
    RandFewShotAugmentD,
    RandFewShotAugmentd,
    RandFewShotAugmentDict,
    fewshot_affine_matrix,
    gamma_transform,
    monai_fewshot_augment,
)
from .intensity import fold_statistics, slices_to_tensor_input, zscore
from .noise import add_gaussian_noise, draw_sigma, surrogate_target
from .superpixel import (
    SUPERPIXEL_METHODS,
    BodyMask,
    BodyMaskD,
    BodyMaskd,
    BodyMaskDict,
    Superpixels,
    SuperpixelsD,
    Superpixelsd,
    SuperpixelsDict,
    body_mask,
    body_mask_slice,
    body_threshold,
    compute_superpixels,
    felzenszwalb_slices,
    mask_superpixels,
    preset_body_threshold,
    relabel_within_body,
    slic_slices,
    slic_volume,
)

__all__ = [
    "RandFewShotAugment",
    "RandFewShotAugmentd",
    "RandFewShotAugmentD",
    "RandFewShotAugmentDict",
    "fewshot_affine_matrix",
    "gamma_transform",
    "monai_fewshot_augment",
    "zscore",
    "fold_statistics",
    "slices_to_tensor_input",
    "draw_sigma",
    "add_gaussian_noise",
    "surrogate_target",
    "SUPERPIXEL_METHODS",
    "felzenszwalb_slices",
    "slic_slices",
    "slic_volume",
    "compute_superpixels",
    "body_threshold",
    "preset_body_threshold",
    "body_mask_slice",
    "body_mask",
    "relabel_within_body",
    "mask_superpixels",
    "Superpixels",
    "BodyMask",
    "Superpixelsd",
    "SuperpixelsD",
    "SuperpixelsDict",
    "BodyMaskd",
    "BodyMaskD",
    "BodyMaskDict",
]
