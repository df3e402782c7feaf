# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Episodic Ignite trainer of the few-shot bundles (monai_bundle_conventions.md §4, fewshot_protocol.md §4, §8).

:class:`EpisodicTrainer` is a :class:`~labelless.engines.base.StepTrainer` (a MONAI ``SupervisedTrainer``) whose
iteration trains on one episode: it takes the episode batch of a
:class:`~labelless.fewshot.volume.episodes.SelfSupervisedEpisodeDataset` loader (batch size 1), squeezes the episode
batch dimension of the support tensors, runs the few-shot network with ``return_aux=True``, computes
:class:`~labelless.losses.ALPNetLoss` and takes an optimiser step. Training length is ``n_steps`` iterations
(``epoch_length × max_epochs``, terminated exactly at ``n_steps`` by
:class:`~labelless.engines.base.StopAtIteration` when that is not a multiple of the epoch length). The learning rate
follows :func:`iteration_lr_schedule` stepped per iteration with MONAI's ``LrScheduleHandler(epoch_level=False)``;
:class:`~labelless.engines.base.EpisodicProgressBar` shows a tqdm progress bar.

Bundle config sketch::

    "train": {"trainer": {
        "_target_": "labelless.engines.EpisodicTrainer",
        "device": "@device", "max_epochs": "$math.ceil(@n_steps / @epoch_length)", "epoch_length": "@epoch_length",
        "n_steps": "@n_steps", "train_data_loader": "@train#dataloader", "network": "@network",
        "optimizer": "@optimizer", "loss_function": "@loss", "amp": "@amp", "episode_seed": "@seed",
        "train_handlers": "@train#handlers"}}
    "lr_scheduler": {"_target_": "labelless.engines.iteration_lr_schedule", "optimizer": "@optimizer",
                     "step": 1000, "gamma": 0.95, "n_steps": "@n_steps"}
    "train": {"handlers": [
        {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "epoch_level": false, "print_lr": false},
        {"_target_": "labelless.engines.EpisodicProgressBar", "every": 50}]}
    "checkpoint_saver": {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network",
        "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler", "trainer": "@train#trainer"},
        "save_final": true, "final_filename": "model.pt", "save_interval": 25000, "epoch_level": false}
    "initialize": ["$monai.utils.set_determinism(seed=@seed)", "$@checkpoint_saver.attach(@train#trainer)"]

A saver whose ``save_dict`` refers to the trainer cannot be one of the trainer's own ``train_handlers`` (circular
reference in the config); attach it in ``initialize`` as above, or put it in ``validate#handlers``. Resume with a
``CheckpointLoader`` (``map_location: @device``) over the same ``load_dict``; with ``episode_seed`` the resumed run
sees the same episodes as an uninterrupted one and reaches the same weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR

from labelless.data.keys import EpisodeKeys
from labelless.engines.base import StepTrainer
from labelless.errors import ConfigError, DataError
from labelless.losses import ALPNetLoss

__all__ = [
    "EpisodicTrainer",
    "prepare_episode_batch",
    "iteration_lr_schedule",
    "LR_SCHEDULES",
    "annealed_lr_schedule",
    "EPISODE_KEYS",
]

logger = logging.getLogger(__name__)

EPISODE_KEYS = (
    EpisodeKeys.SUPPORT_IMAGE,
    EpisodeKeys.SUPPORT_LABEL,
    EpisodeKeys.QUERY_IMAGE,
    EpisodeKeys.QUERY_LABEL,
)


def prepare_episode_batch(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpack one episode of a DataLoader batch and move it to ``device``.

    Accepts a batch of one episode (``support_image [1, S, C, H, W]``, ``support_label [1, S, 1, H, W]``,
    ``query_image [1, C, H, W]``, ``query_label [1, H, W]``) or an unbatched item (``[S, C, H, W]``, ``[S, 1, H, W]``,
    ``[C, H, W]``, ``[H, W]``).

    Args:
        batchdata: mapping with the keys of :data:`EPISODE_KEYS`.
        device: target device.
        non_blocking: passed to ``Tensor.to``.
        kwargs: other ``Tensor.to`` arguments.

    Returns:
        ``(support_images [S, C, H, W], support_masks [S, 1, H, W], query_images [1, C, H, W],
        query_label [1, H, W])``.

    Raises:
        DataError: missing keys, a batch of several episodes, or inconsistent shapes.
    """
    if not isinstance(batchdata, Mapping):
        raise DataError("episode batch", f"expected a dict with keys {EPISODE_KEYS}, got {type(batchdata).__name__}")
    missing = [k for k in EPISODE_KEYS if k not in batchdata]
    if missing:
        raise DataError("episode batch", f"missing keys {missing} (has {sorted(batchdata)})")
    s_img, s_msk, q_img, q_lbl = (torch.as_tensor(batchdata[k]) for k in EPISODE_KEYS)
    if s_img.dim() == 5:
        if s_img.shape[0] != 1:
            raise DataError(
                "episode batch",
                f"the episodic trainer takes one episode per iteration (batch_size=1), got a batch of "
                f"{s_img.shape[0]} episodes (support_image {tuple(s_img.shape)})",
            )
        s_img = s_img[0]
        s_msk = s_msk[0] if s_msk.dim() == 5 else s_msk
        q_img = q_img if q_img.dim() == 4 else q_img.unsqueeze(0)
        q_lbl = q_lbl if q_lbl.dim() == 3 else q_lbl.unsqueeze(0)
    else:
        q_img = q_img.unsqueeze(0) if q_img.dim() == 3 else q_img
        q_lbl = q_lbl.unsqueeze(0) if q_lbl.dim() == 2 else q_lbl
    if s_img.dim() != 4 or s_msk.dim() != 4 or s_msk.shape[0] != s_img.shape[0] or s_msk.shape[1] != 1:
        raise DataError(
            "episode batch",
            f"support_image {tuple(s_img.shape)} / support_label {tuple(s_msk.shape)} must be [S, C, H, W] / "
            "[S, 1, H, W] (1 way)",
        )
    if q_img.dim() != 4 or q_img.shape[0] != 1 or q_lbl.dim() != 3 or q_lbl.shape[0] != 1:
        raise DataError(
            "episode batch",
            f"query_image {tuple(q_img.shape)} / query_label {tuple(q_lbl.shape)} must be one query [1, C, H, W] / "
            "[1, H, W]",
        )
    to = {"device": device, "non_blocking": non_blocking, **kwargs}
    return s_img.to(**to), s_msk.to(**to), q_img.to(**to), q_lbl.to(**to)


def iteration_lr_schedule(
    optimizer: Optimizer, step: int = 1000, gamma: float = 0.95, n_steps: int = 100_100, last_epoch: int = -1
) -> MultiStepLR:
    """The reference schedule: lr × ``gamma`` at iterations ``step, 2·step, …`` (``n_steps // step − 1`` milestones).

    Step it once per iteration (MONAI ``LrScheduleHandler(epoch_level=False)``). With the defaults the milestones are
    1000, 2000, …, 99000 and the final lr is ``1e-3 · 0.95^99 ≈ 6.2e-6``.

    Args:
        optimizer: the optimiser.
        step: iterations between decays.
        gamma: decay factor.
        n_steps: total training iterations.
        last_epoch: passed to ``MultiStepLR``.

    Returns:
        a ``torch.optim.lr_scheduler.MultiStepLR``.

    Raises:
        ConfigError: non-positive ``step`` or ``n_steps``.
    """
    if int(step) < 1 or int(n_steps) < 1:
        raise ConfigError(f"step and n_steps must be positive integers, got step={step!r}, n_steps={n_steps!r}")
    milestones = [(i + 1) * int(step) for i in range(int(n_steps) // int(step) - 1)]
    return MultiStepLR(optimizer, milestones=milestones, gamma=float(gamma), last_epoch=last_epoch)


LR_SCHEDULES = ("constant", "cosine")


def annealed_lr_schedule(
    optimizer: Optimizer, kind: str = "constant", n_steps: int = 1, min_factor: float = 0.0
) -> LambdaLR:
    """A per-iteration schedule of the lr over a run of ``n_steps`` iterations: ``"constant"`` (factor 1, the
    optimiser's lr unchanged) or ``"cosine"`` (half a cosine from 1 at iteration 0 to ``min_factor`` at ``n_steps``,
    held there after). Step it once per iteration (MONAI ``LrScheduleHandler(epoch_level=False)``); a resumed run
    restores the iteration from the scheduler's state.

    Args:
        optimizer: the optimiser (every parameter group is scaled by the same factor).
        kind: one of :data:`LR_SCHEDULES`.
        n_steps: total training iterations.
        min_factor: the final factor of ``"cosine"``, in [0, 1].

    Returns:
        a ``torch.optim.lr_scheduler.LambdaLR``.

    Raises:
        ConfigError: an unknown ``kind``, a non-positive ``n_steps`` or ``min_factor`` outside [0, 1].
    """
    if kind not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    if int(n_steps) < 1 or not 0.0 <= float(min_factor) <= 1.0:
        raise ConfigError(f"n_steps must be a positive integer and min_factor in [0, 1], got n_steps={n_steps!r}, "
                          f"min_factor={min_factor!r}")  # fmt: skip
    total, low = int(n_steps), float(min_factor)

    def factor(it: int) -> float:
        if kind == "constant":
            return 1.0
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))

    return LambdaLR(optimizer, lr_lambda=factor)


class EpisodicTrainer(StepTrainer):
    """:class:`~labelless.engines.base.StepTrainer` with the few-shot episode iteration (one episode per iteration).

    Iteration: ``prepare_batch`` → ``network.train()`` → ``out = network(support_images, support_masks,
    query_images, return_aux=True)`` → ``total, parts = loss_function(out, query_label, support_masks)`` → backward
    → ``optimizer.step()``. ``engine.state.output`` = ``{"loss", "query_loss", "par_loss"`` (detached scalar
    tensors), ``"bg_fallbacks"`` (int: BG-prototype fallbacks of this iteration, forward + PAR), ``"pred"`` (detached
    logits), ``"label"`` (query label)``}``. The cumulative count is ``bg_fallback_total`` and is logged each epoch.

    Args:
        device: training device.
        max_epochs: epochs (``epoch_length`` iterations each); ``max_epochs × epoch_length`` must cover ``n_steps``.
        train_data_loader: episode loader with batch size 1.
        network: a :class:`~labelless.networks.fewshot.FewShotSegmentor` (or any module with its call signature).
        optimizer: the optimiser (SGD 1e-3, momentum 0.9, weight decay 5e-4 in the protocol).
        loss_function: ``(output, query_label, support_masks) -> (total, parts)``; default :class:`ALPNetLoss`.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        n_steps: total iterations; the run stops exactly there (:class:`~labelless.engines.base.StopAtIteration`).
            ``None``: the full ``max_epochs × epoch_length``.
        episode_seed: when given, the loader's dataset is reseeded with ``episode_seed + iteration`` before each
            batch (``set_random_state``), so the episode stream depends only on the iteration index and a resumed run
            sees the same episodes as an uninterrupted one. Needs ``num_workers=0``.
        prepare_batch: defaults to :func:`prepare_episode_batch`; must return its 4-tuple.
        kwargs: the other options of :class:`~labelless.engines.base.StepTrainer` and MONAI's ``SupervisedTrainer``
            (``non_blocking``, ``train_handlers``, ``key_train_metric``, ``event_names``, ``to_kwargs``,
            ``amp_kwargs``, ``decollate`` (default ``False``: the output holds scalars of one episode), ...).
        amp: mixed precision on CUDA (the prototype head and the losses run in float32); ignored with a warning on
            other devices.

    Raises:
        ConfigError: ``n_steps`` larger than ``max_epochs × epoch_length``, or ``episode_seed`` with worker processes.

    Examples::

        model = build_fewshot_segmentor("tiny")
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        trainer = EpisodicTrainer("cpu", max_epochs=4, train_data_loader=loader, network=model, optimizer=opt,
                                  epoch_length=25, n_steps=90, train_handlers=[
                                      LrScheduleHandler(iteration_lr_schedule(opt, n_steps=90), epoch_level=False)])
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable | None = None,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        episode_seed: int | None = None,
        prepare_batch: Callable = prepare_episode_batch,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=ALPNetLoss() if loss_function is None else loss_function,
            epoch_length=epoch_length,
            n_steps=n_steps,
            prepare_batch=prepare_batch,
            amp=amp,
            **kwargs,
        )
        self.episode_seed = None if episode_seed is None else int(episode_seed)
        if self.episode_seed is not None:
            dataset = getattr(train_data_loader, "dataset", None)
            if int(getattr(train_data_loader, "num_workers", 0) or 0) > 0:
                raise ConfigError("episode_seed needs a DataLoader with num_workers=0 (workers hold dataset copies)")
            if not hasattr(dataset, "set_random_state"):
                raise ConfigError(
                    f"episode_seed needs a randomizable dataset with set_random_state, got {type(dataset).__name__}"
                )
            self.add_event_handler(Events.GET_BATCH_STARTED, self._reseed_episodes)
        self.bg_fallback_total = 0
        self.add_event_handler(Events.EPOCH_COMPLETED, self._log_fallbacks)

    def _reseed_episodes(self, engine: Engine) -> None:
        # GET_BATCH_STARTED fires before the loader fetches iteration state.iteration + 1
        engine.data_loader.dataset.set_random_state(seed=(self.episode_seed + engine.state.iteration) % (2**32))

    def _log_fallbacks(self, engine: Engine) -> None:
        if self.bg_fallback_total:
            self.logger.info(
                f"epoch {engine.state.epoch}: {self.bg_fallback_total} background-prototype fallbacks so far "
                "(no BG window above the threshold; global BG prototype used)"
            )

    def _iteration(self, engine: EpisodicTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One episode: forward, ALPNet loss, backward, optimiser step.

        Args:
            engine: this trainer.
            batchdata: the loader's batch (one episode).

        Returns:
            the output dict (see the class docstring).

        Raises:
            ValueError: no batch data.
            DataError: malformed episode batch.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        s_img, s_msk, q_img, q_lbl = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine.state.output = {Keys.LABEL: q_lbl}
        holder: dict[str, Any] = {}

        def _compute() -> None:
            out = engine.network(s_img, s_msk, q_img, return_aux=True)
            engine.state.output[Keys.PRED] = out.logits.detach()
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            total, parts = engine.loss_function(out, q_lbl, s_msk)
            holder["total"], holder["parts"], holder["out"] = total, parts, out
            engine.state.output[Keys.LOSS] = total.detach()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _compute()
            engine.scaler.scale(holder["total"]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            _compute()
            holder["total"].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        parts = holder["parts"]
        fallbacks = int(bool(getattr(holder["out"], "bg_fallback", False))) + int(
            bool(parts.get("par_bg_fallback", False))
        )
        self.bg_fallback_total += fallbacks
        engine.state.output.update(
            query_loss=parts.get("query_loss"), par_loss=parts.get("par_loss"), bg_fallbacks=fallbacks
        )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
