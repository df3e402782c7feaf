# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Weakly supervised segmentation from image-level labels (CLTNet, cltnet.md): domains A (lesion) / B (normal)."""

from __future__ import annotations

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

__all__ = [
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
]
