# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Handlers that make bundle configs side-effect free until ``run()``: ``attach_after_engine`` ordering, the
checkpoint handler's ``save``/``engine_objects`` options, ``LazySummaryWriter`` and ``rank_handlers``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler, StatsHandler, TensorBoardStatsHandler

from labelless.engines import (
    LazySummaryWriter,
    TrainingCheckpoint,
    attach_after_engine,
    list_checkpoints,
    rank_handlers,
    use_handler,
)
from labelless.errors import ConfigError


def _engine(n: int = 4) -> Engine:
    return Engine(lambda e, b: float(b))


def test_attach_after_engine_runs_after_later_handlers():
    order: list[str] = []
    eng = _engine()
    attach_after_engine(eng, Events.ITERATION_COMPLETED, lambda e: order.append("late"))
    eng.add_event_handler(Events.ITERATION_COMPLETED, lambda e: order.append("engine"))  # e.g. an EMA update
    eng.run([1, 2], max_epochs=1)
    assert order == ["engine", "late", "engine", "late"]
    order.clear()
    eng.run([1], max_epochs=1)  # a second run does not add it twice
    assert order == ["engine", "late"]


class _Holder(Engine):
    """An engine whose optimiser is set after construction (as MONAI trainers set theirs after attaching handlers)."""


def test_checkpoint_engine_objects_and_save_switch(tmp_path: Path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    eng = _Holder(lambda e, b: opt.step())
    ckpt = TrainingCheckpoint(tmp_path / "a", {"model": net}, save_interval=2, engine_objects=["optimizer"])
    ckpt.attach(eng)
    eng.optimizer = opt  # set after attach: read when the run starts
    eng.run([0] * 4, max_epochs=1)
    saved = torch.load(tmp_path / "a" / "model_final.pt", weights_only=True)
    assert {"model", "optimizer", "trainer"} <= set(saved) and saved["trainer"]["iteration"] == 4
    assert [it for it, _ in list_checkpoints(tmp_path / "a")] == [4, 2]

    quiet = TrainingCheckpoint(tmp_path / "b", {"model": net}, save_interval=1, save=False)
    eng2 = _engine()
    quiet.attach(eng2)
    eng2.run([0] * 3, max_epochs=1)
    assert not (tmp_path / "b").exists()

    eng3 = _Holder(lambda e, b: None)
    TrainingCheckpoint(tmp_path / "c", {"model": net}, engine_objects=["optimizer"]).attach(eng3)
    with pytest.raises(ConfigError, match="engine_objects"):
        eng3.run([0], max_epochs=1)
    with pytest.raises(ConfigError, match="engine_objects"):
        TrainingCheckpoint(tmp_path / "d", {"model": net}, engine_objects="optimizer")


def test_lazy_summary_writer_creates_nothing_until_used(tmp_path: Path):
    log_dir = tmp_path / "tb"
    writer = LazySummaryWriter(log_dir)
    handler = TensorBoardStatsHandler(summary_writer=writer, output_transform=lambda out: {"loss": out})
    eng = _engine()
    handler.attach(eng)
    assert not log_dir.exists() and not writer.created
    eng.run([1.0, 2.0], max_epochs=1)
    assert writer.created and any(log_dir.glob("events.out.tfevents.*"))
    writer.close()


def test_rank_handlers_and_use_handler(tmp_path: Path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    lr = LrScheduleHandler(torch.optim.lr_scheduler.StepLR(opt, 1))
    stats = StatsHandler()
    ckpt = TrainingCheckpoint(tmp_path, {"model": net})
    handlers = [lr, stats, use_handler(ckpt)]
    assert rank_handlers(handlers, 0) == handlers
    assert rank_handlers(handlers, 1) == [lr, ckpt]
    with pytest.raises(TypeError, match="not a handler"):
        use_handler(net)
