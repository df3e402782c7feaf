# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Where labelless keeps derived files it may reuse (phantoms, superpixels, synthetic and exported classes), and the
check that an output folder does not lie inside an input folder, and the lock that lets one run at a time write into
an output folder."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from labelless.errors import ConfigError

__all__ = [
    "cache_root",
    "check_output_outside_inputs",
    "OutputLock",
    "locked_output",
    "claim_output_folder",
    "LOCK_NAME",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def cache_root() -> Path:
    """Root of the labelless cache: ``$LABELLESS_CACHE`` when set, else ``~/.cache/labelless``."""
    env = os.environ.get("LABELLESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "labelless"


def check_output_outside_inputs(output_dir: str | os.PathLike, input_files: Iterable[str | os.PathLike]) -> Path:
    """``output_dir`` as a ``Path`` after checking that it is neither the folder of an input file nor inside one
    (outputs must never be written into, or read back from, an input folder).

    Raises:
        ConfigError: naming the output folder and the input folder it lies in.
    """
    out_path = Path(output_dir)
    out = out_path.resolve()
    for folder in {Path(f).resolve().parent for f in input_files}:
        if out == folder or folder in out.parents:
            raise ConfigError(f"output_dir {out_path} lies inside the input folder {folder}")
    return out_path


LOCK_NAME = ".labelless.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class OutputLock:
    """One run per output folder: ``<folder>/.labelless.lock`` holds the PID, host and start time of the run writing
    there.

    A second run into the same folder fails at once with a :class:`~labelless.errors.ConfigError` naming the folder
    and the other run. A lock left by a process that no longer exists (killed, crashed) on this host is taken over
    with a log message; one of another host is honoured (delete the file when no run is active there). The lock is
    re-entrant within one process and released when the block (or :meth:`release`) ends, or at interpreter exit.

    Args:
        folder: the output folder (created when missing).
        what: what the folder is, for the messages (e.g. ``"output_dir"``, ``"ckpt_dir"``).

    Examples::

        with OutputLock("runs/eval"):
            ...  # write the reports
    """

    def __init__(self, folder: str | os.PathLike, what: str = "output folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._owned = False

    def _describe(self) -> tuple[int | None, str, str]:
        try:
            info = json.loads(self.path.read_text())
            return int(info["pid"]), str(info.get("host", "?")), str(info.get("started", "?"))
        except (OSError, ValueError, KeyError, TypeError):
            return None, "?", "?"

    def acquire(self) -> OutputLock:
        """Take the lock (see the class docstring).

        Raises:
            ConfigError: another live run holds it, or the folder cannot be written.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.what} {self.folder} cannot be created ({exc.strerror or exc})") from exc
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host, started = self._describe()
                if pid == os.getpid() and host == me["host"]:
                    return self  # this process already holds it (re-entrant; released by the outer holder)
                if pid is not None and (host != me["host"] or _pid_alive(pid)):
                    where = "" if host == me["host"] else f" on host {host}"
                    raise ConfigError(
                        f"{self.what} {self.folder} is in use by another run (pid {pid}{where}, started {started}); "
                        f"wait for it to finish or choose another folder (remove {self.path} if no run is active)"
                    ) from None
                logger.info("taking over the stale lock %s (pid %s is not running)", self.path, pid)
                self.path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise ConfigError(f"{self.what} {self.folder} is not writable ({exc.strerror or exc})") from exc
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._owned = True
            atexit.register(self.release)
            return self
        raise ConfigError(f"{self.what} {self.folder}: could not take the lock {self.path}")

    def release(self) -> None:
        """Remove the lock file if this object took it."""
        if self._owned:
            self._owned = False
            self.path.unlink(missing_ok=True)
            atexit.unregister(self.release)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def locked_output(method: Callable[..., T]) -> Callable[..., T]:
    """Decorator of a runner's ``run`` method: hold :class:`OutputLock` on ``self.output_dir`` while it runs."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        with OutputLock(self.output_dir, "output_dir"):
            return method(self, *args, **kwargs)

    return wrapper


def claim_output_folder(folder: str | os.PathLike, marker: str, what: str = "output folder") -> Path:
    """Make ``folder`` ours to (over)write: create it, or accept it when it is empty or holds ``marker`` (a file this
    writer left there before); then write ``marker``.

    Commands that write a fixed set of file names (``labelless phantoms``, ``labelless demo``) call it so that they
    never replace a user's files of the same names.

    Raises:
        ConfigError: the folder holds files and no ``marker`` (named), or it cannot be created.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is a file, not a folder")
    if out.is_dir() and not (out / marker).is_file():
        others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if others:
            shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
            raise ConfigError(
                f"{what} {out} is not empty ({shown}) and was not written by this command; choose a new or empty "
                "folder (nothing was written)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / marker).write_text(
            json.dumps({"written_by": marker.lstrip("."), "at": time.strftime("%Y-%m-%d %H:%M:%S")})
        )
    except OSError as exc:
        raise ConfigError(f"{what} {out} cannot be written ({exc.strerror or exc})") from exc
    return out
