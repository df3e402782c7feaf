# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Networks shared by the few-shot bundles: encoders, prototype layers the method heads (DSPNet, PSMNet) and
the FSMS 2D network."""

from __future__ import annotations

from labelless.networks.dspnet import BCMA, FSPA, DSPNetHead, SupportQueryAttention, build_dspnet_segmentor
from labelless.networks.encoders import ENCODER_NAMES, DilatedResNet, PretrainedReport, TinyEncoder, build_encoder
from labelless.networks.fewshot import FewShotSegmentor, SegmentorFeatures, build_fewshot_segmentor
from labelless.networks.fsms import (
    FSMSNet,
    VGGEncoder,
    add_gaussian_noise,
    draw_sigma,
    load_vgg16_weights,
    masked_pool_k_shots,
    support_masks_to_grid,
    surrogate_target,
)
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
    "FSMSNet",
    "VGGEncoder",
    "add_gaussian_noise",
    "draw_sigma",
    "load_vgg16_weights",
    "masked_pool_k_shots",
    "support_masks_to_grid",
    "surrogate_target",
]
