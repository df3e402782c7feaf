# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Speed of the SABR-Net shadow imitation (sabrnet.md §3): milliseconds per 256 × 256 image.

Times :class:`labelless.transforms.shadow.RandShadow` on ``[3, S, S]`` tensors in [−1, 1] (the stage-1 input) over
``--n`` draws: mode A (``freeform``; goal ≤ 5 ms) and mode B (``acoustic`` with ``sector``, ``linear`` and ``auto``
geometry) on synthetic fan images (Rayleigh speckle in a sector, black outside). With ``--hc18 DIR`` it also times
mode B on real images of that folder (resized to ``S × S``) and prints which geometry ``auto`` chose.

Mode B is timed twice: ``first visit`` (``geometry_cache=0``: V, the geometry and the reflector level computed for
every draw) and ``revisit`` (the default cache, warmed by one pass over the images: what every epoch after the first
costs in training, where the same un-augmented image gets a new shadow each epoch).

Usage::

    python benchmarks/bench_shadow.py [--n 200] [--size 256] [--hc18 ../shared/data/hc18/labeled/images]
"""

from __future__ import annotations

import argparse
import collections
import math
import time
from pathlib import Path

import numpy as np
import torch

from labelless.data.images import list_images, load_grey
from labelless.transforms.shadow import RandShadow, freeform_hole_mask

__all__ = ["synthetic_fans", "time_transform", "main"]


def synthetic_fans(n: int, size: int = 256, seed: int = 0) -> list[torch.Tensor]:
    """``n`` sector images ``[3, size, size]`` in [−1, 1] with random apex height, opening angle and near field."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(n):
        ax, ay = size / 2 + rng.uniform(-5, 5), -rng.uniform(0.05, 0.3) * size
        theta = math.radians(rng.uniform(25, 45))
        r, phi = np.hypot(xx - ax, yy - ay), np.arctan2(xx - ax, yy - ay)
        inside = (np.abs(phi) <= theta) & (r >= -ay + rng.uniform(5, 30)) & (r <= size * 1.05 - ay)
        x01 = np.clip(rng.rayleigh(0.25, (size, size)), 0, 1).astype(np.float32) * inside
        out.append(torch.from_numpy(x01 * 2 - 1)[None].repeat(3, 1, 1))
    return out


def time_transform(transform: RandShadow, images: list[torch.Tensor], n: int) -> tuple[float, float]:
    """Mean (wall, CPU) milliseconds per call over ``n`` calls cycling through ``images`` (after a warm-up call).

    The CPU time of this process is the better figure on a machine shared with other jobs.
    """
    transform.set_random_state(0)
    transform(images[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        transform(images[i % len(images)])
    return (time.perf_counter() - wall) / n * 1e3, (time.process_time() - cpu) / n * 1e3


def _acoustic_rows(geometry: str, images: list[torch.Tensor], n: int, note: str) -> None:
    cold = RandShadow("acoustic", geometry=geometry, geometry_cache=0)
    _row(f"acoustic {geometry} first visit", time_transform(cold, images, n), note)
    warm = RandShadow("acoustic", geometry=geometry)
    for img in images:  # one epoch fills the cache
        warm(img)
    _row(f"acoustic {geometry} revisit", time_transform(warm, images, n), note)


def _row(name: str, times: tuple[float, float], note: str = "") -> None:
    print(f"{name:<32} {times[0]:7.2f} ms wall {times[1]:7.2f} ms CPU / image {note}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="draws per setting")
    parser.add_argument("--size", type=int, default=256, help="image side")
    parser.add_argument("--hc18", type=Path, default=None, help="folder of real ultrasound images (optional)")
    parser.add_argument("--n_images", type=int, default=50, help="real images read from --hc18")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    fans = synthetic_fans(min(args.n, 20), args.size)
    rng = np.random.RandomState(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.n):
        freeform_hole_mask(rng, args.size)
    wall, cpu = (time.perf_counter() - wall) / args.n * 1e3, (time.process_time() - cpu) / args.n * 1e3
    _row("freeform_hole_mask", (wall, cpu))
    _row("RandShadow freeform", time_transform(RandShadow("freeform"), fans, args.n))
    for geometry in ("sector", "linear", "auto"):
        _acoustic_rows(geometry, fans, args.n, "(synthetic fans)")

    if args.hc18 is not None:
        paths = list(list_images(args.hc18).values())[: args.n_images]
        if not paths:
            raise SystemExit(f"no images in {args.hc18}")
        images = [load_grey(p, size=args.size).repeat(3, 1, 1) * 2 - 1 for p in paths]
        for geometry in ("sector", "linear", "auto"):
            _acoustic_rows(geometry, images, args.n, f"({len(images)} images of {args.hc18})")
        t = RandShadow("acoustic", geometry="auto")
        kinds: collections.Counter[str] = collections.Counter()
        for img in images:
            t(img)
            kinds[t.last_params["geometry"]["kind"] if t.last_params.get("geometry") else "none"] += 1
        print(f"auto geometry on the real images: {dict(kinds)}")


if __name__ == "__main__":
    main()
