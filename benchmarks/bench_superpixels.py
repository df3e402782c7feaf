# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark and parity check of the superpixel precomputation (fewshot_protocol.md §3) on CHAOS.

1. Parity: precomputes the superpixels of the first ``--n_scans`` scans (with ``save_raw``) and checks, slice by
   slice, that the stored unmasked map equals ``skimage.segmentation.felzenszwalb(slice, scale=1, sigma=1,
   min_size=400)`` on the raw float64 file data (``nibabel`` array transposed to [z, row = y, col = x]), and that the
   stored masked map equals ``relabel_within_body(reference, body_mask)`` with ids 1..R and no gap.
2. Speed: times the precomputation serially (``workers=1``) and with all cores (``workers=None``) and prints the
   ratio. Other processes sharing the CPU lower the ratio: run it on an idle machine.

Usage::

    python benchmarks/bench_superpixels.py [--dataset_dir ../shared/data/chaos_t2spir] [--n_scans 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from skimage.segmentation import felzenszwalb

from labelless.data.layouts import PreparedVolumeDataset
from labelless.fewshot.volume.superpixels import RAW_NAME, precompute_superpixels
from labelless.transforms.superpixel import relabel_within_body

__all__ = ["check_parity", "time_precompute", "main"]

REPO = Path(__file__).resolve().parents[1]


def _subset(dataset_dir: Path, n_scans: int, dest: Path) -> Path:
    """A folder of symbolic links to the first ``n_scans`` images (the dataset folder itself is not written)."""
    ds = PreparedVolumeDataset(dataset_dir, cache=False)
    dest.mkdir(parents=True, exist_ok=True)
    for pid in ds.pids[:n_scans]:
        src = ds.image_path(pid)
        os.symlink(src.resolve(), dest / src.name)
    return dest


def check_parity(dataset_dir: Path, derived_dir: Path) -> tuple[int, int, int]:
    """(slices checked, raw-map mismatches, masked-map mismatches)."""
    ds = PreparedVolumeDataset(dataset_dir, derived_dir=derived_dir, cache=False)
    n = raw_bad = masked_bad = 0
    for pid in ds.pids:
        data = np.asarray(nib.load(str(ds.image_path(pid))).dataobj, dtype=np.float64).transpose(2, 1, 0)
        raw = np.asarray(nib.load(str(derived_dir / RAW_NAME.format(pid=pid))).dataobj).transpose(2, 1, 0)
        body = np.asarray(nib.load(str(ds.bodymask_path(pid))).dataobj).transpose(2, 1, 0)
        sp = ds.load_superpixels(pid).array
        for z in range(data.shape[0]):
            ref = felzenszwalb(data[z], scale=1, sigma=1, min_size=400)
            n += 1
            raw_bad += int(not np.array_equal(raw[z], ref))
            expected, r = relabel_within_body(ref, body[z])
            ok = np.array_equal(sp[z], expected) and set(np.unique(sp[z][sp[z] > 0])) == set(range(1, r + 1))
            masked_bad += int(not ok)
    return n, raw_bad, masked_bad


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_precompute(dataset_dir: Path, workers: int | None, tmp: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its workers) of one precomputation."""
    out = tmp / f"timing_{workers}"
    c0, t0 = _cpu_seconds(), time.perf_counter()
    precompute_superpixels(dataset_dir, out, preset="chaos", workers=workers, overwrite=True, progress=False)
    dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
    shutil.rmtree(out, ignore_errors=True)
    return dt, dc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "chaos_t2spir"))
    parser.add_argument("--n_scans", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None, help="parallel workers (default: all cores)")
    parser.add_argument("--skip_parity", action="store_true")
    a = parser.parse_args(argv)
    src = Path(a.dataset_dir)
    if not src.is_dir():
        print(f"dataset folder {src} not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_superpixels_") as tmp_name:
        tmp = Path(tmp_name)
        data = _subset(src, a.n_scans, tmp / "data")
        n_scans = len(PreparedVolumeDataset(data, cache=False))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"dataset: {src} ({n_scans} scans), cores available: {cores}")
        status = 0
        if not a.skip_parity:
            derived = precompute_superpixels(data, tmp / "parity", preset="chaos", save_raw=True, progress=False)
            n, raw_bad, masked_bad = check_parity(data, derived)
            print(f"parity: {n} slices; unmasked != felzenszwalb: {raw_bad}; masked != reference: {masked_bad}")
            status = int(raw_bad > 0 or masked_bad > 0)
        print(f"load average before timing: {os.getloadavg()[0]:.2f}")
        t_serial, c_serial = time_precompute(data, 1, tmp)
        t_par, c_par = time_precompute(data, a.workers, tmp)
        print(f"precompute serial (1 worker): {t_serial:.2f} s wall, {c_serial:.2f} s CPU")
        print(f"precompute parallel ({a.workers or cores} workers): {t_par:.2f} s wall, {c_par:.2f} s CPU "
              f"(cores obtained: {c_par / t_par:.2f})")  # fmt: skip
        print(f"speed-up serial/parallel: {t_serial / t_par:.2f}")
        print(f"load average after timing: {os.getloadavg()[0]:.2f} (other processes lower the speed-up)")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
