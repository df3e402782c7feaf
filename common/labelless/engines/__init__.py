# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Ignite/MONAI engines of the shared package (custom iterations: episodic few-shot training, and the 2D episodic
training with a denoising surrogate task of FSMS), on the common base :class:`~labelless.engines.base.StepTrainer`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelless.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, imported on first access (labelless.lazy)
    from .adversarial import DOMAIN_KEYS, CycleTranslationTrainer, prepare_domain_batch
    from .base import (
        EpisodicProgressBar,
        StepTrainer,
        StopAtIteration,
        attach_after_engine,
        average_gradients,
        optimizer_param_ids,
    )
    from .checkpoint import (
        CHECKPOINT_PATTERN,
        BestSoFarState,
        TrainingCheckpoint,
        list_checkpoints,
        load_latest_checkpoint,
        rng_state,
        save_checkpoint_atomic,
        set_rng_state,
    )
    from .episodic import (
        EPISODE_KEYS,
        LR_SCHEDULES,
        EpisodicTrainer,
        annealed_lr_schedule,
        iteration_lr_schedule,
        prepare_episode_batch,
    )
    from .handlers import LazySummaryWriter, rank_handlers, use_handler
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

_EXPORTS = {
    "CycleTranslationTrainer": "adversarial",
    "prepare_domain_batch": "adversarial",
    "DOMAIN_KEYS": "adversarial",
    "StepTrainer": "base",
    "StopAtIteration": "base",
    "EpisodicProgressBar": "base",
    "optimizer_param_ids": "base",
    "average_gradients": "base",
    "attach_after_engine": "base",
    "TrainingCheckpoint": "checkpoint",
    "BestSoFarState": "checkpoint",
    "save_checkpoint_atomic": "checkpoint",
    "list_checkpoints": "checkpoint",
    "load_latest_checkpoint": "checkpoint",
    "rng_state": "checkpoint",
    "set_rng_state": "checkpoint",
    "CHECKPOINT_PATTERN": "checkpoint",
    "EpisodicTrainer": "episodic",
    "prepare_episode_batch": "episodic",
    "iteration_lr_schedule": "episodic",
    "annealed_lr_schedule": "episodic",
    "LR_SCHEDULES": "episodic",
    "EPISODE_KEYS": "episodic",
    "LazySummaryWriter": "handlers",
    "rank_handlers": "handlers",
    "use_handler": "handlers",
    "EMAModel": "semisup",
    "PRETRAIN_WEIGHTS": "semisup",
    "PRETRAIN_PROFILES": "semisup",
    "prepare_semisup_batch": "semisup",
    "ShadowPretrainTrainer": "semisup",
    "SegmentationTrainer": "semisup",
    "MeanTeacherTrainer": "semisup",
    "unwrap_network": "semisup",
    "SurrogateEpisodicTrainer": "surrogate",
    "prepare_fsms_batch": "surrogate",
    "FSMS_EPISODE_KEYS": "surrogate",
    "SURROGATE_MODES": "surrogate",
}
_SUBMODULES = (
    "adversarial",
    "base",
    "checkpoint",
    "episodic",
    "handlers",
    "semisup",
    "surrogate",
)

__all__ = [
    "CycleTranslationTrainer",
    "prepare_domain_batch",
    "DOMAIN_KEYS",
    "StepTrainer",
    "StopAtIteration",
    "EpisodicProgressBar",
    "optimizer_param_ids",
    "average_gradients",
    "attach_after_engine",
    "TrainingCheckpoint",
    "BestSoFarState",
    "save_checkpoint_atomic",
    "list_checkpoints",
    "load_latest_checkpoint",
    "rng_state",
    "set_rng_state",
    "CHECKPOINT_PATTERN",
    "EpisodicTrainer",
    "prepare_episode_batch",
    "iteration_lr_schedule",
    "annealed_lr_schedule",
    "LR_SCHEDULES",
    "EPISODE_KEYS",
    "LazySummaryWriter",
    "rank_handlers",
    "use_handler",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, __all__)
