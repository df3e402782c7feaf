# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Trainers of the semi-supervised ultrasound bundle (SABR-Net, sabrnet.md §6–8) and of its mean-teacher baseline.

All are :class:`~labelless.engines.base.StepTrainer` subclasses (MONAI ``SupervisedTrainer``: exact ``n_steps``,
AMP on CUDA only, handlers, events) whose network is a :class:`~labelless.networks.sabrnet.SABRNet` (``generator``
and boundary ``heads``). Batches use :class:`~labelless.data.keys.SemiSupKeys`; images are in [−1, 1].

- :class:`ShadowPretrainTrainer` (stage 1): one labelled and one unlabelled image per batch, each with a shadow
  imitation keep-mask. ``profile="full"``: D step (non-saturating logistic ``D_img`` on the inpainted unlabelled
  image, hinge ``D_seg`` on image + segmentation pairs, lazy R1), then a G step on the unlabelled image (adversarial,
  feature matching, hole-masked L1, perceptual and style terms; its own Adam, clip 2) and a G step on the labelled
  image (the same terms plus CE(s/0.1) + Dice(sigmoid(s/0.3)); its own Adam, clip 5). ``profile="lite"``: no
  discriminators. The first ``warmup_steps`` iterations train inpainting only; then a frozen copy of the generator
  becomes the perceptual network Φ (sabrnet.md §6 decision).
- :class:`SegmentationTrainer`: stage 2 (fine-tuning on labelled images, all-ones mask, CE + Dice) and stage 3
  (``boundary=True``: ``0.5 (CE + Dice) + L_boundary + L_direction`` with the SegFix heads); also the
  supervised-only baseline (stage 2 from scratch).
- :class:`MeanTeacherTrainer`: the semi-supervised baseline (Tarvainen & Valpola 2017): CE + Dice on the labelled
  image, plus a ramped-up consistency between the student on a noisy unlabelled image and the EMA teacher on another
  noisy copy.
- :class:`EMAModel`: the exponential moving average copy of a network, updated after every iteration (the
  evaluation and the shipped model use it).

In a distributed run the networks are not wrapped in DDP: the gradients are averaged over the processes before every
optimiser step (:func:`~labelless.engines.base.average_gradients`), which keeps the copies identical.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer

from labelless.data.keys import SemiSupKeys
from labelless.engines.base import StepTrainer, average_gradients
from labelless.errors import ConfigError, DataError
from labelless.losses import (
    boundary_direction_loss,
    consistency_mse,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    logistic_d_loss,
    logistic_g_loss,
    masked_l1,
    perceptual_style_loss,
    r1_penalty,
    segmentation_ce_dice,
    sigmoid_rampup,
)

__all__ = [
    "EMAModel",
    "PRETRAIN_WEIGHTS",
    "PRETRAIN_PROFILES",
    "prepare_semisup_batch",
    "ShadowPretrainTrainer",
    "SegmentationTrainer",
    "MeanTeacherTrainer",
    "unwrap_network",
]

#: Loss weights of stage 1 (sabrnet.md §6).
PRETRAIN_WEIGHTS = {
    "adv": 1.0,
    "seg_adv": 1.0,
    "feature_matching": 2.0,
    "hole_l1": 10.0,
    "perceptual": 10.0,
    "style": 250.0,
    "ce": 1.0,
    "dice": 1.0,
    "r1_gamma": 10.0,
}
PRETRAIN_PROFILES = ("full", "lite")


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (the network itself otherwise)."""
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel | nn.DataParallel) else network


def _parts(network: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    net = unwrap_network(network)
    if not hasattr(net, "generator"):
        raise ConfigError(f"the network must be a SABRNet (with .generator and .heads); got {type(net).__name__}")
    return net.generator, getattr(net, "heads", None)


class EMAModel:
    """Exponential moving average of a network's parameters (buffers are copied), updated after every iteration.

    Args:
        network: the trained network (a DDP wrapper is unwrapped).
        decay: per-iteration decay; default ``0.5 ** (32 / 10000) ≈ 0.99778`` (sabrnet.md §6).

    Attributes:
        module: the EMA copy (eval mode, no gradients); save it with ``CheckpointSaver`` (``state_dict``).

    Examples::

        ema = EMAModel(network)
        ema.attach(trainer)  # then evaluate ema.module
    """

    def __init__(self, network: nn.Module, decay: float = 0.5 ** (32 / 10000)) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.network = unwrap_network(network)
        self.module = copy.deepcopy(self.network).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module | None = None) -> None:
        """One EMA step towards ``network`` (default: the network given at construction)."""
        src = self.network if network is None else unwrap_network(network)
        for e, p in zip(self.module.parameters(), src.parameters(), strict=True):
            e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)
        for e, b in zip(self.module.buffers(), src.buffers(), strict=True):
            e.copy_(b)

    def reset(self) -> None:
        """Copy the network's current weights (e.g. after loading a checkpoint into it)."""
        self.module.load_state_dict(self.network.state_dict())

    def __call__(self, engine: Engine) -> None:
        self.update()

    def attach(self, engine: Engine) -> None:
        """Update after every iteration of ``engine``."""
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state)


def _tensor(batch: Mapping[str, Any], key: str, required: bool) -> torch.Tensor | None:
    if key not in batch:
        if required:
            raise DataError("semi-supervised batch", f"missing key {key!r} (has {sorted(map(str, batch))})")
        return None
    t = torch.as_tensor(batch[key])
    if t.ndim != 4:
        raise DataError("semi-supervised batch", f"{key!r} must be [B, C, H, W], got shape {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise DataError("semi-supervised batch", f"non-finite values in {key!r}")
    return t


def prepare_semisup_batch(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    required: Iterable[str] = (SemiSupKeys.IMAGE, SemiSupKeys.LABEL),
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """The tensors of a semi-supervised batch (the keys of :class:`~labelless.data.keys.SemiSupKeys` present),
    moved to ``device``; labels as ``[B, 1, H, W]`` int64.

    Raises:
        DataError: not a dict, a missing required key, a non-4D tensor, non-finite values, or image/label/mask
            sizes that differ.
    """
    if not isinstance(batchdata, Mapping):
        raise DataError("semi-supervised batch", f"expected a dict, got {type(batchdata).__name__}")
    required = set(required)
    keys = [v for k, v in vars(SemiSupKeys).items() if k.isupper() and v != SemiSupKeys.NAME]
    out = {}
    for key in keys:
        t = _tensor(batchdata, key, key in required)
        if t is None:
            continue
        if key in (SemiSupKeys.LABEL, SemiSupKeys.BOUNDARY, SemiSupKeys.DIRECTION):
            t = t.long()
        out[key] = t.to(device=device, non_blocking=non_blocking, **kwargs)
    sizes = {k: tuple(v.shape[-2:]) for k, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise DataError("semi-supervised batch", f"image, label and mask sizes differ: {sizes}")
    return out


def _autocast(engine: Any) -> Any:
    use_amp = engine.amp and engine.scaler is not None
    return torch.autocast("cuda", **engine.amp_kwargs) if use_amp else contextlib.nullcontext()


def _step(engine: Any, value: torch.Tensor, optimizer: Optimizer, scaler: Any, clip: float | None) -> None:
    """Backward, average the gradients over the processes, clip their norm, step (with a scaler on CUDA AMP)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if scaler is not None:
        scaler.scale(value).backward()
        average_gradients(optimizer)
        if clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        value.backward()
        average_gradients(optimizer)
        if clip:
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()


def _ones_like_mask(image: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(image[:, :1])


class _SemiSupTrainer(StepTrainer):
    """Common set-up of the semi-supervised trainers: a SABRNet, CE + Dice as ``loss_function``, the batch preparation
    of :func:`prepare_semisup_batch`, and the end of an iteration (events, optimiser step, outputs)."""

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        prepare_batch: Callable = prepare_semisup_batch,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        _parts(network)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=segmentation_ce_dice,
            epoch_length=epoch_length,
            n_steps=n_steps,
            prepare_batch=prepare_batch,
            amp=amp,
            **kwargs,
        )

    @staticmethod
    def _batch(engine: Any, batchdata: Any, required: Iterable[str]) -> dict[str, torch.Tensor]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        return engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, required=tuple(required),
                                    **engine.to_kwargs)  # fmt: skip

    @staticmethod
    def _finish(engine: Any, loss: torch.Tensor, optimizer: Optimizer, scaler: Any, clip: float | None,
                output: dict[str, Any], terms: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
        """Fire the MONAI iteration events around the optimiser step of ``loss`` and complete ``output``."""
        engine.state.output = output
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        _step(engine, loss, optimizer, scaler, clip)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        output.update({Keys.LOSS: loss.detach()})
        output.update({k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in terms.items()})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output


class ShadowPretrainTrainer(_SemiSupTrainer):
    """Stage 1 of SABR-Net: inpainting + segmentation pretraining with shadow imitation (see the module docstring).

    Args:
        device: torch device.
        max_epochs: epochs of ``epoch_length`` iterations (must cover ``n_steps``).
        train_data_loader: loader of paired batches with ``image``, ``image_input``, ``image_input_shadow_mask``,
            ``label``, ``unlabeled``, ``unlabeled_input``, ``unlabeled_input_shadow_mask``.
        network: a :class:`~labelless.networks.sabrnet.SABRNet`.
        optimizer: the generator's Adam of the labelled step.
        u_optimizer: the generator's Adam of the unlabelled step (same parameters, its own state).
        d_optimizer: the discriminators' optimiser (``profile="full"``).
        discriminators: ``{"image": D_img, "seg": D_seg}`` (``profile="full"``).
        profile: ``"full"`` or ``"lite"`` (no discriminators).
        weights: loss weights (defaults :data:`PRETRAIN_WEIGHTS`; partial dicts update them).
        warmup_steps: inpainting-only iterations before Φ is frozen (0: Φ is a frozen copy of the initial generator
            when the perceptual/style weights are non-zero).
        perceptual_network: the module that holds Φ (a generator of the same architecture; default a deep copy);
            its weights are set from the generator at the end of the warm-up. Save it in checkpoints to resume.
        r1_interval: lazy R1 interval (16).
        clip_u, clip_l: gradient-norm clips of the unlabelled (2.0) and labelled (5.0) steps.
        epoch_length, n_steps, amp, kwargs: as for :class:`~labelless.engines.base.StepTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        u_optimizer: Optimizer,
        d_optimizer: Optimizer | None = None,
        discriminators: Mapping[str, nn.Module] | nn.ModuleDict | None = None,
        profile: str = "lite",
        weights: Mapping[str, float] | None = None,
        warmup_steps: int = 0,
        perceptual_network: nn.Module | None = None,
        r1_interval: int = 16,
        clip_u: float = 2.0,
        clip_l: float = 5.0,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        prepare_batch: Callable = prepare_semisup_batch,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        if profile not in PRETRAIN_PROFILES:
            raise ConfigError(f"profile must be one of {PRETRAIN_PROFILES}, got {profile!r}")
        if profile == "full" and (not discriminators or d_optimizer is None):
            raise ConfigError("profile 'full' needs discriminators {'image': D_img, 'seg': D_seg} and a d_optimizer")
        unknown = set(weights or {}) - set(PRETRAIN_WEIGHTS)
        if unknown:
            raise ConfigError(f"unknown stage-1 loss weights {sorted(unknown)}; known: {sorted(PRETRAIN_WEIGHTS)}")
        generator, _ = _parts(network)
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, epoch_length, n_steps,
                         prepare_batch, amp, **kwargs)  # fmt: skip
        self.profile = profile
        self.u_optimizer, self.d_optimizer = u_optimizer, d_optimizer
        self.discriminators = None if profile == "lite" else nn.ModuleDict(dict(discriminators)).to(self.state.device)
        self.weights = {**PRETRAIN_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        self.warmup_steps = max(0, int(warmup_steps))
        self.use_perceptual = self.weights["perceptual"] > 0 or self.weights["style"] > 0
        self.perceptual_network = None
        if self.use_perceptual:
            phi = copy.deepcopy(generator) if perceptual_network is None else perceptual_network
            self.perceptual_network = phi.to(self.state.device).eval()
            for p in self.perceptual_network.parameters():
                p.requires_grad_(False)
        self.r1_interval = max(1, int(r1_interval))
        self.clip_u, self.clip_l = float(clip_u), float(clip_l)
        self.u_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.d_scaler = torch.amp.GradScaler("cuda") if self.amp and profile == "full" else None

    def resume_state(self) -> dict[str, Any]:
        """The main parts plus the second generator optimiser, the discriminators with their optimiser, the frozen
        perceptual copy Φ (refreshed after the warm-up) and the AMP scalers."""
        out = dict(super().resume_state())
        named = {"u_optimizer": self.u_optimizer, "d_optimizer": self.d_optimizer,
                 "discriminators": self.discriminators, "perceptual_network": self.perceptual_network,
                 "u_scaler": self.u_scaler, "d_scaler": self.d_scaler}  # fmt: skip
        out.update({k: v for k, v in named.items() if v is not None})
        return out

    # ----------------------------------------------------------------------------------------------- loss pieces
    def _perceptual(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.perceptual_network
        with torch.no_grad():
            real_f = [f.detach() for f in phi.perceptual_features(real)]
        return perceptual_style_loss(real_f, phi.perceptual_features(fake))

    @staticmethod
    def _seg_input(image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return torch.cat([image, seg], 1)

    @staticmethod
    def _onehot(label: torch.Tensor, n_classes: int) -> torch.Tensor:
        return F.one_hot(label[:, 0].long().clamp(0, n_classes - 1), n_classes).permute(0, 3, 1, 2).float()

    def _image_terms(
        self, engine: Any, clean: torch.Tensor, keep: torch.Tensor, out: Any, real_seg_in: torch.Tensor | None,
        warmup: bool,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """Inpainting (+ adversarial) terms of a G step on one image."""
        w = self.weights
        terms = {"hole_l1": masked_l1(clean, out.composite, keep)}
        total = w["hole_l1"] * terms["hole_l1"]
        if self.discriminators is not None:
            terms["adv"] = logistic_g_loss(self.discriminators["image"](out.composite))
            total = total + w["adv"] * terms["adv"]
            if not warmup and real_seg_in is not None:
                fake_in = self._seg_input(out.composite.detach(), torch.softmax(out.seg, 1))
                fake_feats = self.discriminators["seg"](fake_in)
                with torch.no_grad():
                    real_feats = self.discriminators["seg"](real_seg_in)
                terms["seg_adv"] = sum(hinge_g_loss(s[-1]) for s in fake_feats) / len(fake_feats)
                terms["feature_matching"] = feature_matching_loss(fake_feats, real_feats)
                total = total + w["seg_adv"] * terms["seg_adv"] + w["feature_matching"] * terms["feature_matching"]
        if self.use_perceptual and not warmup:
            terms["perceptual"], terms["style"] = self._perceptual(clean, out.composite)
            total = total + w["perceptual"] * terms["perceptual"] + w["style"] * terms["style"]
        return total, terms

    def _d_step(self, engine: Any, b: dict[str, torch.Tensor], out_u: Any, real_seg_in: torch.Tensor,
                warmup: bool) -> torch.Tensor:  # fmt: skip
        d_img, d_seg = self.discriminators["image"], self.discriminators["seg"]
        self.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        lazy = engine.state.iteration % self.r1_interval == 0
        real_u = b[SemiSupKeys.UNLABELED].detach().requires_grad_(lazy)
        with _autocast(engine):
            real_logit = d_img(real_u)
            loss = logistic_d_loss(real_logit, d_img(out_u.composite.detach()))
            if not warmup:
                fake_in = self._seg_input(out_u.composite, torch.softmax(out_u.seg, 1)).detach()
                real_seg_in = real_seg_in.detach().requires_grad_(lazy)
                real_s = d_seg(real_seg_in)
                fake_s = d_seg(fake_in)
                n = len(real_s)
                loss = loss + 0.5 * (sum(hinge_d_loss(fake=f[-1]) for f in fake_s) / n
                                     + sum(hinge_d_loss(real=r[-1]) for r in real_s) / n)  # fmt: skip
        if lazy:
            gamma = self.weights["r1_gamma"]
            r1 = r1_penalty(real_logit, real_u)
            if not warmup:
                r1 = r1 + r1_penalty(sum(r[-1].sum() for r in real_s), real_seg_in)
            loss = loss + gamma / 2.0 * r1 * self.r1_interval
        _step(engine, loss, self.d_optimizer, self.d_scaler, None)
        return loss.detach()

    # ----------------------------------------------------------------------------------------------- iteration
    def _iteration(self, engine: ShadowPretrainTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        b = engine._batch(engine, batchdata, (SemiSupKeys.IMAGE, SemiSupKeys.LABEL, SemiSupKeys.INPUT,
                          SemiSupKeys.KEEP_MASK, SemiSupKeys.UNLABELED, SemiSupKeys.UNLABELED_INPUT,
                          SemiSupKeys.UNLABELED_KEEP_MASK))  # fmt: skip
        generator, _ = _parts(engine.network)
        it = engine.state.iteration
        warmup = it <= engine.warmup_steps
        if engine.use_perceptual and engine.warmup_steps > 0 and it == engine.warmup_steps + 1:
            engine.perceptual_network.load_state_dict(generator.state_dict())
        engine.network.train()
        x_u, m_u = b[SemiSupKeys.UNLABELED], b[SemiSupKeys.UNLABELED_KEEP_MASK]
        x_l, m_l, y_l = b[SemiSupKeys.IMAGE], b[SemiSupKeys.KEEP_MASK], b[SemiSupKeys.LABEL]

        with _autocast(engine):
            out_u = generator(b[SemiSupKeys.UNLABELED_INPUT], m_u)
        n_classes = out_u.seg.shape[1]
        real_seg_in = self._seg_input(x_l, self._onehot(y_l, n_classes))
        output: dict[str, Any] = {Keys.IMAGE: x_l}
        d_loss = None
        if engine.discriminators is not None:
            d_loss = engine._d_step(engine, b, out_u, real_seg_in, warmup)

        # G step on the unlabelled image
        engine.u_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _autocast(engine):
            loss_u, terms_u = engine._image_terms(engine, x_u, m_u, out_u, real_seg_in, warmup)
        _step(engine, loss_u, engine.u_optimizer, engine.u_scaler, engine.clip_u)

        # G step on the labelled image (after the unlabelled step: a fresh forward)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _autocast(engine):
            out_l = generator(b[SemiSupKeys.INPUT], m_l)
            loss_l, terms_l = engine._image_terms(engine, x_l, m_l, out_l, real_seg_in, warmup)
            if not warmup:
                ce, dice = segmentation_ce_dice(out_l.seg, y_l, ce_temperature=0.1, dice_temperature=0.3)
                loss_l = loss_l + engine.weights["ce"] * ce + engine.weights["dice"] * dice
                terms_l = {**terms_l, "ce": ce, "dice": dice}
        output.update({Keys.PRED: out_l.seg.detach(), Keys.LABEL: y_l})
        terms = {**{f"{k}_u": v for k, v in terms_u.items()}, **terms_l, "loss_u": loss_u, "loss_l": loss_l,
                 "warmup": float(warmup), Keys.LOSS: (loss_u + loss_l).detach()}  # fmt: skip
        if d_loss is not None:
            terms["d_loss"] = d_loss
        return engine._finish(engine, loss_l, engine.optimizer, engine.scaler, engine.clip_l, output, terms)


class SegmentationTrainer(_SemiSupTrainer):
    """Stage 2 (fine-tuning, and the supervised-only baseline) or stage 3 (``boundary=True``) of SABR-Net.

    Labelled batches only, keep-mask all ones (sabrnet.md §3.3). Loss: ``CE(s, y) + Dice(sigmoid(s), onehot(y))``;
    with ``boundary=True``: ``0.5 · (CE + Dice) + L_boundary + L_direction`` (batches then carry ``label_boundary``
    and ``label_direction``, :class:`~labelless.transforms.boundary.BoundaryTargetsd`). Gradient-norm clip ``clip``.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, n_steps, amp, kwargs: as for
            :class:`~labelless.engines.base.StepTrainer` (``network`` a SABRNet).
        boundary: stage 3 (train the boundary heads with the generator).
        freeze_generator: stage 3 with the generator frozen (only the heads learn).
        clip: gradient-norm clip (5.0; ``0`` disables).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        boundary: bool = False,
        freeze_generator: bool = False,
        clip: float = 5.0,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        prepare_batch: Callable = prepare_semisup_batch,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        generator, heads = _parts(network)
        if boundary and heads is None:
            raise ConfigError("boundary training needs a SABRNet with boundary heads (build_sabrnet(with_heads=True))")
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, epoch_length, n_steps,
                         prepare_batch, amp, **kwargs)  # fmt: skip
        self.boundary, self.freeze_generator, self.clip = bool(boundary), bool(freeze_generator), float(clip)
        if self.freeze_generator:
            for p in generator.parameters():
                p.requires_grad_(False)

    def _iteration(self, engine: SegmentationTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        required = [SemiSupKeys.IMAGE, SemiSupKeys.LABEL]
        if engine.boundary:
            required += [SemiSupKeys.BOUNDARY, SemiSupKeys.DIRECTION]
        b = engine._batch(engine, batchdata, required)
        x, y = b[SemiSupKeys.IMAGE], b[SemiSupKeys.LABEL]
        engine.network.train()
        if engine.freeze_generator:
            _parts(engine.network)[0].eval()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _autocast(engine):
            out = engine.network(x, _ones_like_mask(x))
            ce, dice = segmentation_ce_dice(out.seg, y)
            terms = {"ce": ce, "dice": dice}
            if engine.boundary:
                lb, ld = boundary_direction_loss(out.boundary, out.direction, b[SemiSupKeys.BOUNDARY],
                                                 b[SemiSupKeys.DIRECTION])  # fmt: skip
                loss = 0.5 * (ce + dice) + lb + ld
                terms.update(boundary=lb, direction=ld)
            else:
                loss = ce + dice
        output = {Keys.IMAGE: x, Keys.LABEL: y, Keys.PRED: out.seg.detach()}
        return engine._finish(engine, loss, engine.optimizer, engine.scaler, engine.clip, output, terms)


class MeanTeacherTrainer(_SemiSupTrainer):
    """Mean-teacher baseline: supervised CE + Dice on the labelled image plus ``w(t) · MSE(softmax(student(x_u + n1)),
    softmax(teacher(x_u + n2)))`` with a sigmoid ramp-up ``w(t) = consistency · exp(−5 (1 − t/rampup)²)``.

    The teacher is an :class:`EMAModel` of the student (attach it as a train handler, decay 0.99 is usual).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, n_steps, amp, kwargs: as for
            :class:`~labelless.engines.base.StepTrainer` (``network`` a SABRNet; batches with ``image``, ``label``
            and ``unlabeled``).
        teacher: the EMA teacher.
        consistency: maximum consistency weight (default 1.0... scaled MSE of probabilities).
        rampup_steps: ramp-up length in iterations.
        noise_std: standard deviation of the Gaussian input noise of student and teacher (images in [−1, 1]).
        clip: gradient-norm clip.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: nn.Module,
        optimizer: Optimizer,
        teacher: EMAModel,
        consistency: float = 1.0,
        rampup_steps: int = 1000,
        noise_std: float = 0.1,
        clip: float = 5.0,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        prepare_batch: Callable = prepare_semisup_batch,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        _parts(network)
        if not isinstance(teacher, EMAModel):
            raise ConfigError(f"teacher must be an EMAModel of the network, got {type(teacher).__name__}")
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, epoch_length, n_steps,
                         prepare_batch, amp, **kwargs)  # fmt: skip
        if not math.isfinite(float(consistency)) or float(consistency) < 0:
            raise ConfigError(f"consistency must be >= 0, got {consistency!r}")
        self.teacher, self.consistency = teacher, float(consistency)
        self.rampup_steps, self.noise_std, self.clip = int(rampup_steps), float(noise_std), float(clip)

    def resume_state(self) -> dict[str, Any]:
        """The main parts plus the EMA teacher."""
        return {**super().resume_state(), "teacher": self.teacher}

    def _iteration(self, engine: MeanTeacherTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        b = engine._batch(engine, batchdata, (SemiSupKeys.IMAGE, SemiSupKeys.LABEL, SemiSupKeys.UNLABELED))
        x, y, x_u = b[SemiSupKeys.IMAGE], b[SemiSupKeys.LABEL], b[SemiSupKeys.UNLABELED]
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        weight = engine.consistency * sigmoid_rampup(engine.state.iteration, engine.rampup_steps)
        with _autocast(engine):
            out = engine.network(x, _ones_like_mask(x))
            ce, dice = segmentation_ce_dice(out.seg, y)
            student = engine.network(x_u + engine.noise_std * torch.randn_like(x_u), _ones_like_mask(x_u)).seg
            with torch.no_grad():
                teacher = engine.teacher.module(x_u + engine.noise_std * torch.randn_like(x_u),
                                                _ones_like_mask(x_u)).seg  # fmt: skip
            cons = consistency_mse(student, teacher)
            loss = ce + dice + weight * cons
        output = {Keys.IMAGE: x, Keys.LABEL: y, Keys.PRED: out.seg.detach()}
        terms = {"ce": ce, "dice": dice, "consistency": cons, "consistency_weight": weight}
        return engine._finish(engine, loss, engine.optimizer, engine.scaler, engine.clip, output, terms)
