# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Reading PyTorch weight files with clear errors (pretrained encoders, bundle checkpoints)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from labelless.errors import DataError

__all__ = ["read_state_dict", "WRAPPER_KEYS"]

# keys under which training scripts nest a state dict (MONAI CheckpointSaver: "model"; others: "state_dict", ...)
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def read_state_dict(
    path: str | os.PathLike, what: str = "checkpoint", map_location: str | torch.device = "cpu"
) -> Mapping[str, torch.Tensor]:
    """A state dict from a weight file: a plain state dict, or one nested under ``model`` / ``state_dict`` /
    ``model_state_dict`` (a training checkpoint). Loaded with ``weights_only=True`` (no code runs).

    Args:
        path: the file.
        what: what the file is, for the messages (e.g. ``"pretrained VGG16 checkpoint"``).
        map_location: device of the loaded tensors.

    Returns:
        the mapping of parameter names to tensors.

    Raises:
        DataError: a missing or unreadable file, or one without a state dict; the message names the file.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise DataError(p, f"{what} file does not exist")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad file
        raise DataError(p, f"cannot read the {what} ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(
            p, f"not a state dict (expected names -> tensors, or a checkpoint with one of the keys {WRAPPER_KEYS})"
        )
    return obj
