# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Exception types. Every error about user data names the file (or item) and the problem."""

from __future__ import annotations

import os
import sys
import types

__all__ = ["LabellessError", "DataError", "ConfigError", "find_labelless_error", "install_excepthook"]


class LabellessError(Exception):
    """Base class of all labelless errors."""


class DataError(LabellessError, ValueError):
    """Bad input data: unreadable file, wrong shape, NaN, unknown label value, mismatched geometry, ...

    Args:
        source: the file, folder or item the problem is about (``None`` when there is none).
        problem: what is wrong, in plain words.

    Examples::

        raise DataError("/data/label_3.nii.gz", "label value 7 is not in the label map {0, 1, 2, 3, 4}")
    """

    def __init__(self, source: str | os.PathLike | None, problem: str) -> None:
        self.source = None if source is None else os.fspath(source)
        self.problem = problem
        msg = problem if self.source is None else f"{self.source}: {problem}"
        super().__init__(msg)


class ConfigError(LabellessError, ValueError):
    """An invalid combination of options (e.g. Setting 2 on a dataset that has none)."""


def find_labelless_error(exc: BaseException | None) -> LabellessError | None:
    """The innermost :class:`LabellessError` in the ``__cause__`` / ``__context__`` chain of ``exc`` (MONAI wraps
    errors raised while a bundle config is evaluated in ``RuntimeError("Failed to evaluate ...")``)."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, LabellessError):
            found = exc
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return found


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
    err = find_labelless_error(exc)
    if err is None or os.environ.get("LABELLESS_DEBUG"):
        _previous_hook(exc_type, exc, tb)
        return
    print("(set LABELLESS_DEBUG=1 to see the full traceback)", file=sys.stderr)
    print(f"labelless: error: {_one_line(err)}", file=sys.stderr)


_previous_hook = sys.excepthook


def install_excepthook() -> None:
    """Print an uncaught labelless error (also one wrapped by MONAI's config parser) as one last line
    ``labelless: error: <file or option>: <problem>`` instead of a 60–110-line traceback; the process still exits
    with status 1. ``LABELLESS_DEBUG=1`` shows the traceback. Other exceptions are printed as usual. Installed when
    :mod:`labelless` is imported (every bundle config imports it)."""
    global _previous_hook
    if sys.excepthook is not _excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = _excepthook
