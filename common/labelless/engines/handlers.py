# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Small pieces that let bundle configs build handlers without side effects: a TensorBoard writer that creates its
folder on first use (so that loading a config, or building a trainer without running it, writes nothing), and the
choice of handlers each rank of a distributed run attaches."""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

from monai.handlers import LrScheduleHandler

from labelless.engines.checkpoint import TrainingCheckpoint

__all__ = ["LazySummaryWriter", "rank_handlers", "use_handler"]


class LazySummaryWriter:
    """A ``torch.utils.tensorboard.SummaryWriter`` created on the first call of any of its methods.

    MONAI's ``TensorBoardStatsHandler(log_dir=...)`` creates its writer, and with it the log folder and an event
    file, when the handler is built. Bundle configs build their handlers when the trainer is resolved, which
    ``monai.bundle.load`` or a property access may do long before ``run()``. Passing this object as
    ``summary_writer`` defers every write to the first scalar. The writer is closed (flushed) when this object is
    garbage-collected or at interpreter exit.

    Args:
        log_dir: the TensorBoard folder.
        kwargs: further ``SummaryWriter`` arguments.

    Example::

        handler = TensorBoardStatsHandler(summary_writer=LazySummaryWriter("runs/a/tensorboard"))
    """

    def __init__(self, log_dir: str | os.PathLike, **kwargs: Any) -> None:
        self.log_dir = str(log_dir)
        self._kwargs = kwargs
        self._writer: Any = None

    @property
    def created(self) -> bool:
        """Whether the real writer (and its folder) exists yet."""
        return self._writer is not None

    def _real(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
            weakref.finalize(self, self._writer.close)
        return self._writer

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._real(), name)

    def close(self) -> None:
        """Close the writer if it was created (nothing to do otherwise)."""
        if self._writer is not None:
            self._writer.close()


def rank_handlers(handlers: Sequence[Any], rank: int) -> list[Any]:
    """The handlers rank ``rank`` of a distributed run attaches: all of them on rank 0; on the other ranks only
    those every rank needs, the learning-rate schedule and the checkpoint handler (which resumes on every rank and
    writes on rank 0 only: set its ``save`` to ``rank == 0``). Logging, TensorBoard, validation and progress bars run
    on rank 0."""
    if int(rank) == 0:
        return list(handlers)
    return [h for h in handlers if isinstance(h, (LrScheduleHandler, TrainingCheckpoint))]


def use_handler(use: Any) -> Any:
    """A ``train#handlers`` entry for a handler defined under its own id elsewhere in the config, e.g.
    ``{"_target_": "labelless.engines.use_handler", "use": "@checkpoint_saver"}``: MONAI's ``check_properties``
    reads every entry of ``train#handlers`` as a dict, and other items (a checkpoint's ``save_dict``, a
    ``multi_gpu_train.json`` override) refer to the handler by its id. Returns ``use`` itself."""
    if not callable(getattr(use, "attach", None)):
        raise TypeError(f"use_handler: {type(use).__name__} is not a handler (no attach(engine) method)")
    return use
