# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Shared test fixtures. Tests that read ../shared/data skip when it is absent, but fail when CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LABELLESS_DATA", REPO.parent / "shared" / "data"))


def shared_data_dir(sub: str = "") -> Path:
    """Path of ``../shared/data/<sub>``; skip (or fail under CI=true) when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the shared data folder {p} is missing")
        pytest.skip(f"shared data not available at {p} (set LABELLESS_DATA)")
    return p


@pytest.fixture
def chaos_dir() -> Path:
    return shared_data_dir("chaos_t2spir")


@pytest.fixture
def shared_data() -> Path:
    return shared_data_dir()
