# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Ignite/MONAI engines of the shared package (custom iterations: episodic few-shot training, and the 2D episodic
training with a denoising surrogate task of FSMS), on the common base :class:`~labelless.engines.base.StepTrainer`."""

from __future__ import annotations

from .adversarial import DOMAIN_KEYS, CycleTranslationTrainer, prepare_domain_batch
from .base import EpisodicProgressBar, StepTrainer, StopAtIteration, average_gradients, optimizer_param_ids
from .checkpoint import (
    CHECKPOINT_PATTERN,
    TrainingCheckpoint,
    list_checkpoints,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint_atomic,
    set_rng_state,
)
from .episodic import EPISODE_KEYS, EpisodicTrainer, iteration_lr_schedule, prepare_episode_batch
from .semisup import (
    PRETRAIN_PROFILES,
    PRETRAIN_WEIGHTS,
    EMAModel,
    MeanTeacherTrainer,
    SegmentationTrainer,
    ShadowPretrainTrainer,
    prepare_semisup_batch,
    unwrap_network,
)
from .surrogate import FSMS_EPISODE_KEYS, SURROGATE_MODES, SurrogateEpisodicTrainer, prepare_fsms_batch

__all__ = [
    "CycleTranslationTrainer",
    "prepare_domain_batch",
    "DOMAIN_KEYS",
    "StepTrainer",
    "StopAtIteration",
    "EpisodicProgressBar",
    "optimizer_param_ids",
    "average_gradients",
    "TrainingCheckpoint",
    "save_checkpoint_atomic",
    "list_checkpoints",
    "load_latest_checkpoint",
    "rng_state",
    "set_rng_state",
    "CHECKPOINT_PATTERN",
    "EpisodicTrainer",
    "prepare_episode_batch",
    "iteration_lr_schedule",
    "EPISODE_KEYS",
    "EMAModel",
    "PRETRAIN_WEIGHTS",
    "PRETRAIN_PROFILES",
    "prepare_semisup_batch",
    "ShadowPretrainTrainer",
    "SegmentationTrainer",
    "MeanTeacherTrainer",
    "unwrap_network",
    "SurrogateEpisodicTrainer",
    "prepare_fsms_batch",
    "FSMS_EPISODE_KEYS",
    "SURROGATE_MODES",
]
