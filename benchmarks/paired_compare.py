# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Paired comparison of two methods scored on the same images (two per-image ``metrics.csv`` reports).

    python benchmarks/paired_compare.py runs/cltnet/X/eval_isic2016_test_crf_sel/metrics.csv \
        runs/cltnet/baselines_isic_crf/intensity_crf/test/metrics.csv [--metric di] [--n_boot 10000] [--seed 0]

Prints the means, the images where the first method scores higher / lower, the mean paired difference and its 95 %
percentile-bootstrap interval (images resampled with replacement, seeded). Images are matched by ``name``; a name
missing from either report is an error (not the same images).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def read_scores(path: Path, metric: str) -> dict[str, float]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or metric not in rows[0] or "name" not in rows[0]:
        raise SystemExit(f"{path}: no 'name' and {metric!r} columns")
    return {r["name"]: float(r[metric]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--metric", default="di")
    ap.add_argument("--n_boot", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    a, b = read_scores(args.first, args.metric), read_scores(args.second, args.metric)
    if set(a) != set(b):
        raise SystemExit(f"not the same images: only in {args.first}: {sorted(set(a) - set(b))[:5]}, "
                         f"only in {args.second}: {sorted(set(b) - set(a))[:5]}")  # fmt: skip
    names = sorted(a)
    d = np.array([a[n] - b[n] for n in names]) * 100
    rng = np.random.default_rng(args.seed)
    boot = d[rng.integers(0, len(d), size=(args.n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"{len(d)} images, {args.metric.upper()} %: first {100 * np.mean([a[n] for n in names]):.2f}, "
          f"second {100 * np.mean([b[n] for n in names]):.2f}; first higher on {(d > 0).sum()}, lower on "
          f"{(d < 0).sum()}; mean difference {d.mean():+.2f} (95 % bootstrap {lo:+.2f} … {hi:+.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
