# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""labelless: MONAI building blocks for medical image segmentation with few, weak or no labels."""

from __future__ import annotations

from labelless.errors import install_excepthook

__version__ = "0.2.0"

__all__ = ["__version__"]

# an uncaught labelless error (e.g. a bad override of a bundle run) ends with one line naming the file or option
install_excepthook()
