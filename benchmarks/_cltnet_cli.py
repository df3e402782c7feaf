# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Command-line pieces shared by the CLTNet benchmark scripts (``cltnet_val_select.py``, ``cltnet_threshold_sweep.py``):
the options that rebuild a checkpoint's network, and the iteration number in a checkpoint's name."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from labelless.networks.cltnet import build_cltnet
from labelless.weak.workflow import load_weak_weights


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """``--image_size``, ``--ngf``, ``--ndf``, ``--n_layers_global``, ``--zero_corners``, ``--patch_zoom``,
    ``--color_constancy`` (train.json's CPU profile)."""
    ap.add_argument("--zero_corners", action="store_true")
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--ndf", type=int, default=16)
    ap.add_argument("--n_layers_global", type=int, default=7, help="6 for a 64-px profile (train.json's option)")
    zoom = "sliding windows on images zoomed by this factor (a model trained on crops; train.json's option)"
    ap.add_argument("--patch_zoom", type=float, default=1.0, help=zoom)
    cc = "shades-of-grey power applied to each image first (domains built with --color_constancy; 0: off)"
    ap.add_argument("--color_constancy", type=float, default=0.0, help=cc)


def load_model(args: argparse.Namespace, ckpt: str | Path) -> torch.nn.Module:
    """A CLTNet built from the :func:`add_model_args` options, with the weights of ``ckpt``."""
    net = build_cltnet(ngf=args.ngf, ndf=args.ndf, n_layers_global=args.n_layers_global)
    load_weak_weights(net, ckpt)
    return net


def iteration(path: Path) -> int:
    """The ``iteration=<n>`` of a checkpoint's file name, −1 without one (e.g. ``best_model.pt``)."""
    m = re.search(r"iteration=(\d+)", path.name)
    return int(m.group(1)) if m else -1


def sorted_checkpoints(paths: list[str]) -> list[Path]:
    """``paths`` by folder, then iteration."""
    return sorted((Path(c) for c in paths), key=lambda p: (str(p.parent), iteration(p)))
