# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Run a bundle's ``train.json`` in this process and, on request, kill the process with SIGKILL mid-step or mid-save.

Used by ``tests/test_resume.py`` as ``python tests/_resume_driver.py '<json>'`` with the JSON keys ``bundle``,
``overrides`` (``bundle_root``, ``dataset_dir``, ...) and optionally ``kill``: ``{"at": "backward", "n": k}`` sends
SIGKILL to this process inside its k-th ``backward`` call (after a forward pass, before the optimiser step), and
``{"at": "save", "n": k}`` writes half of ``checkpoint_iteration=<k>.pt``'s bytes to the file being saved, then
sends SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bundles import bundle_workflow  # noqa: E402


def _install_kill(kill: dict) -> None:
    n = int(kill["n"])
    if kill["at"] == "backward":
        original_backward = torch.autograd.backward
        calls = [0]

        def backward(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return original_backward(*args, **kwargs)

        torch.autograd.backward = backward
    elif kill["at"] == "save":
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            if f"checkpoint_iteration={n}." in str(getattr(f, "name", f)):
                buf = io.BytesIO()
                original_save(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return original_save(obj, f, *args, **kwargs)

        torch.save = save
    else:
        raise SystemExit(f"unknown kill point {kill['at']!r}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("kill"):
        _install_kill(spec["kill"])
    os.chdir(spec["overrides"]["bundle_root"])
    wf = bundle_workflow(spec["bundle"], ["train.json"], "train", **spec["overrides"])
    wf.initialize()
    wf.run()
    wf.finalize()


if __name__ == "__main__":
    main()
