# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Reading PyTorch weight files with clear errors (pretrained encoders, bundle checkpoints)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from labelless.errors import ConfigError, DataError
from labelless.utils import atomic_path

__all__ = ["read_state_dict", "load_network_weights", "average_checkpoints", "WRAPPER_KEYS"]

logger = logging.getLogger(__name__)

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
        first = (str(exc).strip().splitlines() or [""])[0][:200]  # torch's unpickling errors span many lines
        raise DataError(p, f"cannot read the {what}: not a PyTorch checkpoint or a damaged one ({type(exc).__name__}: "
                           f"{first})") from exc  # fmt: skip
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


def load_network_weights(
    network: nn.Module,
    path: str | os.PathLike | Sequence[str | os.PathLike],
    device: str | torch.device = "cpu",
    prefix: str | None = None,
) -> nn.Module:
    """Load a checkpoint into ``network`` with clear errors.

    ``path`` may also be a list of checkpoints for a network made of as many members (a module with a ``members``
    :class:`~torch.nn.ModuleList`, e.g. :class:`~labelless.networks.cltnet.CLTGeneratorEnsemble`): file ``i`` is
    loaded into member ``i``.

    With ``prefix`` (e.g. ``"gen_ab."``), a checkpoint of a larger model that holds ``network`` as a sub-module is
    accepted: when keys start with ``prefix``, only those are used, with the prefix removed; a checkpoint of
    ``network`` alone loads as usual.

    Accepts a plain state dict (the shipped ``model.pt``) or a training checkpoint with the key ``model``. Loaded
    with ``weights_only=True``. Loading is strict, with one documented exception: a sub-module may list, in its
    ``unused_checkpoint_keys`` attribute, keys that a checkpoint of another configuration of the same model carries
    but this configuration does not use (DSPNet with BCMA switched off for a test-time ablation ignores the trained
    ``bcma.cal``); those are dropped with a log message. Missing keys are always an error.

    Raises:
        ConfigError: a list of files for a network without that many members.
        DataError: missing or unreadable file, or weights that do not fit the network (e.g. another bundle's or
            another encoder's checkpoint); the message names the file.
    """
    if isinstance(path, (list, tuple)):
        members = getattr(network, "members", None)
        if not isinstance(members, nn.ModuleList) or len(members) != len(path):
            have = f"{len(members)} members" if isinstance(members, nn.ModuleList) else "no members"
            raise ConfigError(f"{len(path)} weight files need a network of {len(path)} members (an ensemble); "
                              f"{type(network).__name__} has {have}")  # fmt: skip
        for member, one in zip(members, path):
            load_network_weights(member, one, device, prefix)
        return network
    p = Path(path)
    if not p.is_file():
        raise DataError(
            p,
            "checkpoint not found (train the bundle first; to run without weights on purpose set load_pretrain=False)",
        )
    state = read_state_dict(p, "checkpoint", map_location=device)
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = network.state_dict()
    ignorable = {
        (f"{name}." if name else "") + key
        for name, module in network.named_modules()
        for key in getattr(module, "unused_checkpoint_keys", ())
    }
    dropped = sorted(k for k in state if k in ignorable and k not in own)
    if dropped:
        logger.info("%s: ignoring %s (not used by this configuration of the network)", p, ", ".join(dropped))
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape_bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape_bad:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shape_bad:
            k = shape_bad[0]
            detail.append(f"shape mismatch at {k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}")
        raise DataError(
            p,
            "checkpoint does not fit this network — is it from another bundle or another encoder setting? "
            + "; ".join(detail),
        )
    network.load_state_dict(state)
    return network


def average_checkpoints(
    paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, prefix: str | None = None
) -> Path:
    """Uniform average of the weights of several checkpoints of one run (post-hoc weight averaging, as in stochastic
    weight averaging), written atomically as a plain state dict.

    Checkpoints saved a few hundred iterations apart near the end of a run sit close together in weight space; their
    average is one network whose output is steadier than any single checkpoint's (the choice among checkpoints with
    near-equal validation scores is then less of a lottery). Floating-point tensors are averaged (in float64, cast
    back); other tensors (integer counters such as batch norm's ``num_batches_tracked``) are taken from the last file.
    Networks with batch norm keep averaged running statistics, which are only an approximation of the statistics of
    the averaged weights; the labelless generators and encoders this is meant for use instance/layer norms or frozen
    statistics.

    Args:
        paths: the checkpoint files (plain state dicts or training checkpoints with the key ``model``), at least one.
        out_path: the averaged state dict (``.pt``); must not be one of ``paths`` (inputs are never modified).
        prefix: keep only the keys starting with this prefix, without it (e.g. ``"gen_ab."``: the A→B generator of a
            CLTNet training checkpoint, the form inference.json loads); ``None`` keeps every key.

    Returns:
        ``out_path``.

    Raises:
        ConfigError: no input file, or ``out_path`` is one of the inputs.
        DataError: an unreadable file, a file without the prefix, keys or shapes that differ from the first file's,
            or non-finite values (the message names the file).
    """
    files = [Path(p) for p in paths]
    if not files:
        raise ConfigError("average_checkpoints: no checkpoint files given")
    out = Path(out_path)
    if any(out.resolve() == f.resolve() for f in files):
        raise ConfigError(f"average_checkpoints: the output {out} is one of the inputs (inputs are never modified)")
    total: dict[str, torch.Tensor] = {}
    first: Mapping[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for i, f in enumerate(files):
        state = read_state_dict(f, "checkpoint")
        if prefix:
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise DataError(f, f"no weights with the prefix {prefix!r}")
        if i == 0:
            first = dict(state)
        elif set(state) != set(first):
            extra, missing = sorted(set(state) - set(first)), sorted(set(first) - set(state))
            raise DataError(
                f,
                f"keys differ from {files[0]} ({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} extra, "
                f"e.g. {extra[:3]}): not a checkpoint of the same network",
            )
        for k, v in state.items():
            if tuple(v.shape) != tuple(first[k].shape):
                raise DataError(f, f"shape of {k} is {tuple(v.shape)}, {tuple(first[k].shape)} in {files[0]}")
            if v.is_floating_point():
                if not torch.isfinite(v).all():
                    raise DataError(f, f"{k} holds NaN or infinite values")
                total[k] = total[k] + v.double() if k in total else v.double()
            else:
                last[k] = v
    averaged = {k: (total[k] / len(files)).to(first[k].dtype) if k in total else last[k] for k in first}
    with atomic_path(out) as tmp:
        torch.save(averaged, tmp)
    logger.info("averaged %d checkpoints into %s", len(files), out)
    return out
