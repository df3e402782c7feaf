# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Offline preparation of raw downloads into the prepared-volume layout (fewshot_protocol.md §2)."""

from __future__ import annotations

from .chaos import prepare_chaos
from .cmr import prepare_cmr
from .synapse import prepare_synapse

__all__ = ["prepare_chaos", "prepare_synapse", "prepare_cmr"]
