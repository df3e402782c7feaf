# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Where labelless keeps derived files it may reuse (phantoms, superpixels, synthetic and exported classes)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """Root of the labelless cache: ``$LABELLESS_CACHE`` when set, else ``~/.cache/labelless``."""
    env = os.environ.get("LABELLESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "labelless"
