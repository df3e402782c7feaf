# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Label-free adaptation of a few-shot volume bundle (SSL-ALPNet, DSPNet, PSMNet) to a folder of unlabelled scans.

``configs/adapt.json`` (identical in the three bundles) is an overlay of ``train.json``: it starts from the bundle's
shipped weights (``init_ckpt``) and continues the self-supervised superpixel training on the user's volumes, under an
iteration budget (``n_steps``) and a wall-clock budget (``time_budget_min``), and writes a plain state dict
``<output_dir>/model.pt`` that ``inference.json`` (``--ckpt_path``) and ``evaluate.json`` (``--eval_ckpt_path``) take.

- The input folder (any format :func:`~labelless.io.read_volume` reads: NIfTI, NRRD, MHA, DICOM series, PNG) is
  converted once into the prepared layout in ``<output_dir>/cache/prepared`` (never into the input folder): each
  volume mapped linearly to minimum 0 and 99.5th percentile 800 (the CHAOS range the superpixel parameters were set
  for; per-volume z-scoring, the bundles' MR rule, is unchanged by a linear map) and resampled in-plane to
  ``image_size`` as the inference runner does. No label file is read or written.
- Superpixels are computed into ``<output_dir>/cache/derived`` with a relative body-mask rule (``body_threshold_rel``
  × the 99.5th percentile), which works for any intensity range.
- :class:`AdaptationBudget` stops the run cleanly at the time budget (the final checkpoint and ``model.pt`` are still
  written), saves snapshots ``model_<m>min.pt`` at the listed minutes and logs the time left.

Command line: ``labelless adapt <bundle name or folder> <volumes_dir> --minutes 30 --out <dir>``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import ConfigError
from labelless.options import as_float, as_int
from labelless.paths import check_output_outside_inputs
from labelless.utils import as_bool, is_unset, write_json_atomic

__all__ = [
    "prepare_unlabelled_volumes",
    "unlabelled_dataset",
    "check_adapt_options",
    "load_init_weights",
    "AdaptationBudget",
    "save_adapted_model",
    "adapt_bundle",
]

logger = logging.getLogger("labelless.fewshot.volume.adapt")

#: manifest of the prepared cache (source files and preparation options)
SOURCES_NAME = "adapt_sources.json"
#: 99.5th percentile of a prepared volume (after shifting its minimum to 0): the intensity range of the prepared
#: CHAOS MR scans, for which the Felzenszwalb superpixel parameters were set
PERCENTILE_TARGET = 800.0


def _pid_of(path: Path, taken: set[str]) -> str:
    from labelless.io.suffixes import strip_suffix

    name = Path(strip_suffix(path)).name
    name = name[len("image_") :] if name.startswith("image_") else name  # a prepared layout keeps its ids
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "scan"
    pid, k = base, 1
    while pid in taken:
        k += 1
        pid = f"{base}_{k}"
    taken.add(pid)
    return pid


def _resample_inplane(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[-2:] == (size, size):
        return arr
    t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)[:, None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def prepare_unlabelled_volumes(
    volumes_dir: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    image_size: int | None = 256,
) -> Path:
    """Convert unlabelled volumes into the prepared layout (``image_<id>.nii.gz`` only), cached.

    Args:
        volumes_dir: a folder of volumes (or a list of files/folders), any format
            :func:`~labelless.fewshot.volume.inference.list_query_files` lists; ``label_*`` files are skipped.
        out_dir: the prepared folder (must lie outside every input folder); reused when its manifest matches.
        image_size: in-plane size of the prepared slices (the network's input, as the inference runner resamples);
            ``None`` keeps each volume's size.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: ``out_dir`` inside an input folder.
        DataError: no volume found, or an unreadable one (naming the file).
    """
    from labelless.fewshot.volume.inference import list_query_files
    from labelless.io.readers import read_volume
    from labelless.io.writers import write_volume

    files = list_query_files(volumes_dir)
    out = check_output_outside_inputs(out_dir, files)
    size = None if is_unset(image_size) else int(image_size)
    taken: set[str] = set()
    sources = {}
    for f in files:
        st = f.stat()
        sources[_pid_of(f, taken)] = {"source": str(f.resolve()), "size": st.st_size, "mtime": st.st_mtime}
    manifest = {"image_size": size, "intensity": f"min 0, 99.5th percentile {PERCENTILE_TARGET:g}", "scans": sources}
    mpath = out / SOURCES_NAME
    if mpath.is_file():
        try:
            if json.loads(mpath.read_text()) == manifest:
                logger.info("adapt: %d prepared scans reused from %s", len(sources), out)
                return out
        except (OSError, json.JSONDecodeError):
            pass
        for old in out.glob("image_*.nii.gz"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for pid, info in sources.items():
        vol = read_volume(info["source"])  # an image: labels are never read here
        arr = vol.array - float(vol.array.min())
        top = float(np.percentile(arr, 99.5))
        if top > 0:  # the superpixel and body-mask parameters assume this range (CHAOS MR: ~850)
            arr = arr * (PERCENTILE_TARGET / top)
        affine = np.array(vol.affine, dtype=np.float64)
        if size is not None and arr.shape[-2:] != (size, size):
            h, w = arr.shape[-2:]
            affine[:3, 0] *= w / size  # (Z, H, W) array: affine column 0 is along W (x), column 1 along H (y)
            affine[:3, 1] *= h / size
            arr = _resample_inplane(arr, size)
        write_volume(arr.astype(np.float32), out / f"image_{pid}.nii.gz", affine=affine)
        logger.info("adapt: prepared %s -> image_%s.nii.gz %s", info["source"], pid, tuple(arr.shape))
    write_json_atomic(mpath, manifest)
    return out


def unlabelled_dataset(
    dataset_dir: str | os.PathLike | None,
    prepared_dir: str | os.PathLike,
    preset: str = "chaos",
    image_size: int | None = 256,
) -> PreparedVolumeDataset:
    """The adaptation data set: ``dataset_dir`` (or, when ``None``, the embedded abdominal phantoms' images) prepared
    into ``prepared_dir`` by :func:`prepare_unlabelled_volumes`. The prepared folder holds images only, so no label
    can be read from it."""
    if is_unset(dataset_dir):
        from labelless.data.phantoms import default_dataset_dir

        dataset_dir = default_dataset_dir("abdomen")
        logger.info("adapt: no dataset_dir given: adapting to the images of the embedded phantoms in %s", dataset_dir)
    root = prepare_unlabelled_volumes(dataset_dir, prepared_dir, image_size)
    return PreparedVolumeDataset(root, preset)


def check_adapt_options(
    setting: int = 1,
    time_budget_min: float | None = None,
    snapshot_minutes: Sequence[float] | None = None,
    body_threshold_rel: float = 0.01,
    superpixel_min_size: int = 400,
) -> dict[str, Any]:
    """Check the adaptation options of adapt.json before any work (one line naming the option).

    Raises:
        ConfigError: ``setting`` other than 1 (Setting 2 needs labels), a budget <= 0, bad snapshot minutes, body
            threshold or superpixel size.
    """
    if str(setting) != "1":
        raise ConfigError(f"setting must be 1 for label-free adaptation (Setting 2 reads labels), got {setting!r}")
    budget = None if is_unset(time_budget_min) else as_float(time_budget_min, "time_budget_min")
    if budget is not None and budget <= 0:
        raise ConfigError(f"time_budget_min must be > 0 (or null for no time budget), got {time_budget_min!r}")
    snaps = [] if is_unset(snapshot_minutes) else list(snapshot_minutes)  # type: ignore[arg-type]
    snaps = [as_float(m, "snapshot_minutes") for m in snaps]
    if any(m <= 0 for m in snaps):
        raise ConfigError(f"snapshot_minutes must be positive minutes, got {snapshot_minutes!r}")
    rel = as_float(body_threshold_rel, "body_threshold_rel")
    if not 0 <= rel < 1:
        raise ConfigError(f"body_threshold_rel must be in [0, 1), got {body_threshold_rel!r}")
    min_size = as_int(superpixel_min_size, "superpixel_min_size", 1)
    return {"time_budget_min": budget, "snapshot_minutes": snaps, "body_threshold_rel": rel,
            "superpixel_min_size": min_size}  # fmt: skip


def load_init_weights(network: nn.Module, init_ckpt: str | os.PathLike | None, device: str | torch.device) -> nn.Module:
    """Initialise ``network`` from ``init_ckpt`` (a plain state dict such as a bundle's ``models/model.pt``, or a
    training checkpoint whose ``model`` entry holds it); ``None`` keeps the network's own initialisation."""
    from labelless.io.checkpoint import load_network_weights

    if is_unset(init_ckpt):
        logger.warning("adapt: no init_ckpt given: adapting from the network's initial weights")
        return network
    load_network_weights(network, init_ckpt, device)
    logger.info("adapt: initial weights from %s", init_ckpt)
    return network


def _eval_mode_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a batch-norm layer whose statistics are frozen: always evaluation mode."""
    return nn.Module.train(self, False)


def freeze_batchnorm_statistics(network: nn.Module, freeze: bool = True) -> int:
    """Keep every batch-norm layer of ``network`` in evaluation mode, even when the trainer calls ``train()``: the
    running mean/variance of the initial weights are used and never updated (the affine weights still learn).

    For adaptation to a domain whose episodes differ from the initial training's (e.g. brain slices after abdominal
    scans), so that re-estimated statistics do not move every feature at once.

    Args:
        network: the network (the layers are patched in place).
        freeze: ``False`` does nothing (the config switch).

    Returns:
        the number of batch-norm layers frozen.
    """
    if not as_bool(freeze, "freeze_bn_stats"):
        return 0
    layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.train = types.MethodType(_eval_mode_train, m)  # type: ignore[method-assign]
        m.eval()
    logger.info("adapt: batch-norm statistics frozen in %d layers (running mean/variance of the initial weights)",
                len(layers))  # fmt: skip
    return len(layers)


def _save_state(network: nn.Module, path: Path) -> Path:
    from labelless.engines.checkpoint import save_checkpoint_atomic

    net = getattr(network, "module", network)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return save_checkpoint_atomic(state, path)


class AdaptationBudget:
    """Time budget, timed snapshots and a time-left log line for a training run (ignite handler).

    Args:
        time_budget_min: stop (``engine.terminate()``: ``COMPLETED`` still fires, so the final checkpoint is written)
            after this many minutes of this process's training; ``None``: no time budget (``n_steps`` only).
        snapshot_minutes: write ``model_<m>min.pt`` (plain state dict) into ``save_dir`` when ``m`` minutes have passed.
        network: the network whose weights the snapshots hold.
        save_dir: folder of the snapshots.
        log_every: iterations between the "time left" log lines.
        clock: ``"wall"`` (wall-clock minutes since the run started) or ``"cpu"`` (CPU minutes of this process, all
            its threads: a budget that does not shrink when other jobs share the machine).

    Examples::

        AdaptationBudget(30, [15], net, "adapted/ckpts").attach(trainer)
    """

    def __init__(
        self,
        time_budget_min: float | None = None,
        snapshot_minutes: Sequence[float] | None = None,
        network: nn.Module | None = None,
        save_dir: str | os.PathLike | None = None,
        log_every: int = 100,
        clock: str = "wall",
    ) -> None:
        opts = check_adapt_options(1, time_budget_min, snapshot_minutes)
        self.clock = str(clock).lower()
        if self.clock not in ("wall", "cpu"):
            raise ConfigError(f"budget_clock must be 'wall' or 'cpu', got {clock!r}")
        self.budget_s = None if opts["time_budget_min"] is None else 60.0 * opts["time_budget_min"]
        self.snapshots = sorted(opts["snapshot_minutes"])
        if self.snapshots and (network is None or is_unset(save_dir)):
            raise ConfigError("snapshot_minutes needs the network and a save_dir")
        self.network, self.save_dir = network, None if is_unset(save_dir) else Path(save_dir)
        self.log_every = max(1, int(log_every))
        self.start: float | None = None
        self.cpu_start = 0.0
        self.first_iteration = 0
        self.stopped_by_budget = False

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (run start and every iteration)."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def elapsed(self) -> float:
        """Seconds since the run started (0 before)."""
        return 0.0 if self.start is None else time.monotonic() - self.start

    def cpu_minutes(self) -> float:
        """CPU time (all threads of this process) since the run started, in minutes."""
        return 0.0 if self.start is None else (time.process_time() - self.cpu_start) / 60

    def _started(self, engine: Engine) -> None:
        self.start, self.cpu_start = time.monotonic(), time.process_time()
        self.first_iteration = int(engine.state.iteration)  # > 0 after a resume

    def budget_time(self) -> float:
        """Seconds of the budget's clock used so far (wall or CPU)."""
        return self.elapsed() if self.clock == "wall" else 60.0 * self.cpu_minutes()

    def _iteration(self, engine: Engine) -> None:
        t, it = self.budget_time(), int(engine.state.iteration)
        while self.snapshots and t >= 60.0 * self.snapshots[0]:
            m = self.snapshots.pop(0)
            name = f"model_{m:g}min.pt"
            _save_state(self.network, self.save_dir / name)  # type: ignore[arg-type, operator]
            logger.info("adapt: %s written at iteration %d (%.1f wall-min, %.1f CPU-min of this process)", name, it,
                        self.elapsed() / 60, self.cpu_minutes())  # fmt: skip
        if it % self.log_every == 0:
            done = max(1, it - self.first_iteration)
            total = engine.state.epoch_length * engine.state.max_epochs if engine.state.epoch_length else it
            left = (total - it) * t / done
            if self.budget_s is not None:
                left = min(left, max(0.0, self.budget_s - t))
            logger.info("adapt: iteration %d, %.1f min elapsed (%.1f CPU-min), ETA %.1f %s-min, %.2f s/iteration", it,
                        self.elapsed() / 60, self.cpu_minutes(), left / 60, self.clock, t / done)  # fmt: skip
        if self.budget_s is not None and t >= self.budget_s:
            self.stopped_by_budget = True
            logger.info("adapt: %s-time budget of %.1f min reached at iteration %d: stopping", self.clock,
                        self.budget_s / 60, it)  # fmt: skip
            engine.terminate()


def save_adapted_model(network: nn.Module, output_dir: str | os.PathLike, filename: str = "model.pt") -> Path:
    """Write the adapted weights as a plain state dict ``<output_dir>/<filename>`` (what ``inference.json`` takes as
    ``--ckpt_path`` and ``evaluate.json`` as ``--eval_ckpt_path``) and log how to use it."""
    path = _save_state(network, Path(output_dir) / filename)
    logger.info("adapt: adapted model written to %s (use it with --ckpt_path %s)", path, path)
    return path


def _find_bundle(name: str | os.PathLike) -> Path:
    """A bundle folder (holding ``configs/metadata.json``) or the name of one of the repository's ``bundles/``."""
    import labelless

    path = Path(name).expanduser()
    if (path / "configs" / "metadata.json").is_file():
        return path.resolve()
    repo = Path(labelless.__file__).resolve().parents[2] / "bundles"
    if (repo / str(name) / "configs" / "metadata.json").is_file():
        return (repo / str(name)).resolve()
    known = sorted(p.name for p in repo.glob("*") if (p / "configs" / "adapt.json").is_file()) if repo.is_dir() else []
    hint = f"; bundles with label-free adaptation here: {', '.join(known)}" if known else ""
    raise ConfigError(f"bundle {name} not found: give a bundle folder (with configs/metadata.json) or a name{hint}")


def adapt_bundle(
    bundle: str | os.PathLike,
    volumes_dir: str | os.PathLike,
    minutes: float | None = 30,
    out: str | os.PathLike | None = None,
    steps: int | None = None,
    init_ckpt: str | os.PathLike | None = None,
    learning_rate: float | None = None,
    snapshot_minutes: Sequence[float] | None = None,
    resume: bool = False,
    **overrides: Any,
) -> Path:
    """Run a bundle's ``train.json`` + ``adapt.json`` on ``volumes_dir`` (``labelless adapt``).

    Args:
        bundle: bundle folder or the name of a bundle of this repository (``ssl_alpnet_fewshot_segmentation``).
        volumes_dir: folder of unlabelled volumes (any supported format).
        minutes: time budget in minutes (``None``: ``steps`` only).
        out: output folder (default ``./adapted/<bundle name>``).
        steps: iteration budget (default: adapt.json's ``n_steps``).
        init_ckpt: starting weights (default: the bundle's ``models/model.pt``).
        learning_rate: default: adapt.json's.
        snapshot_minutes: minutes at which ``model_<m>min.pt`` snapshots are written.
        resume: continue an interrupted run in ``out``.
        overrides: other config overrides (e.g. ``save_interval=200``).

    Returns:
        the path of the adapted ``model.pt``.

    Raises:
        ConfigError: unknown bundle, or a bundle without ``configs/adapt.json``.
    """
    from monai.bundle import run

    root = _find_bundle(bundle)
    configs = [root / "configs" / "train.json", root / "configs" / "adapt.json"]
    if not configs[1].is_file():
        raise ConfigError(f"bundle {root.name} has no configs/adapt.json (label-free adaptation is for the few-shot "
                          "volume bundles)")  # fmt: skip
    out_dir = Path(out) if not is_unset(out) else Path.cwd() / "adapted" / root.name
    args: dict[str, Any] = {"bundle_root": str(root), "dataset_dir": str(volumes_dir), "output_dir": str(out_dir),
                            "time_budget_min": minutes, "resume": as_bool(resume, "resume")}  # fmt: skip
    for key, value in (("n_steps", steps), ("init_ckpt", init_ckpt), ("learning_rate", learning_rate),
                       ("snapshot_minutes", snapshot_minutes)):  # fmt: skip
        if value is not None:
            args[key] = value
    args.update(overrides)
    run(config_file=[str(c) for c in configs], logging_file=str(root / "configs" / "logging.conf"), **args)
    return out_dir / "model.pt"
