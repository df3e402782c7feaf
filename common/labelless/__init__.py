# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""labelless: MONAI building blocks for medical image segmentation with few, weak or no labels."""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__"]
