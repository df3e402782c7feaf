# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Episodic trainer of the FSMS bundle: few-shot segmentation + denoising surrogate task (fsms.md §3).

:class:`SurrogateEpisodicTrainer` is a :class:`~labelless.engines.base.StepTrainer` (a MONAI ``SupervisedTrainer``)
whose iteration trains on one FSMS episode (``T`` 1-way K-shot tasks plus ``U`` unlabelled target-domain images,
:data:`FSMS_EPISODE_KEYS`):

- ``mode="alternate"`` (reference, default): a segmentation step (``BCEWithLogits`` on the query masks,
  ``seg_optimizer`` over encoder + segmentation branch), then a surrogate step (``BCEWithLogits`` of the denoising
  logits against the clean images at 1/4 resolution, ``sur_optimizer`` over encoder + surrogate head). The two Adam
  optimisers keep separate moment estimates for the shared encoder.
- ``mode="sum"`` (our variant): one step on ``L_seg + surrogate_weight · L_sur`` with ``seg_optimizer``, which must
  then hold **all** parameters (``network.parameters()``); ``sur_optimizer`` is unused.
- ``surrogate=False``: the few-shot baseline (segmentation step only; no noise is drawn).

The surrogate batch is the first support image of every task (``surrogate_include_support``) plus the episode's
unlabelled images; one σ = round(U(0.1, 0.6), 3) per iteration, ``x + σ·N(0, 1)`` without clipping. σ and the noise
come from a CPU ``torch.Generator`` seeded with ``episode_seed + iteration``, so seeded runs (CPU) are reproducible
and a resumed run draws the same noise as an uninterrupted one.

Bundle config sketch::

    "network_def": {"_target_": "labelless.networks.fsms.FSMSNet", "encoder_blocks": 4, "width": 64,
                    "pretrained_path": "@vgg16_path", "imagenet_normalization": true},
    "seg_optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.segmentation_parameters()",
                      "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-7},
    "sur_optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.surrogate_parameters()",
                      "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-7},
    "train": {"trainer": {
        "_target_": "labelless.engines.surrogate.SurrogateEpisodicTrainer", "device": "@device",
        "max_epochs": 30, "epoch_length": 1000, "train_data_loader": "@train#dataloader", "network": "@network",
        "seg_optimizer": "@seg_optimizer", "sur_optimizer": "@sur_optimizer", "surrogate": "@surrogate",
        "mode": "alternate", "surrogate_weight": 1.0, "surrogate_include_support": true, "episode_seed": "@seed",
        "amp": "@amp", "train_handlers": "@train#handlers"}}
    "train": {"handlers": [{"_target_": "labelless.engines.EpisodicProgressBar", "every": 50,
                            "keys": ["loss", "seg_loss", "sur_loss"]}]}

With ``mode: "sum"`` build ``seg_optimizer`` over ``$@network.parameters()``. Save both optimisers in the
checkpoint's ``save_dict`` to resume.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from labelless.data.keys import EpisodeKeys
from labelless.engines.base import StepTrainer, optimizer_param_ids
from labelless.errors import ConfigError, DataError
from labelless.transforms.noise import add_gaussian_noise, draw_sigma, surrogate_target
from labelless.utils import as_bool

__all__ = ["SurrogateEpisodicTrainer", "prepare_fsms_batch", "FSMS_EPISODE_KEYS", "SURROGATE_MODES"]

FSMS_EPISODE_KEYS = (
    EpisodeKeys.SUPPORT_IMAGE,
    EpisodeKeys.SUPPORT_LABEL,
    EpisodeKeys.QUERY_IMAGE,
    EpisodeKeys.QUERY_LABEL,
    EpisodeKeys.UNLABELED_IMAGE,
)
SURROGATE_MODES = ("alternate", "sum")


def prepare_fsms_batch(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpack one FSMS episode (a DataLoader batch of size 1, or an unbatched item) and move it to ``device``.

    Unbatched shapes: ``support_image [T, K, 3, H, W]``, ``support_label [T, K, 1, H, W]``, ``query_image
    [T, 3, H, W]``, ``query_label [T, 1, H, W]``, ``unlabeled_image [U, 3, H, W]`` (``U`` may be 0); a batch adds a
    leading dimension of 1 to each, which is squeezed. ``classes`` and other keys are ignored.

    Args:
        batchdata: mapping with the keys of :data:`FSMS_EPISODE_KEYS`.
        device: target device.
        non_blocking: passed to ``Tensor.to``.
        kwargs: other ``Tensor.to`` arguments.

    Returns:
        ``(support_image, support_label, query_image, query_label, unlabeled_image)`` unbatched.

    Raises:
        DataError: not a dict, missing keys, a batch of several episodes, wrong dims, inconsistent T / K / sizes,
            non-finite values, or masks outside [0, 1]; the message names the key.
    """
    if not isinstance(batchdata, Mapping):
        raise DataError(
            "episode batch", f"expected a dict with keys {FSMS_EPISODE_KEYS}, got {type(batchdata).__name__}"
        )
    missing = [k for k in FSMS_EPISODE_KEYS if k not in batchdata]
    if missing:
        raise DataError("episode batch", f"missing keys {missing} (has {sorted(batchdata)})")
    tensors = {k: torch.as_tensor(batchdata[k]) for k in FSMS_EPISODE_KEYS}
    rank = dict(zip(FSMS_EPISODE_KEYS, (5, 5, 4, 4, 4), strict=True))
    batched = tensors[EpisodeKeys.SUPPORT_IMAGE].dim() == 6
    for key, want in rank.items():
        t = tensors[key]
        if batched:
            if t.dim() != want + 1:
                raise DataError(key, f"expected {want + 1} dims (batch of one episode), got shape {tuple(t.shape)}")
            if t.shape[0] != 1:
                raise DataError(
                    key,
                    f"the FSMS trainer takes one episode per iteration (batch_size=1), got a batch of {t.shape[0]} "
                    f"episodes (shape {tuple(t.shape)})",
                )
            t = t[0]
        elif t.dim() != want:
            raise DataError(key, f"expected {want} dims, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            t = t.float()
        if t.numel() and not torch.isfinite(t).all():
            raise DataError(key, f"non-finite values (NaN/inf) in {key} {tuple(t.shape)}")
        tensors[key] = t
    s_img, s_msk, q_img, q_msk, unl = (tensors[k] for k in FSMS_EPISODE_KEYS)
    T, K = s_img.shape[:2]
    spatial = tuple(s_img.shape[3:])
    expected = {
        EpisodeKeys.SUPPORT_LABEL: (T, K, 1, *spatial),
        EpisodeKeys.QUERY_IMAGE: (T, s_img.shape[2], *spatial),
        EpisodeKeys.QUERY_LABEL: (T, 1, *spatial),
    }
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise DataError(
                key,
                f"shape {tuple(tensors[key].shape)} does not fit {EpisodeKeys.SUPPORT_IMAGE} {tuple(s_img.shape)} "
                f"(expected {shape})",
            )
    if tuple(unl.shape[1:]) != (s_img.shape[2], *spatial):
        raise DataError(
            EpisodeKeys.UNLABELED_IMAGE,
            f"shape {tuple(unl.shape)} does not fit the episode images (expected [U, {s_img.shape[2]}, "
            f"{', '.join(map(str, spatial))}])",
        )
    for key in (EpisodeKeys.SUPPORT_LABEL, EpisodeKeys.QUERY_LABEL):
        t = tensors[key]
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
            raise DataError(key, f"mask values must lie in [0, 1], got [{float(t.min())}, {float(t.max())}]")
    to = {"device": device, "non_blocking": non_blocking, **kwargs}
    return s_img.to(**to), s_msk.to(**to), q_img.to(**to), q_msk.to(**to), unl.to(**to)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (the network itself otherwise)."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


class SurrogateEpisodicTrainer(StepTrainer):
    """:class:`~labelless.engines.base.StepTrainer` with the FSMS iteration: segmentation and surrogate steps.

    Iteration (``mode="alternate"``): ``prepare_batch`` → ``network.train()`` → ``L_seg = seg_loss(network(S, M, Q),
    query_label)`` → backward → ``seg_optimizer.step()`` → draw σ and noise → ``L_sur = surrogate_weight ·
    sur_loss(network.denoise(noisy), surrogate_target(clean, H/4))`` → backward → ``sur_optimizer.step()``. With
    ``mode="sum"`` one backward of ``L_seg + surrogate_weight · L_sur`` and one ``seg_optimizer`` step (which must
    hold all parameters). With Adam the weight of the alternating surrogate step has almost no effect (Adam is
    invariant to the loss scale up to ε); it matters in ``"sum"`` mode.

    ``engine.state.output`` = ``{"loss": L_seg + surrogate_weight · L_sur, "seg_loss", "sur_loss"`` (detached 0-d
    tensors; ``sur_loss`` is 0 with the surrogate off), ``"sigma"`` (float; 0.0 with the surrogate off),
    ``"n_surrogate"`` (images in the surrogate batch), ``"pred"`` (detached logits ``[T, 1, H, W]``), ``"label"``
    (query masks)``}``.

    Args:
        device: training device.
        max_epochs: epochs of ``epoch_length`` iterations; ``max_epochs × epoch_length`` must cover ``n_steps``.
        train_data_loader: FSMS episode loader with batch size 1 (items as in :func:`prepare_fsms_batch`).
        network: a :class:`~labelless.networks.fsms.FSMSNet` (or a module with its ``forward`` and ``denoise``).
        seg_optimizer: optimiser of the segmentation step (Adam over ``network.segmentation_parameters()``; over
            ``network.parameters()`` for ``mode="sum"``). Adam β and ε (0.9, 0.999, 1e-7) belong in the config.
        sur_optimizer: optimiser of the surrogate step (Adam over ``network.surrogate_parameters()``); needed for
            ``mode="alternate"`` with the surrogate on, unused otherwise.
        surrogate: run the surrogate task (``False``: the few-shot baseline). Strings "true"/"false" are parsed.
        mode: ``"alternate"`` (reference) or ``"sum"``.
        surrogate_weight: weight of ``L_sur`` (≥ 0).
        surrogate_include_support: the first support image of every task joins the unlabelled images in the noisy
            batch (reference).
        sigma_range: ``(low, high)`` of the per-iteration noise level.
        seg_loss_function: segmentation loss on logits; default ``BCEWithLogitsLoss``.
        sur_loss_function: surrogate loss on logits; default ``BCEWithLogitsLoss``.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        n_steps: total iterations; the run stops exactly there (:class:`~labelless.engines.base.StopAtIteration`).
        episode_seed: seed of the per-iteration noise generator (``episode_seed + iteration``); ``None`` draws a base
            seed once from torch's global generator (reproducible under ``set_determinism``).
        prepare_batch: defaults to :func:`prepare_fsms_batch`; must return its 5-tuple.
        kwargs: the other options of :class:`~labelless.engines.base.StepTrainer` and MONAI's ``SupervisedTrainer``
            (``non_blocking``, ``train_handlers``, ``key_train_metric``, ``event_names``, ``to_kwargs``,
            ``amp_kwargs``, ``decollate`` (default ``False``: the output holds scalars of one episode), ...).
        amp: mixed precision on CUDA (a separate gradient scaler for the surrogate optimiser); ignored with a
            warning on other devices.

    Raises:
        ConfigError: unknown ``mode``; a missing ``sur_optimizer`` (alternate mode, surrogate on); a ``seg_optimizer``
            without the surrogate head in ``"sum"`` mode; a network without ``denoise``; negative
            ``surrogate_weight``; ``n_steps`` beyond ``max_epochs × epoch_length``.

    Examples::

        net = FSMSNet(width=64, pretrained_path="vgg16.pth")
        seg_opt = torch.optim.Adam(net.segmentation_parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-7)
        sur_opt = torch.optim.Adam(net.surrogate_parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-7)
        trainer = SurrogateEpisodicTrainer("cuda", max_epochs=30, train_data_loader=loader, network=net,
                                           seg_optimizer=seg_opt, sur_optimizer=sur_opt, epoch_length=1000,
                                           episode_seed=0)
        trainer.run()
    """

    _n_steps_hint = False  # this trainer's n_steps error message never carried the max_epochs suggestion

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: torch.nn.Module,
        seg_optimizer: Optimizer,
        sur_optimizer: Optimizer | None = None,
        surrogate: bool = True,
        mode: str = "alternate",
        surrogate_weight: float = 1.0,
        surrogate_include_support: bool = True,
        sigma_range: Sequence[float] = (0.1, 0.6),
        seg_loss_function: Callable | None = None,
        sur_loss_function: Callable | None = None,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        episode_seed: int | None = None,
        prepare_batch: Callable = prepare_fsms_batch,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        # resolved (and warned about) before the surrogate checks below; StepTrainer.__init__ leaves it unchanged
        dev, amp = self._device_and_amp(device, as_bool(amp, "amp"))
        self.surrogate = as_bool(surrogate, "surrogate")
        self.surrogate_include_support = as_bool(surrogate_include_support, "surrogate_include_support")
        self.mode = str(mode).strip().lower()
        if self.mode not in SURROGATE_MODES:
            raise ConfigError(f"mode must be one of {SURROGATE_MODES}, got {mode!r}")
        self.surrogate_weight = float(surrogate_weight)
        if not math.isfinite(self.surrogate_weight) or self.surrogate_weight < 0:
            raise ConfigError(f"surrogate_weight must be a finite value >= 0, got {surrogate_weight!r}")
        if len(tuple(sigma_range)) != 2:
            raise ConfigError(f"sigma_range must be (low, high), got {sigma_range!r}")
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        draw_sigma(torch.Generator().manual_seed(0), *self.sigma_range)  # validates the range (ConfigError)
        if self.surrogate:
            if not callable(getattr(_unwrap(network), "denoise", None)):
                raise ConfigError(
                    f"surrogate=True needs a network with a denoise() method, got {type(network).__name__}"
                )
            if self.mode == "alternate" and sur_optimizer is None:
                raise ConfigError(
                    "mode='alternate' with the surrogate on needs sur_optimizer (Adam over "
                    "network.surrogate_parameters())"
                )
            head = getattr(network, "surrogate_head", None)
            if self.mode == "sum" and isinstance(head, torch.nn.Module):
                absent = [n for n, p in head.named_parameters() if id(p) not in optimizer_param_ids(seg_optimizer)]
                if absent:
                    raise ConfigError(
                        "mode='sum' takes one seg_optimizer step over all parameters, but seg_optimizer does not hold "
                        f"the surrogate head ({absent[:3]} ...); build it over network.parameters()"
                    )
        self.sur_optimizer = sur_optimizer
        super().__init__(
            device=dev,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=seg_optimizer,
            loss_function=torch.nn.BCEWithLogitsLoss() if seg_loss_function is None else seg_loss_function,
            epoch_length=epoch_length,
            n_steps=n_steps,
            prepare_batch=prepare_batch,
            amp=amp,
            **kwargs,
        )
        self.sur_loss_function = torch.nn.BCEWithLogitsLoss() if sur_loss_function is None else sur_loss_function
        self.sur_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        if episode_seed is None:
            episode_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.episode_seed = int(episode_seed)

    def resume_state(self) -> dict[str, Any]:
        """The main parts plus the surrogate optimiser (and its gradient scaler under AMP)."""
        out = dict(super().resume_state())
        if self.sur_optimizer is not None:
            out["sur_optimizer"] = self.sur_optimizer
        if self.sur_scaler is not None:
            out["sur_scaler"] = self.sur_scaler
        return out

    def noise_generator(self, iteration: int) -> torch.Generator:
        """The CPU generator of ``iteration`` (1-based), seeded with ``episode_seed + iteration``."""
        return torch.Generator().manual_seed((self.episode_seed + int(iteration)) % (2**63))

    def _surrogate_batch(self, s_img: torch.Tensor, unl: torch.Tensor) -> torch.Tensor:
        parts = ([s_img[:, 0]] if self.surrogate_include_support else []) + ([unl] if unl.shape[0] else [])
        if not parts:
            raise DataError(
                EpisodeKeys.UNLABELED_IMAGE,
                "the surrogate is on but the surrogate batch is empty: the episode has no unlabelled images and "
                "surrogate_include_support is false",
            )
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    def _iteration(self, engine: SurrogateEpisodicTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One episode: segmentation step, then (surrogate on) the surrogate step, or one summed step.

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
        s_img, s_msk, q_img, q_msk, unl = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine.state.output = {Keys.LABEL: q_msk}
        net = engine.network
        use_amp = engine.amp and engine.scaler is not None
        sigma, clean, noisy = 0.0, None, None
        if engine.surrogate:
            gen = engine.noise_generator(engine.state.iteration)
            sigma = draw_sigma(gen, *engine.sigma_range)
            clean = engine._surrogate_batch(s_img, unl)
            noisy = add_gaussian_noise(clean, sigma, gen)

        def _seg_loss() -> torch.Tensor:
            logits = net(s_img, s_msk, q_img)
            engine.state.output[Keys.PRED] = logits.detach()
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(logits.float(), q_msk.to(torch.float32))
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return loss

        def _sur_loss() -> torch.Tensor:
            # DDP only forwards forward(): FSMSNet.forward(noisy, task="denoise") runs the surrogate branch
            out = net(noisy, task="denoise") if net is not _unwrap(net) else net.denoise(noisy)
            target = surrogate_target(clean, tuple(out.shape[2:])).to(torch.float32)
            return engine.sur_loss_function(out.float(), target)

        def _step(loss: torch.Tensor, optimizer: Optimizer, scaler: Any) -> None:
            if use_amp:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()

        def _autocast() -> Any:
            return torch.autocast("cuda", **engine.amp_kwargs) if use_amp else contextlib.nullcontext()

        net.train()
        zero = torch.zeros((), device=q_img.device)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _autocast():
            seg_loss = _seg_loss()
            sur_loss = _sur_loss() if (engine.surrogate and engine.mode == "sum") else zero
        if engine.mode == "sum" or not engine.surrogate:
            total = seg_loss + engine.surrogate_weight * sur_loss
            _step(total, engine.optimizer, engine.scaler)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        else:
            _step(seg_loss, engine.optimizer, engine.scaler)
            engine.sur_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with _autocast():
                sur_loss = _sur_loss()
            _step(engine.surrogate_weight * sur_loss, engine.sur_optimizer, engine.sur_scaler)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        seg_d, sur_d = seg_loss.detach(), sur_loss.detach()
        engine.state.output.update(
            {
                Keys.LOSS: seg_d + engine.surrogate_weight * sur_d,
                "seg_loss": seg_d,
                "sur_loss": sur_d,
                "sigma": float(sigma),
                "n_surrogate": 0 if clean is None else int(clean.shape[0]),
            }
        )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
