# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Crash-safe training checkpoints and resume for the labelless trainers.

:class:`TrainingCheckpoint` replaces MONAI's ``CheckpointSaver`` in every ``train.json``:

- **atomic**: each checkpoint is written to a temporary file in ``save_dir``, flushed to disk and renamed onto
  ``checkpoint_iteration=<n>.pt``; a kill at any moment leaves either the complete new file or none of it;
- **previous kept until the new one is complete**: older checkpoints beyond ``n_saved`` are removed only after the
  new one has been renamed into place (MONAI/Ignite remove the old file first and write non-atomically);
- **complete state**: every object of ``save_dict`` (networks, optimisers, schedulers, EMA copies, validation
  handlers' best-so-far), the objects a trainer lists in ``resume_state()`` (second optimisers, discriminators, the
  frozen perceptual copy, ...), the engine's iteration and epoch, and the global RNG states (torch, CUDA, NumPy,
  Python);
- **resume**: with ``resume=True`` the newest *readable* checkpoint in ``save_dir`` is loaded when the run starts
  (an unreadable one is reported and the previous one used), the data loader is moved on to the first batch not yet
  trained on, and the RNG states are restored last. The labelless training datasets draw each item from a seed of
  its index (or the trainer re-seeds them per iteration), so a resumed run sees the same batches and, on CPU,
  reaches bit-identical weights. Without a checkpoint the run starts from iteration 0 (logged).

Only the process that saves (rank 0 under ``torchrun``) writes; every process resumes (``attach(engine,
save=False)`` on the other ranks).

Bundle config sketch::

    "checkpoint_saver": {"_target_": "labelless.engines.TrainingCheckpoint", "save_dir": "@ckpt_dir",
        "save_dict": {"model": "@network", "optimizer": "@optimizer", "trainer": "@train#trainer"},
        "save_interval": "@save_interval", "n_saved": 2, "final_filename": "@ckpt_name", "resume": "@resume"}
    "initialize": ["$monai.utils.set_determinism(seed=@seed)", "$@checkpoint_saver.attach(@train#trainer)"]
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, Subset

from labelless.engines.base import attach_after_engine
from labelless.errors import ConfigError, DataError
from labelless.paths import OutputLock
from labelless.utils import as_bool, atomic_path

__all__ = [
    "TrainingCheckpoint",
    "BestSoFarState",
    "save_checkpoint_atomic",
    "list_checkpoints",
    "load_latest_checkpoint",
    "rng_state",
    "set_rng_state",
    "CHECKPOINT_PATTERN",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_iteration=(\d+)\.pt$")
_RNG_KEY = "_rng"


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, ``fsync`` it, then rename it onto ``path``.

    A crash (even SIGKILL or power loss after the rename) leaves either the previous content of ``path`` or the
    complete new file, never a truncated one.
    """
    dest = Path(path)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    try:  # make the rename itself durable
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - e.g. file systems that do not support fsync on folders
        pass
    return dest


def list_checkpoints(save_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the ``checkpoint_iteration=<n>.pt`` files in ``save_dir``, newest first."""
    d = Path(save_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, key=lambda t: t[0], reverse=True)


def load_latest_checkpoint(
    save_dir: str | os.PathLike, map_location: str | torch.device = "cpu", engine_key: str = "trainer"
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``save_dir`` that can be read, as ``(path, content)``; ``None`` when there is none.

    Unreadable files (truncated by a crash of a writer that was not atomic, or damaged) and files without the engine
    state under ``engine_key`` are skipped with a warning naming them; they are never deleted.
    """
    for _, path in list_checkpoints(save_dir):
        try:
            # our own training checkpoints (optimiser and scheduler states hold non-tensor objects)
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any failure to read is a damaged file
            logger.warning("skipping unreadable checkpoint %s (%s: %s)", path, type(exc).__name__, exc)
            continue
        if isinstance(obj, dict) and isinstance(obj.get(engine_key), Mapping) and "iteration" in obj[engine_key]:
            return path, obj
        logger.warning("skipping %s: not a labelless training checkpoint (no engine state)", path)
    return None


def rng_state() -> dict[str, Any]:
    """The global random states: torch (CPU and every CUDA device), NumPy and Python's ``random``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # plain types and tensors only, so that the file also loads with torch.load(weights_only=True)
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],  # fmt: skip
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states of :func:`rng_state` (the CUDA states only when CUDA is in use and they are present)."""
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return obj.module
    return obj


class BestSoFarState:
    """``state_dict`` / ``load_state_dict`` of a validation handler that keeps ``best`` (the best score so far) and
    ``history`` (one dict per evaluation): put the handler in a :class:`TrainingCheckpoint`'s ``save_dict`` and a
    resumed run selects against the same best."""

    best: float
    history: list[dict[str, Any]]

    def state_dict(self) -> dict[str, Any]:
        """The best score so far and the history."""
        return {"best": float(self.best), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best = float(state["best"])
        self.history = [dict(h) for h in state["history"]]


class _ResumedLoader:
    """Iterates ``loader`` from batch ``start`` on the first pass (without loading the skipped batches), then as
    ``loader`` on every later pass.

    The first iterator is created here, before the resumed run restores the RNG states: creating a DataLoader
    iterator draws a seed from the global torch generator, and the uninterrupted run drew it before the checkpoint.
    """

    def __init__(self, loader: DataLoader, start: int) -> None:
        self.loader = loader
        bs = int(loader.batch_size or 1)
        rest = Subset(loader.dataset, range(int(start) * bs, len(loader.dataset)))  # type: ignore[arg-type]
        skipped = DataLoader(
            rest,
            batch_size=bs,
            shuffle=False,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
        )
        self._first: Iterator[Any] | None = iter(skipped)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        first, self._first = self._first, None
        return iter(self.loader) if first is None else first


class TrainingCheckpoint:
    """Crash-safe periodic checkpoints of a training run, the final checkpoint, and resume (see the module docstring).

    Args:
        save_dir: folder of the checkpoints (created when needed).
        save_dict: name → object with ``state_dict()``/``load_state_dict()`` (networks, optimisers, schedulers, EMA
            models, validation handlers). An Ignite engine (the trainer) is stored as its iteration and epoch.
        save_interval: iterations between checkpoints (``0``: only the final one).
        n_saved: periodic checkpoints kept (the oldest beyond this are removed once the new one is complete).
        save_final: write ``final_filename`` (same content) when the run completes.
        final_filename: name of the final checkpoint in ``save_dir``.
        resume: continue from the newest readable checkpoint of ``save_dir`` when the run starts.
        map_location: device the checkpoint is read to (default: CPU; the state dicts move to their objects'
            devices when loaded).
        engine_objects: attributes of the engine saved with ``save_dict`` when it is attached (e.g. ``["optimizer"]``
            for a trainer that builds its own optimiser).
        engine_name: the key of the engine's iteration/epoch when ``save_dict`` holds no engine.
        save: write checkpoints (False: only resume, e.g. on the ranks > 0 of a distributed run).

    Raises:
        ConfigError: bad arguments (``save_interval`` < 0, ``n_saved`` < 1, an object without ``state_dict``).

    Examples::

        ckpt = TrainingCheckpoint("runs/a/models", {"model": net, "optimizer": opt, "trainer": trainer},
                                  save_interval=500, resume=True)
        ckpt.attach(trainer)
        trainer.run()
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 1000,
        n_saved: int = 2,
        save_final: bool = True,
        final_filename: str = "model_final.pt",
        resume: bool = False,
        map_location: str | torch.device = "cpu",
        engine_objects: Sequence[str] = (),
        engine_name: str = "trainer",
        save: bool = True,
    ) -> None:
        if isinstance(save_interval, bool) or int(save_interval) != save_interval or int(save_interval) < 0:
            raise ConfigError(f"save_interval must be an integer >= 0, got {save_interval!r}")
        if isinstance(n_saved, bool) or int(n_saved) != n_saved or int(n_saved) < 1:
            raise ConfigError(f"n_saved (keep_checkpoints) must be an integer >= 1, got {n_saved!r}")
        if not isinstance(save_dict, Mapping) or not (save_dict or engine_objects):
            raise ConfigError("save_dict must be a non-empty mapping of names to objects")
        if isinstance(engine_objects, str) or not all(isinstance(n, str) and n for n in engine_objects):
            raise ConfigError(f"engine_objects must be a list of engine attribute names, got {engine_objects!r}")
        for name, obj in save_dict.items():
            if not isinstance(obj, Engine) and not hasattr(_unwrap(obj), "state_dict"):
                raise ConfigError(f"save_dict[{name!r}] ({type(obj).__name__}) has no state_dict()")
        if not str(final_filename) or Path(str(final_filename)).name != str(final_filename):
            raise ConfigError(f"final_filename must be a plain file name, got {final_filename!r}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval, self.n_saved = int(save_interval), int(n_saved)
        self.save_final = as_bool(save_final, "save_final")
        self.final_filename = str(final_filename)
        self.resume = as_bool(resume, "resume")
        self.save = as_bool(save, "save")
        self.map_location = map_location
        self.engine_objects = tuple(engine_objects)
        # the engine's iteration and epoch are stored under its save_dict name (MONAI's CheckpointSaver does the same)
        self.engine_key = next((k for k, v in self.save_dict.items() if isinstance(v, Engine)), str(engine_name))
        self.resumed_from: Path | None = None
        self.last_saved: Path | None = None
        self._lock: OutputLock | None = None

    # ------------------------------------------------------------------------------------------------ attach
    def attach(self, engine: Engine, save: bool | None = None) -> None:
        """Register the handlers on ``engine``: resume when it starts (when ``resume``), and, when ``save`` (default:
        the constructor's ``save``), the periodic and final checkpoints. Attach it after the handlers whose state it
        saves (validation), so that a checkpoint taken at iteration n includes their work at n: in a bundle config it
        is the last entry of ``train#handlers``, which MONAI attaches in order when the trainer is built (at
        ``run()``, so loading a config writes nothing).

        ``engine_objects`` (constructor) names engine attributes saved with the ``save_dict``, e.g. ``["optimizer"]``:
        a config cannot name ``@train#trainer`` in the ``save_dict`` of a handler that the trainer itself holds."""
        save = self.save if save is None else as_bool(save, "save")
        if self.engine_objects:
            # read when the run starts: MONAI engines attach their handlers before their own __init__ sets them
            engine.add_event_handler(Events.STARTED, self._take_engine_objects)
        if save:
            # one run per checkpoint folder: a second training into it fails when it starts, before it overwrites a
            # checkpoint (taken at STARTED, not here: loading a bundle config must not write anything)
            engine.add_event_handler(Events.STARTED, self._take_lock)
        if self.resume and not engine.has_event_handler(self._resume, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._resume)
        if not save:
            return
        # registered when the run starts: after the engine's own per-iteration handlers (EMA update...), so that a
        # checkpoint holds the iteration's final state
        if self.save_interval > 0:
            attach_after_engine(engine, Events.ITERATION_COMPLETED(every=self.save_interval), self._save_periodic)
        if self.save_final:
            attach_after_engine(engine, Events.COMPLETED, self._save_final)
        attach_after_engine(engine, Events.COMPLETED, lambda _: self._lock.release() if self._lock else None)

    def _take_engine_objects(self, engine: Engine) -> None:
        for name in self.engine_objects:
            obj = getattr(engine, name, None)
            if obj is None or not hasattr(_unwrap(obj), "state_dict"):
                raise ConfigError(f"engine_objects: {type(engine).__name__}.{name} is missing or has no state_dict()")
            self.save_dict[name] = obj

    def _take_lock(self, engine: Engine) -> None:
        if self._lock is None:
            self._lock = OutputLock(self.save_dir, "ckpt_dir").acquire()

    # ------------------------------------------------------------------------------------------------ state
    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = {k: v for k, v in self.save_dict.items() if not isinstance(v, Engine)}
        named = {id(_unwrap(v)) for v in objects.values()}
        extra = getattr(engine, "resume_state", None)
        if callable(extra):
            for name, obj in extra().items():
                if id(_unwrap(obj)) not in named:  # the bundle's save_dict may already name it
                    objects[f"trainer.{name}"] = obj
                    named.add(id(_unwrap(obj)))
        return objects

    def state(self, engine: Engine) -> dict[str, Any]:
        """The checkpoint content at the engine's current iteration."""
        out: dict[str, Any] = {name: _unwrap(obj).state_dict() for name, obj in self._objects(engine).items()}
        out[self.engine_key] = {"iteration": int(engine.state.iteration), "epoch": int(engine.state.epoch)}
        out[_RNG_KEY] = rng_state()
        return out

    def _save_periodic(self, engine: Engine) -> None:
        it = int(engine.state.iteration)
        path = save_checkpoint_atomic(self.state(engine), self.save_dir / f"checkpoint_iteration={it}.pt")
        self.last_saved = path
        for old_it, old in list_checkpoints(self.save_dir)[self.n_saved :]:
            if old_it < it:
                old.unlink(missing_ok=True)
        logger.info("iteration %d: checkpoint %s", it, path)

    def _save_final(self, engine: Engine) -> None:
        path = save_checkpoint_atomic(self.state(engine), self.save_dir / self.final_filename)
        self.last_saved = path
        logger.info("final checkpoint (iteration %d): %s", int(engine.state.iteration), path)

    # ------------------------------------------------------------------------------------------------ resume
    def _resume(self, engine: Engine) -> None:
        for stale in self.save_dir.glob(".checkpoint_iteration=*.tmp*"):  # temporary files of a killed writer
            stale.unlink(missing_ok=True)
        found = load_latest_checkpoint(self.save_dir, self.map_location, self.engine_key)
        if found is None:
            logger.info("resume: no checkpoint in %s; starting from iteration 0", self.save_dir)
            return
        path, ckpt = found
        objects = self._objects(engine)
        missing = sorted(set(objects) - set(ckpt))
        if missing:
            raise DataError(
                path,
                f"cannot resume: the checkpoint has no state for {missing} (it was written by another configuration; "
                "move it away or start without --resume)",
            )
        for name, obj in objects.items():
            try:
                _unwrap(obj).load_state_dict(ckpt[name])
            except (RuntimeError, KeyError, ValueError, TypeError) as exc:
                raise DataError(path, f"cannot resume {name!r}: {exc}") from exc
        it = int(ckpt[self.engine_key]["iteration"])
        # completed epochs, as Ignite's own Engine.load_state_dict counts them (the run loop adds one when it goes on)
        epoch = it // engine.state.epoch_length if engine.state.epoch_length else int(ckpt[self.engine_key]["epoch"])
        engine.state.iteration, engine.state.epoch = it, epoch
        self._skip_data(engine, it)
        set_rng_state(ckpt[_RNG_KEY])  # last: building the resumed loader may draw random numbers
        self.resumed_from = path
        logger.info("resumed from %s (iteration %d, epoch %d)", path, it, epoch)

    @staticmethod
    def _skip_data(engine: Engine, iteration: int) -> None:
        """Make the engine's next batch the one an uninterrupted run would train on at ``iteration + 1``."""
        loader = engine.state.dataloader
        if not isinstance(loader, DataLoader):
            return
        if not isinstance(loader.sampler, SequentialSampler):
            # shuffled or distributed samplers: the labelless episodic trainers re-seed their datasets per iteration,
            # so the batch content does not depend on the position
            logger.info(
                "resume: %s is not sequential; the data position is not restored", type(loader.sampler).__name__
            )
            return
        n = len(loader)
        if n == 0:
            return
        start = iteration % n
        if start:
            engine.state.dataloader = _ResumedLoader(loader, start)
