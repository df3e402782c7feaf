# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""One run per output folder (labelless.paths.OutputLock): a second run fails at once; stale locks are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from labelless.engines import TrainingCheckpoint
from labelless.errors import ConfigError
from labelless.paths import LOCK_NAME, OutputLock, locked_output


@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _fake_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-11-30 10:00:00"}
    (folder / LOCK_NAME).write_text(json.dumps(info))


def test_lock_is_taken_released_and_reentrant(tmp_path):
    with OutputLock(tmp_path / "out") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with OutputLock(tmp_path / "out"):  # the same process: re-entrant
            pass
        assert lock.path.exists()  # still held by the outer block
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_second_run_fails_at_once_naming_the_folder_and_the_other_run(tmp_path, other_process):
    _fake_lock(tmp_path / "out", other_process.pid)
    with pytest.raises(ConfigError, match=rf"out is in use by another run \(pid {other_process.pid}, started"):
        OutputLock(tmp_path / "out", "output_dir").acquire()
    _fake_lock(tmp_path / "remote", 1, host="another-host")
    with pytest.raises(ConfigError, match="on host another-host"):
        OutputLock(tmp_path / "remote").acquire()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _fake_lock(tmp_path / "out", int(dead.stdout))
    with OutputLock(tmp_path / "out") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / LOCK_NAME).write_text("{not json")
    with OutputLock(tmp_path / "garbled"):
        pass


def test_unwritable_output_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot be created"):
        OutputLock(tmp_path / "file" / "out").acquire()


def test_runner_and_training_hold_the_lock(tmp_path, other_process):
    class Runner:
        def __init__(self, output_dir):
            self.output_dir, self.ran = output_dir, False

        @locked_output
        def run(self):
            assert (self.output_dir / LOCK_NAME).exists()
            self.ran = True
            return 1

    runner = Runner(tmp_path / "eval")
    assert runner.run() == 1 and runner.ran and not (tmp_path / "eval" / LOCK_NAME).exists()
    _fake_lock(tmp_path / "busy", other_process.pid)
    busy = Runner(tmp_path / "busy")
    with pytest.raises(ConfigError, match="in use by another run"):
        busy.run()
    assert not busy.ran  # refused before any work
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    TrainingCheckpoint(tmp_path / "busy", {"model": torch.nn.Linear(1, 1)}).attach(engine)  # attaching writes nothing
    with pytest.raises(ConfigError, match="ckpt_dir .*busy is in use"):
        engine.run([0, 1], max_epochs=1)  # the second run fails when it starts
