# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Image readers and writers that keep geometry (spacing, origin, direction)."""

from __future__ import annotations

from .volume import Volume

__all__ = ["Volume"]
