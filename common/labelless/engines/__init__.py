# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Ignite/MONAI engines of the shared package (custom iterations: episodic few-shot training)."""

from __future__ import annotations

from labelless.engines.episodic import (
    EPISODE_KEYS,
    EpisodicProgressBar,
    EpisodicTrainer,
    StopAtIteration,
    iteration_lr_schedule,
    prepare_episode_batch,
)

__all__ = [
    "EPISODE_KEYS",
    "EpisodicProgressBar",
    "EpisodicTrainer",
    "StopAtIteration",
    "iteration_lr_schedule",
    "prepare_episode_batch",
]
