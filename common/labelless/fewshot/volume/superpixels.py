# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Offline precomputation of superpixel pseudo-labels and body masks (fewshot_protocol.md §3).

For every scan ``image_<pid>.nii.gz`` of a prepared data set this writes, with the image's geometry and atomically:

- ``superpix_<pid>.nii.gz``: int32 superpixel ids, 0 outside the body, contiguous 1..R(z) inside on every slice;
- ``bodymask_<pid>.nii.gz``: uint8 body mask (0/1);
- optionally ``superpixraw_<pid>.nii.gz``: the unmasked scikit-image map (``save_raw=True``; for checks);
- ``superpixels.json``: the parameters used (method, its parameters, body threshold rule, source folder).

The dataset folder is never written. The output folder is ``out_dir`` when given, else
``<cache>/derived/<dataset folder name>-<hash>`` where ``<cache>`` is ``$LABELLESS_CACHE`` or ``~/.cache/labelless``
and the hash covers the absolute dataset path, the preset and the superpixel parameters (so different parameters
never share a folder). Read the results back with
``PreparedVolumeDataset(dataset_dir, derived_dir=out_dir).load_superpixels(pid)``.

Scans are processed by a process pool (all cores by default, one scan per task) with a tqdm progress bar; each
scan's result depends only on its image, so the output is deterministic whatever the number of workers.

Command line: ``python -m labelless.fewshot.volume.superpixels DATASET_DIR [--out_dir DIR] [--preset chaos] ...``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from labelless.data.layouts import PreparedVolumeDataset
from labelless.data.presets import DatasetPreset, get_preset
from labelless.errors import ConfigError, DataError
from labelless.io.readers import read_volume
from labelless.io.writers import write_volume
from labelless.paths import cache_root
from labelless.transforms.superpixel import (
    SUPERPIXEL_METHODS,
    body_mask,
    compute_superpixels,
    mask_superpixels,
)
from labelless.transforms.superpixel import (
    body_threshold as _body_threshold,
)
from labelless.utils import write_json_atomic

__all__ = [
    "SUPERPIX_NAME",
    "BODYMASK_NAME",
    "RAW_NAME",
    "MANIFEST_NAME",
    "superpixel_params",
    "default_derived_dir",
    "process_scan",
    "precompute_superpixels",
]

SUPERPIX_NAME = "superpix_{pid}.nii.gz"
BODYMASK_NAME = "bodymask_{pid}.nii.gz"
RAW_NAME = "superpixraw_{pid}.nii.gz"
MANIFEST_NAME = "superpixels.json"


def superpixel_params(
    method: str = "felzenszwalb",
    scale: float = 1.0,
    sigma: float = 1.0,
    min_size: int = 400,
    n_segments: int | None = None,
    compactness: float = 10.0,
) -> dict[str, Any]:
    """The parameters that define a superpixel map (checked against ``superpixels.json`` of an output folder)."""
    m = str(method).lower()
    if m not in SUPERPIXEL_METHODS:
        raise ConfigError(f"unknown superpixel method {method!r}; expected one of {SUPERPIXEL_METHODS}")
    if m == "felzenszwalb":
        return {"method": m, "scale": float(scale), "sigma": float(sigma), "min_size": int(min_size)}
    n = int(n_segments) if n_segments is not None else (100 if m == "slic" else 1000)
    return {"method": m, "n_segments": n, "compactness": float(compactness), "sigma": float(sigma)}


def _threshold_rule(preset: DatasetPreset, threshold: float | None, threshold_rel: float | None) -> dict[str, Any]:
    if threshold is not None:
        return {"body_threshold": float(threshold), "body_threshold_rel": None}
    if threshold_rel is not None:
        return {"body_threshold": None, "body_threshold_rel": float(threshold_rel)}
    return {"body_threshold": preset.body_threshold, "body_threshold_rel": preset.body_threshold_rel}


def default_derived_dir(
    dataset_dir: str | os.PathLike, preset: str = "chaos", params: dict[str, Any] | None = None
) -> Path:
    """Default output folder: ``<cache>/derived/<dataset name>-<12-hex hash of path, preset and parameters>``."""
    src = Path(dataset_dir).expanduser().resolve()
    key = json.dumps({"dataset": str(src), "preset": str(preset), "params": params or superpixel_params()},
                     sort_keys=True)  # fmt: skip
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
    return cache_root() / "derived" / f"{src.name}-{digest}"


def process_scan(
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    pid: str,
    params: dict[str, Any],
    body_threshold_abs: float | None,
    body_threshold_rel: float,
    save_raw: bool = False,
) -> dict[str, Any]:
    """Compute and write the superpixels and body mask of one scan (run inside the worker processes).

    Returns:
        ``{"pid", "n_slices", "superpixels_per_slice" (list), "seconds"}``.
    """
    t0 = time.perf_counter()
    vol = read_volume(image_path)
    out = Path(out_dir)
    p = dict(params)
    method = p.pop("method")
    spacing = tuple(reversed(vol.spacing)) if method == "slic3d" else None
    raw = compute_superpixels(vol.array, method, spacing=spacing, **p)
    t = _body_threshold(vol.array, body_threshold_abs, body_threshold_rel)
    body = body_mask(vol.array, t)
    sp, counts = mask_superpixels(raw, body, per_slice=True)
    write_volume(body, out / BODYMASK_NAME.format(pid=pid), reference=vol, dtype=np.uint8)
    if save_raw:
        write_volume(raw, out / RAW_NAME.format(pid=pid), reference=vol, dtype=np.int32)
    # Written last: its presence marks the scan as done.
    write_volume(sp, out / SUPERPIX_NAME.format(pid=pid), reference=vol, dtype=np.int32)
    return {
        "pid": pid,
        "n_slices": int(sp.shape[0]),
        "superpixels_per_slice": [int(c) for c in counts],
        "seconds": time.perf_counter() - t0,
    }


def _process_task(task: tuple) -> dict[str, Any]:
    try:
        return process_scan(*task)
    except (ConfigError, DataError) as exc:
        # a DataError cannot be unpickled in the parent (its __init__ takes two arguments) and would break the worker
        # pool with a BrokenProcessPool traceback: pass its parts and re-raise it there (_raise_task_error)
        return {"_error": (type(exc).__name__, getattr(exc, "source", None), getattr(exc, "problem", str(exc)))}


def _raise_task_error(result: dict[str, Any]) -> None:
    """Re-raise the labelless error a worker returned from :func:`_process_task`."""
    if isinstance(result, dict) and "_error" in result:
        kind, source, problem = result["_error"]
        raise DataError(source, problem) if kind == "DataError" else ConfigError(problem)


def _n_workers(workers: int | None, n_tasks: int) -> int:
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            workers = os.cpu_count() or 1
    return max(1, min(int(workers), n_tasks))


def precompute_superpixels(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    preset: str | DatasetPreset = "chaos",
    method: str = "felzenszwalb",
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scale: float = 1.0,
    sigma: float = 1.0,
    min_size: int = 400,
    n_segments: int | None = None,
    compactness: float = 10.0,
    body_threshold: float | None = None,
    body_threshold_rel: float | None = None,
    pids: Sequence[str | int] | None = None,
    save_raw: bool = False,
    mp_context: str | None = None,
) -> Path:
    """Precompute superpixels and body masks of every scan of a prepared data set.

    Args:
        dataset_dir: prepared folder (``image_<pid>.nii.gz`` ...); never written.
        out_dir: output folder; default ``<cache>/derived/<name>-<hash>`` (see module docstring). Must not be
            ``dataset_dir`` nor lie inside it.
        preset: dataset preset giving the body-mask threshold (``chaos`` 50.0001, ``synapse`` 1e-4, ``cmr``
            0.05 × 99.5th percentile).
        method: ``"felzenszwalb"`` (protocol), ``"slic"`` or ``"slic3d"``.
        workers: worker processes (``None``: all available cores; ``0``/``1``: in this process).
        overwrite: recompute scans whose outputs exist (otherwise they are skipped).
        progress: show a tqdm progress bar.
        scale, sigma, min_size: Felzenszwalb parameters (protocol 1, 1, 400).
        n_segments, compactness: SLIC parameters.
        body_threshold: absolute body threshold overriding the preset.
        body_threshold_rel: relative threshold (× 99.5th percentile) overriding the preset.
        pids: only these scans (default all).
        save_raw: also write the unmasked map ``superpixraw_<pid>.nii.gz``.
        mp_context: multiprocessing start method (default ``fork`` where available, else ``spawn``).

    Returns:
        The output folder.

    Raises:
        ConfigError: bad method, ``out_dir`` equal to or inside the dataset folder, or existing outputs computed with
            other parameters (without ``overwrite``).
        DataError: unreadable or invalid images (naming the file).

    Examples::

        out = precompute_superpixels("../shared/data/chaos_t2spir", out_dir="derived/chaos")
        sp = PreparedVolumeDataset("../shared/data/chaos_t2spir", derived_dir=out).load_superpixels(1)
    """
    p = get_preset(preset)
    params = superpixel_params(method, scale, sigma, min_size, n_segments, compactness)
    rule = _threshold_rule(p, body_threshold, body_threshold_rel)
    ds = PreparedVolumeDataset(dataset_dir, preset=p, cache=False)
    out = Path(out_dir) if out_dir is not None else default_derived_dir(dataset_dir, p.name, params)
    root = ds.root.expanduser().resolve()
    if out.expanduser().resolve() == root or root in out.expanduser().resolve().parents:
        raise ConfigError(f"out_dir {out} lies inside the dataset folder {ds.root} (derived files never go there)")
    out.mkdir(parents=True, exist_ok=True)

    source = str(ds.root.expanduser().resolve())
    manifest = {"params": params, **rule, "preset": p.name, "dataset_dir": source}
    mpath = out / MANIFEST_NAME
    if mpath.exists() and not overwrite:
        try:
            old = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(mpath, f"cannot parse the manifest ({e}); pass overwrite=True") from e
        if {k: old.get(k) for k in manifest} != manifest:
            raise ConfigError(
                f"{out} holds superpixels computed with other parameters or from another data set "
                f"({ {k: old.get(k) for k in manifest} }); pass overwrite=True or choose another out_dir"
            )
    elif not overwrite:
        # maps without a manifest were made with unknown parameters (or by another tool): never reuse them silently
        unknown = sorted(f.name for f in out.glob("superpix_*.nii.gz"))
        if unknown:
            raise ConfigError(
                f"{out} holds superpixel maps ({', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}) but no "
                f"{MANIFEST_NAME} saying how they were computed; pass overwrite=True or choose another out_dir"
            )
    # Written before any scan so that an interrupted run still records what its maps were computed with.
    write_json_atomic(mpath, manifest)

    wanted = ds.pids if pids is None else [str(i) for i in pids]
    todo = []
    for pid in wanted:
        image_path = ds.image_path(pid)  # raises DataError for unknown pids
        done = (out / SUPERPIX_NAME.format(pid=pid)).exists() and (out / BODYMASK_NAME.format(pid=pid)).exists()
        if save_raw:
            done = done and (out / RAW_NAME.format(pid=pid)).exists()
        if overwrite or not done:
            rel = rule["body_threshold_rel"] if rule["body_threshold_rel"] is not None else 0.05
            todo.append((str(image_path), str(out), pid, params, rule["body_threshold"], rel, save_raw))

    n = _n_workers(workers, len(todo)) if todo else 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="superpixels", unit="scan", disable=not progress or not todo)
    try:
        if n <= 1:
            for task in todo:
                _raise_task_error(_process_task(task))
                bar.update(1)
        else:
            if mp_context is None:
                mp_context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(mp_context)
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
                for result in pool.map(_process_task, todo, chunksize=1):
                    _raise_task_error(result)
                    bar.update(1)
    finally:
        bar.close()
    return out
