# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Weakly supervised segmentation from image-level labels (CLTNet, cltnet.md): domains A (lesion) / B (normal)."""

from __future__ import annotations

from .data import UnpairedDomainDataset
from .domains import (
    WEAK_IMAGE_SUFFIXES,
    DomainSlice,
    WeakDomainFolders,
    find_volume_cases,
    lesion_free_patches,
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
    WeakSegmentationEvaluationRunner,
    WeakValidationHandler,
    evaluate_images,
    export_generator,
    inference_images,
    load_weak_weights,
    resolve_domains,
    soft_mask,
    training_dataset,
)

__all__ = [
    "UnpairedDomainDataset",
    "WEAK_IMAGE_SUFFIXES",
    "DomainSlice",
    "volume_domain_slices",
    "find_volume_cases",
    "split_cases",
    "write_volume_domains",
    "lesion_free_patches",
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
    "training_dataset",
    "soft_mask",
    "inference_images",
    "export_generator",
    "load_weak_weights",
    "evaluate_images",
    "WeakValidationHandler",
    "WeakSegmentationEvaluationRunner",
]
