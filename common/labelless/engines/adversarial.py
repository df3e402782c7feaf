# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Cycle-translation GAN trainer of CLTNet (cltnet.md §4–5): a discriminator step, then a generator step.

:class:`CycleTranslationTrainer` is a :class:`~labelless.engines.base.StepTrainer` (a MONAI ``SupervisedTrainer``)
whose iteration trains on one unpaired batch ``{image_a, image_b}`` (:class:`~labelless.data.keys.DomainKeys`;
images in [−1, 1]), built like MONAI's ``GanTrainer`` / ``AdversarialTrainer`` (D step then G step):

1. both generators translate: ``out_ab = G_AB(x_A)`` (lesion → normal, its ``mask`` is the segmentation),
   ``out_ba = G_BA(x_B)``;
2. **D step** (``d_optimizer``): LSGAN on the patch and CAM logits of the four discriminators, real images against
   the detached translations ``out_ba.y`` (domain A) and ``out_ab.y`` (domain B);
3. **G step** (``optimizer``, both generators): adversarial terms on the translations and on the mask-gated
   composites, cycle, identity, generator CAM and reconstruction terms
   (:class:`~labelless.losses.CycleTranslationLoss`), then every ρ of the LIN/AdaLIN layers is clipped to [0, 1].

The network is a :class:`~labelless.networks.cltnet.CLTNet` (attributes ``gen_ab``, ``gen_ba``, ``dis_ga``,
``dis_la``, ``dis_gb``, ``dis_lb``), not wrapped in DDP: in a distributed run the gradients are averaged over the
processes before every optimiser step. ``engine.state.output`` holds ``loss`` (the G loss), ``d_loss``, the G terms
(``adv``, ``adv_c``, ``cycle``, ``ident``, ``cam``, ``recon``) and ``mask_mean`` (mean of M on the A images).

Bundle config sketch::

    "train": {"trainer": {
        "_target_": "labelless.engines.adversarial.CycleTranslationTrainer", "device": "@device",
        "max_epochs": "$math.ceil(@n_steps / @epoch_length)", "epoch_length": "@epoch_length", "n_steps": "@n_steps",
        "train_data_loader": "@train#dataloader", "network": "@network", "optimizer": "@g_optimizer",
        "d_optimizer": "@d_optimizer", "loss_function": "@loss", "train_handlers": "@train#handlers"}}
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from labelless.data.keys import DomainKeys
from labelless.engines.base import StepTrainer, average_gradients, optimizer_param_ids
from labelless.errors import ConfigError, DataError
from labelless.losses import CycleTranslationLoss
from labelless.networks.cltnet import clip_rho_

__all__ = ["CycleTranslationTrainer", "prepare_domain_batch", "DOMAIN_KEYS"]

DOMAIN_KEYS = (DomainKeys.IMAGE_A, DomainKeys.IMAGE_B)
_PARTS = ("gen_ab", "gen_ba", "dis_ga", "dis_la", "dis_gb", "dis_lb")


def prepare_domain_batch(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (domain-A, domain-B) image batches of an unpaired batch, moved to ``device``.

    Raises:
        DataError: a missing key, non-4D tensors, different channel counts or non-finite values.
    """
    if not isinstance(batchdata, Mapping):
        raise DataError("domain batch", f"expected a dict with keys {DOMAIN_KEYS}, got {type(batchdata).__name__}")
    missing = [k for k in DOMAIN_KEYS if k not in batchdata]
    if missing:
        raise DataError("domain batch", f"missing keys {missing} (expected {DOMAIN_KEYS})")
    a, b = (torch.as_tensor(batchdata[k]) for k in DOMAIN_KEYS)
    if a.ndim < 4 or b.ndim != a.ndim or a.shape[1] != b.shape[1]:
        raise DataError("domain batch", f"image_a {tuple(a.shape)} / image_b {tuple(b.shape)} must be [B, C, *spatial] "
                                        "with the same channels")  # fmt: skip
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise DataError("domain batch", "non-finite values in the images")
    return (a.to(device=device, non_blocking=non_blocking, **kwargs),
            b.to(device=device, non_blocking=non_blocking, **kwargs))  # fmt: skip


def _parts(network: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    net = network.module if hasattr(network, "module") and not hasattr(network, "gen_ab") else network
    missing = [p for p in _PARTS if not hasattr(net, p)]
    if missing:
        raise ConfigError(f"the network must be a CLTNet with {_PARTS}; {type(net).__name__} lacks {missing}")
    return tuple(getattr(net, p) for p in _PARTS)


class CycleTranslationTrainer(StepTrainer):
    """D step then G step of CAM-guided, mask-gated cycle translation (see the module docstring).

    Args:
        device: torch device.
        max_epochs: epochs of ``epoch_length`` iterations; ``max_epochs × epoch_length`` must cover ``n_steps``.
        train_data_loader: loader of unpaired ``{image_a, image_b}`` batches.
        network: a :class:`~labelless.networks.cltnet.CLTNet`.
        optimizer: the generators' optimiser (over ``network.generator_parameters()``).
        d_optimizer: the discriminators' optimiser (over ``network.discriminator_parameters()``).
        loss_function: a :class:`~labelless.losses.CycleTranslationLoss` (default: the BraTS weights).
        epoch_length: iterations per epoch.
        n_steps: total iterations (exact stop, :class:`~labelless.engines.base.StopAtIteration`).
        prepare_batch: defaults to :func:`prepare_domain_batch`; must return its 2-tuple.
        amp: mixed precision on CUDA (one gradient scaler per optimiser); ignored with a warning elsewhere.
        kwargs: the other options of :class:`~labelless.engines.base.StepTrainer` and MONAI's ``SupervisedTrainer``
            (``non_blocking``, ``train_handlers``, ``key_train_metric``, ``to_kwargs``, ``amp_kwargs``, ...).

    Raises:
        ConfigError: the network is not a CLTNet, or an optimiser holds parameters of the other side.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        d_optimizer: Optimizer,
        loss_function: CycleTranslationLoss | None = None,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        prepare_batch: Callable = prepare_domain_batch,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        gen_ab, gen_ba, *dis = _parts(network)
        g_ids = {id(p) for m in (gen_ab, gen_ba) for p in m.parameters()}
        d_ids = {id(p) for m in dis for p in m.parameters()}
        if optimizer_param_ids(optimizer) & d_ids or optimizer_param_ids(d_optimizer) & g_ids:
            raise ConfigError("optimizer must hold the generators' parameters and d_optimizer the discriminators' "
                              "(network.generator_parameters() / network.discriminator_parameters())")  # fmt: skip
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=CycleTranslationLoss() if loss_function is None else loss_function,
            epoch_length=epoch_length,
            n_steps=n_steps,
            prepare_batch=prepare_batch,
            amp=amp,
            **kwargs,
        )
        self.d_optimizer = d_optimizer
        self.d_scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def resume_state(self) -> dict[str, Any]:
        """The main parts plus the discriminator optimiser (and its gradient scaler under AMP)."""
        out = {**super().resume_state(), "d_optimizer": self.d_optimizer}
        if self.d_scaler is not None:
            out["d_scaler"] = self.d_scaler
        return out

    def _iteration(self, engine: CycleTranslationTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One unpaired batch: the D step, then the G step and the ρ clipping.

        Raises:
            ValueError: no batch data.
            DataError: a malformed batch.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x_a, x_b = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        gen_ab, gen_ba, dis_ga, dis_la, dis_gb, dis_lb = _parts(engine.network)
        dis_a, dis_b = (dis_ga, dis_la), (dis_gb, dis_lb)
        loss: CycleTranslationLoss = engine.loss_function
        use_amp = engine.amp and engine.scaler is not None

        def autocast() -> Any:
            return torch.autocast("cuda", **engine.amp_kwargs) if use_amp else contextlib.nullcontext()

        def step(value: torch.Tensor, optimizer: Optimizer, scaler: Any) -> None:
            if use_amp:
                scaler.scale(value).backward()
                average_gradients(optimizer)
                scaler.step(optimizer)
                scaler.update()
            else:
                value.backward()
                average_gradients(optimizer)
                optimizer.step()

        def judge(discriminators: tuple, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [d(image)[:2] for d in discriminators]

        engine.network.train()
        with autocast():
            out_ab, out_ba = gen_ab(x_a), gen_ba(x_b)
        engine.state.output = {Keys.IMAGE: x_a, Keys.PRED: out_ab.mask.detach()}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        # D step: real images against the detached translations
        engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast():
            d_loss = loss.discriminator(
                real_outputs=judge(dis_a, x_a) + judge(dis_b, x_b),
                fake_outputs=judge(dis_a, out_ba.y.detach()) + judge(dis_b, out_ab.y.detach()),
            )
        step(d_loss, engine.d_optimizer, engine.d_scaler)

        # G step (the discriminators take no gradient step here)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast():
            cyc_a, cyc_b = gen_ba(out_ab.y), gen_ab(out_ba.y)
            id_a, id_b = gen_ba(x_a), gen_ab(x_b)
            g_loss, terms = loss.generator(
                fake_outputs=judge(dis_a, out_ba.y) + judge(dis_b, out_ab.y),
                composite_outputs=judge(dis_a, out_ba.y_comp) + judge(dis_b, out_ab.y_comp),
                cycle=[(cyc_a.y, x_a), (cyc_b.y, x_b)],
                identity=[(id_a.y, x_a), (id_b.y, x_b)],
                cam_real=[out_ab.cam_logit, out_ba.cam_logit],
                cam_fake=[id_b.cam_logit, id_a.cam_logit],
                reconstruction=[(out_ab.x_rec, x_a), (out_ba.x_rec, x_b)],
                masks_normal=[id_b.mask],
                masks_lesion=[out_ab.mask],
            )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        step(g_loss, engine.optimizer, engine.scaler)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        clip_rho_(gen_ab)
        clip_rho_(gen_ba)
        engine.state.output.update(
            {Keys.LOSS: g_loss.detach(), "d_loss": d_loss.detach(), "mask_mean": out_ab.mask.detach().mean(), **terms}
        )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
