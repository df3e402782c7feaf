# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Networks shared by the few-shot bundles: encoders and prototype layers."""

from __future__ import annotations

from labelless.networks.encoders import ENCODER_NAMES, DilatedResNet, PretrainedReport, TinyEncoder, build_encoder
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
]
