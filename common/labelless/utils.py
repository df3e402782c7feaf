# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Small shared helpers: atomic writes, integer id sorting, seeding."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from labelless.errors import ConfigError

__all__ = [
    "atomic_path",
    "write_json_atomic",
    "write_text_atomic",
    "sort_ids",
    "seed_everything",
    "path_suffix",
    "as_bool",
    "is_unset",
    "LRUCache",
]


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def as_bool(value: Any, name: str = "value") -> bool:
    """A config switch as a bool; strings from the command line are parsed, not truth-tested.

    ``python -m monai.bundle run ... --use_bcma false`` passes the *string* ``"false"`` (fire only converts Python
    literals such as ``False``), and ``bool("false")`` is ``True``: a silent wrong answer this function prevents.

    Args:
        value: a bool, the integers 0/1, or one of the strings true/false, yes/no, on/off, 1/0 (any case).
        name: the config id, for the error message.

    Returns:
        the switch value.

    Raises:
        ConfigError: anything else (e.g. ``"flase"``, ``2``, ``None``).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def is_unset(value: Any) -> bool:
    """Whether a config value means "not given": ``None``, or the strings ``""``, ``"None"``, ``"null"`` (what a
    command line passes for an unset option)."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "null"))


class LRUCache:
    """A small least-recently-used cache (``maxsize <= 0`` disables it).

    Examples::

        cache = LRUCache(256)
        image = cache.get_or_load(("image", pid), lambda: load_rgb(path))
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = int(maxsize)
        self._d: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Hashable) -> Any:
        """The cached value of ``key`` (marked as recently used), or ``None``."""
        if key not in self._d:
            return None
        self._d.move_to_end(key)
        return self._d[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value``; the least recently used entries beyond ``maxsize`` are dropped."""
        if self.maxsize <= 0:
            return
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.maxsize:
            self._d.popitem(last=False)

    def get_or_load(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The cached value of ``key``, or ``load()`` stored under ``key``."""
        hit = self.get(key)
        if hit is None:
            hit = load()
            self.put(key, hit)
        return hit


def path_suffix(path: str | os.PathLike) -> str:
    """Lower-case full suffix of a file name, e.g. ``.nii.gz`` for ``image_1.nii.gz``."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the destination's suffix (writers choose their format from it). On error the
    temporary file is removed and the destination is left untouched.

    Examples::

        with atomic_path("out/pred.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = path_suffix(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp creates 0600; give the file the permissions of a normal write (umask)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


_INT_RE = re.compile(r"^-?\d+$")


def sort_ids(ids: Iterable[str | int]) -> list[str]:
    """Sort scan ids as integers when they all are integers (1, 2, 10 rather than 1, 10, 2), else naturally."""
    ids = [str(i) for i in ids]
    if all(_INT_RE.match(i) for i in ids):
        return sorted(ids, key=int)

    def natural(s: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

    return sorted(ids, key=natural)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy, torch and MONAI's global determinism switch."""
    import torch
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    set_determinism(seed=seed)
