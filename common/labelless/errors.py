# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Exception types. Every error about user data names the file (or item) and the problem."""

from __future__ import annotations

import os

__all__ = ["LabellessError", "DataError", "ConfigError"]


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
