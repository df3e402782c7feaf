# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Weakly supervised segmentation from image-level labels (CLTNet, cltnet.md): domains A (lesion) / B (normal)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelless.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first access (labelless.lazy)
    from .data import UnpairedDomainDataset
    from .domains import (
        WEAK_IMAGE_SUFFIXES,
        DomainSlice,
        WeakDomainFolders,
        corner_slices,
        find_volume_cases,
        grid_crop_slices,
        grid_crops,
        lesion_free_patches,
        lesion_removed_image,
        split_cases,
        volume_domain_slices,
        write_image_domains,
        write_tagged_domains,
        write_volume_domains,
    )
    from .inference import OUTPUT_SUFFIXES, WeakSegmentationInferenceRunner, list_weak_inputs
    from .synthetic import SYNTHETIC_WEAK_VERSION, default_weak_data, make_weak_image, write_weak_phantoms
    from .workflow import (
        EVAL_SPLITS,
        FLIP_DIMS,
        WeakSegmentationEvaluationRunner,
        WeakValidationHandler,
        check_image_size,
        evaluate_images,
        export_generator,
        flip_average,
        gate_mask,
        inference_images,
        load_weak_weights,
        patch_input_size,
        resolve_domains,
        soft_mask,
        training_dataset,
        windowed,
    )

_EXPORTS = {
    "UnpairedDomainDataset": "data",
    "WEAK_IMAGE_SUFFIXES": "domains",
    "DomainSlice": "domains",
    "volume_domain_slices": "domains",
    "find_volume_cases": "domains",
    "split_cases": "domains",
    "write_volume_domains": "domains",
    "corner_slices": "domains",
    "lesion_free_patches": "domains",
    "grid_crops": "domains",
    "grid_crop_slices": "domains",
    "lesion_removed_image": "domains",
    "write_image_domains": "domains",
    "write_tagged_domains": "domains",
    "WeakDomainFolders": "domains",
    "OUTPUT_SUFFIXES": "inference",
    "list_weak_inputs": "inference",
    "WeakSegmentationInferenceRunner": "inference",
    "SYNTHETIC_WEAK_VERSION": "synthetic",
    "make_weak_image": "synthetic",
    "write_weak_phantoms": "synthetic",
    "default_weak_data": "synthetic",
    "EVAL_SPLITS": "workflow",
    "resolve_domains": "workflow",
    "check_image_size": "workflow",
    "training_dataset": "workflow",
    "soft_mask": "workflow",
    "gate_mask": "workflow",
    "flip_average": "workflow",
    "patch_input_size": "workflow",
    "windowed": "workflow",
    "FLIP_DIMS": "workflow",
    "inference_images": "workflow",
    "export_generator": "workflow",
    "load_weak_weights": "workflow",
    "evaluate_images": "workflow",
    "WeakValidationHandler": "workflow",
    "WeakSegmentationEvaluationRunner": "workflow",
}
_SUBMODULES = (
    "data",
    "domains",
    "inference",
    "synthetic",
    "workflow",
)

__all__ = [
    "UnpairedDomainDataset",
    "WEAK_IMAGE_SUFFIXES",
    "DomainSlice",
    "volume_domain_slices",
    "find_volume_cases",
    "split_cases",
    "write_volume_domains",
    "corner_slices",
    "lesion_free_patches",
    "grid_crops",
    "grid_crop_slices",
    "lesion_removed_image",
    "write_image_domains",
    "write_tagged_domains",
    "WeakDomainFolders",
    "OUTPUT_SUFFIXES",
    "list_weak_inputs",
    "WeakSegmentationInferenceRunner",
    "SYNTHETIC_WEAK_VERSION",
    "make_weak_image",
    "write_weak_phantoms",
    "default_weak_data",
    "EVAL_SPLITS",
    "resolve_domains",
    "check_image_size",
    "training_dataset",
    "soft_mask",
    "gate_mask",
    "flip_average",
    "patch_input_size",
    "windowed",
    "FLIP_DIMS",
    "inference_images",
    "export_generator",
    "load_weak_weights",
    "evaluate_images",
    "WeakValidationHandler",
    "WeakSegmentationEvaluationRunner",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, __all__)
