# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Ignite/MONAI engines of the shared package (custom iterations: episodic few-shot training, and the 2D episodic
training with a denoising surrogate task of FSMS)."""

from __future__ import annotations

from labelless.engines.episodic import (
    EPISODE_KEYS,
    EpisodicProgressBar,
    EpisodicTrainer,
    StopAtIteration,
    iteration_lr_schedule,
    prepare_episode_batch,
)
from labelless.engines.surrogate import (
    FSMS_EPISODE_KEYS,
    SURROGATE_MODES,
    SurrogateEpisodicTrainer,
    prepare_fsms_batch,
)

__all__ = [
    "EPISODE_KEYS",
    "EpisodicProgressBar",
    "EpisodicTrainer",
    "StopAtIteration",
    "iteration_lr_schedule",
    "prepare_episode_batch",
    "FSMS_EPISODE_KEYS",
    "SURROGATE_MODES",
    "SurrogateEpisodicTrainer",
    "prepare_fsms_batch",
]
