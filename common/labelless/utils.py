# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Small shared helpers: atomic writes, integer id sorting, seeding."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_path", "write_json_atomic", "write_text_atomic", "sort_ids", "seed_everything", "path_suffix"]


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
