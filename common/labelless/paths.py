# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Where labelless keeps derived files it may reuse (phantoms, superpixels, synthetic and exported classes), and the
check that an output folder does not lie inside an input folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from labelless.errors import ConfigError

__all__ = ["cache_root", "check_output_outside_inputs"]


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
