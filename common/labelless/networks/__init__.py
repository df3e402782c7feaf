# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Networks shared by the few-shot bundles: encoders, prototype layers and the method heads (DSPNet, PSMNet)."""

from __future__ import annotations

from labelless.networks.dspnet import BCMA, FSPA, DSPNetHead, SupportQueryAttention, build_dspnet_segmentor
from labelless.networks.encoders import ENCODER_NAMES, DilatedResNet, PretrainedReport, TinyEncoder, build_encoder
from labelless.networks.fewshot import FewShotSegmentor, SegmentorFeatures, build_fewshot_segmentor
from labelless.networks.prototypes import (
    ALPHead,
    bg_prototypes,
    downsample_mask,
    fg_prototypes,
    fg_uses_local,
    local_prototypes,
    masked_average_pooling,
    prototype_scores,
    safe_normalize,
)
from labelless.networks.psmnet import MCAM, CrossNonLocalBlock, PSMNetHead, build_psmnet_segmentor, psm_split

__all__ = [
    "ENCODER_NAMES",
    "DilatedResNet",
    "PretrainedReport",
    "TinyEncoder",
    "build_encoder",
    "ALPHead",
    "bg_prototypes",
    "downsample_mask",
    "fg_prototypes",
    "fg_uses_local",
    "local_prototypes",
    "masked_average_pooling",
    "prototype_scores",
    "safe_normalize",
    "FewShotSegmentor",
    "SegmentorFeatures",
    "build_fewshot_segmentor",
    "BCMA",
    "FSPA",
    "DSPNetHead",
    "SupportQueryAttention",
    "build_dspnet_segmentor",
    "MCAM",
    "CrossNonLocalBlock",
    "PSMNetHead",
    "build_psmnet_segmentor",
    "psm_split",
]
