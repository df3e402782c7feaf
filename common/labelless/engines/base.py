# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Shared base of the labelless Ignite trainers (monai_bundle_conventions.md §4).

- :class:`StepTrainer`: a MONAI ``SupervisedTrainer`` whose run is an exact number of iterations (``n_steps``), with
  mixed precision on CUDA only. The episodic trainers (:class:`~labelless.engines.episodic.EpisodicTrainer`,
  :class:`~labelless.engines.surrogate.SurrogateEpisodicTrainer`) subclass it and only add their own arguments
  and their ``_iteration``.
- :class:`StopAtIteration`: the handler that stops a run exactly at ``n_steps`` iterations.
- :class:`EpisodicProgressBar`: a tqdm progress bar of the scalar parts of ``engine.state.output``.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import default_metric_cmp_fn, default_prepare_batch
from torch.optim import Optimizer

from labelless.errors import ConfigError

__all__ = [
    "StepTrainer",
    "StopAtIteration",
    "EpisodicProgressBar",
    "optimizer_param_ids",
    "average_gradients",
    "attach_after_engine",
]


def attach_after_engine(engine: Engine, event: Any, handler: Callable[[Engine], None]) -> None:
    """Add ``handler`` to ``event`` of ``engine`` when the engine starts, i.e. after every handler that the engine's
    constructor and its builder attached (an EMA update, a learning-rate step...), so that it sees the iteration's
    final state.

    MONAI engines attach their ``handlers`` argument inside ``Workflow.__init__``, before the subclass and the
    function that built the engine attach their own per-iteration handlers. A checkpoint or a validation handler
    given in ``train#handlers`` would otherwise run before them and save or score a state that the same iteration
    then changes. Idempotent: a second run of the engine does not add it twice.
    """
    added: list[bool] = []

    def _add(e: Engine) -> None:
        if not added:
            e.add_event_handler(event, handler)
            added.append(True)

    engine.add_event_handler(Events.STARTED, _add)


def optimizer_param_ids(optimizer: Optimizer) -> set[int]:
    """The ``id`` of every parameter an optimiser updates (to check which parameters two optimisers split)."""
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def average_gradients(optimizer: Optimizer) -> None:
    """Average the gradients of ``optimizer``'s parameters over the processes of a distributed run (no-op otherwise).

    The adversarial and semi-supervised trainers call sub-networks directly (several times per iteration), which
    DDP's forward hook cannot follow; averaging the gradients before each step keeps every process's copy identical,
    as DDP would.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world < 2:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
                param.grad.div_(world)


def _stacklevel_outside(obj: object) -> int:
    """The ``warnings.warn`` stack level of the first frame, above the caller, that is not a method of ``obj``.

    Called from the function that warns; the warning then points at the code that constructed ``obj`` (whatever the
    depth of the ``super().__init__`` chain).
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_locals.get("self") is obj:
        frame = frame.f_back
        level += 1
    return level


class StopAtIteration:
    """Terminate a run after exactly ``n_steps`` iterations (ignite ``ITERATION_COMPLETED`` handler).

    Nothing happens when ``n_steps`` equals ``max_epochs × epoch_length`` (the run ends normally, with its last
    ``EPOCH_COMPLETED``); otherwise ``engine.terminate()`` is called at iteration ``n_steps`` (``COMPLETED`` still
    fires, so ``CheckpointSaver(save_final=True)`` writes the final model), or before the first batch of a run
    resumed at or beyond ``n_steps``.

    Args:
        n_steps: total number of iterations.

    Examples::

        StopAtIteration(100_100).attach(trainer)
    """

    def __init__(self, n_steps: int) -> None:
        if int(n_steps) < 1:
            raise ConfigError(f"n_steps must be a positive integer, got {n_steps!r}")
        self.n_steps = int(n_steps)

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine`` (after each iteration, and before fetching a batch so that a run resumed
        from a checkpoint taken at ``n_steps`` does not run one more iteration)."""
        for event in (Events.ITERATION_COMPLETED, Events.GET_BATCH_STARTED):
            if not engine.has_event_handler(self, event):
                engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        state = engine.state
        planned = None if state.epoch_length is None else state.epoch_length * state.max_epochs
        if state.iteration >= self.n_steps and (planned is None or state.iteration < planned):
            engine.terminate()


class EpisodicProgressBar:
    """tqdm progress bar (ignite ``ProgressBar``) showing the running loss parts of a trainer's output.

    Made for :class:`~labelless.engines.episodic.EpisodicTrainer` (default keys); pass ``keys`` for other trainers
    (e.g. ``("loss", "seg_loss", "sur_loss")`` for :class:`~labelless.engines.surrogate.SurrogateEpisodicTrainer`).

    Args:
        keys: output keys shown next to the bar.
        persist: keep the bar of each finished epoch.
        every: refresh every ``every`` iterations (keeps long runs cheap).
        kwargs: other ``tqdm`` arguments (e.g. ``ncols``, ``file``).

    Examples::

        EpisodicProgressBar(every=10).attach(trainer)
    """

    def __init__(
        self,
        keys: Sequence[str] = ("loss", "query_loss", "par_loss"),
        persist: bool = True,
        every: int = 1,
        **kwargs: Any,
    ) -> None:
        from ignite.handlers import ProgressBar

        self.keys = tuple(keys)
        self.every = max(1, int(every))
        self.bar = ProgressBar(persist=persist, **kwargs)

    def _transform(self, output: Any) -> dict[str, float]:
        if not isinstance(output, Mapping):
            return {}
        out = {}
        for k in self.keys:
            v = output.get(k)
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                out[k] = float(v.item())
            elif isinstance(v, int | float):
                out[k] = float(v)
        return out

    def attach(self, engine: Engine) -> None:
        """Attach the bar to ``engine``."""
        self.bar.attach(
            engine, output_transform=self._transform, event_name=Events.ITERATION_COMPLETED(every=self.every)
        )


class StepTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` that runs exactly ``n_steps`` iterations, with mixed precision on CUDA only.

    The common set-up of the labelless trainers; a subclass adds its own arguments, resolves its defaults (loss,
    ``prepare_batch``), calls ``super().__init__`` and implements ``_iteration(engine, batchdata)``. This class:

    - builds the device (``None``: CPU) and turns ``amp`` off, with a ``UserWarning`` naming the trainer class, on any
      device other than CUDA (``self.amp`` is then ``False`` and ``self.scaler`` is ``None``);
    - passes the MONAI workflow arguments through to ``SupervisedTrainer.__init__`` (``decollate`` defaults to
      ``False``: the output of one iteration holds scalars);
    - checks ``n_steps`` against ``max_epochs × epoch_length`` and attaches :class:`StopAtIteration`, so that the
      run ends exactly at iteration ``n_steps`` (``COMPLETED`` still fires) and a resumed run does not overshoot.

    ``_iteration`` sees ``engine.amp``, ``engine.scaler``, ``engine.amp_kwargs``, ``engine.optim_set_to_none``,
    ``engine.prepare_batch``, ``engine.to_kwargs`` as set up by MONAI, and must return ``engine.state.output``.

    Args:
        device: training device (``None``: CPU).
        max_epochs: epochs of ``epoch_length`` iterations; ``max_epochs × epoch_length`` must cover ``n_steps``
            (``max_epochs = ceil(n_steps / epoch_length)``).
        train_data_loader: the training loader.
        network: the network to train.
        optimizer: the (main) optimiser, ``self.optimizer``.
        loss_function: the (main) loss, ``self.loss_function``.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        n_steps: total iterations; the run stops exactly there. ``None``: the full ``max_epochs × epoch_length``.
        non_blocking, prepare_batch, iteration_update, postprocessing, key_train_metric, additional_metrics,
            metric_cmp_fn, train_handlers, event_names, event_to_attr, optim_set_to_none, to_kwargs, amp_kwargs,
            compile, compile_kwargs: as for ``SupervisedTrainer``.
        amp: mixed precision on CUDA; ignored with a warning on other devices.
        decollate: decollate the outputs (default ``False``).

    Attributes:
        n_steps: the validated ``n_steps`` (``None`` when not given).

    Raises:
        ConfigError: ``n_steps`` outside ``1..max_epochs × epoch_length``.

    Examples::

        class PlainTrainer(StepTrainer):
            # one supervised step per {"image", "label"} batch; a new trainer adds its arguments the same way

            def __init__(self, device, max_epochs, train_data_loader, network, optimizer, loss_function=None,
                         **kwargs):
                loss = torch.nn.BCEWithLogitsLoss() if loss_function is None else loss_function
                super().__init__(device, max_epochs, train_data_loader, network, optimizer, loss, **kwargs)

            def _iteration(self, engine, batchdata):
                image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking,
                                                    **engine.to_kwargs)
                engine.network.train()
                engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
                pred = engine.network(image)
                loss = engine.loss_function(pred, label)
                loss.backward()
                engine.optimizer.step()
                engine.state.output = {"pred": pred.detach(), "label": label, "loss": loss.detach()}
                return engine.state.output

        trainer = PlainTrainer("cuda", max_epochs=math.ceil(n_steps / 1000), train_data_loader=loader,
                               network=net, optimizer=opt, epoch_length=1000, n_steps=n_steps, amp=True)
        trainer.run()  # exactly n_steps iterations
    """

    # the n_steps error message suggests max_epochs = ceil(n_steps / epoch_length)
    _n_steps_hint: bool = True

    def __init__(
        self,
        device: str | torch.device | None,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        epoch_length: int | None = None,
        n_steps: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        compile: bool = False,
        compile_kwargs: dict | None = None,
    ) -> None:
        dev, amp = self._device_and_amp(device, amp)
        super().__init__(
            device=dev,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
            compile=compile,
            compile_kwargs=compile_kwargs,
        )
        self.n_steps: int | None = None
        if n_steps is not None:
            self.n_steps = self._check_n_steps(n_steps, max_epochs)
            StopAtIteration(self.n_steps).attach(self)

    def resume_state(self) -> dict[str, Any]:
        """Stateful parts of the trainer beyond those a bundle's ``save_dict`` names (network, main optimiser):
        second optimisers, gradient scalers, discriminators, frozen copies... :class:`~labelless.engines.checkpoint.
        TrainingCheckpoint` saves and restores them with the rest. Subclasses extend the dict of this base (which
        holds the AMP gradient scaler when there is one)."""
        return {} if self.scaler is None else {"scaler": self.scaler}

    def _device_and_amp(self, device: str | torch.device | None, amp: bool) -> tuple[torch.device, bool]:
        """``(torch.device, amp)`` with ``amp`` turned off (and a warning) on devices other than CUDA.

        Idempotent: a subclass may call it before ``super().__init__`` (to warn before its own checks) and pass the
        result on.
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if amp and dev.type != "cuda":
            warnings.warn(
                f"{type(self).__name__}: amp=True is ignored on device {dev} (CUDA only)",
                stacklevel=_stacklevel_outside(self),
            )
            amp = False
        return dev, amp

    def _check_n_steps(self, n_steps: int, max_epochs: int) -> int:
        """``n_steps`` as an int in ``1..max_epochs × epoch_length`` (any value ≥ 1 when the epoch length is unknown).

        Raises:
            ConfigError: out of range.
        """
        n_steps = int(n_steps)
        planned = None if self.state.epoch_length is None else self.state.epoch_length * int(max_epochs)
        if n_steps < 1 or (planned is not None and n_steps > planned):
            hint = ""
            if self._n_steps_hint:
                hint = (
                    "; use max_epochs = ceil(n_steps / epoch_length) = "
                    f"{math.ceil(n_steps / self.state.epoch_length) if self.state.epoch_length else '?'}"
                )
            raise ConfigError(
                f"n_steps={n_steps} must be in 1..max_epochs × epoch_length = {max_epochs} × "
                f"{self.state.epoch_length} = {planned}{hint}"
            )
        return n_steps
