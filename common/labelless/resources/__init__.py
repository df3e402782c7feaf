# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Package resources (the vendored MONAI metadata schema)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RESOURCES", "META_SCHEMA"]

RESOURCES = Path(__file__).resolve().parent
META_SCHEMA = RESOURCES / "meta_schema_20240725.json"
