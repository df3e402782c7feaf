# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""CPU cost of the SABR-Net bundle's CPU profile: shadow imitation, training iterations and inference.

Prints, with the torch version, thread count and CPU model:

(a) the shadow transform's cost per 256 × 256 image (and at ``--image_size``, the size the training pipeline applies
    it at): mode A ``freeform`` and mode B ``acoustic`` (``geometry="auto"``) on the synthetic fan images of
    ``bench_shadow.py`` (:func:`bench_shadow.synthetic_fans`, :func:`bench_shadow.time_transform`);
(b) training seconds per iteration and the data-wait share for stage 1 (``pretrain``, profile ``lite``, batch 1
    labelled/unlabelled pair; once per ``--shadow_modes`` entry) and stage 2 (``finetune``, batch
    ``--finetune_batch``), built as train.json builds them: :func:`~labelless.semisup.workflow.training_dataset`, a
    ``DataLoader`` (``num_workers=0``), an :class:`~labelless.engines.semisup.EMAModel` and
    :func:`~labelless.semisup.workflow.build_trainer`. The data wait of an iteration is the time from the previous
    ``ITERATION_COMPLETED`` (after the EMA update) to its ``GET_BATCH_COMPLETED``; the first 2 iterations are warm-up
    and not counted. Stage 1 runs with ``warmup_steps=0`` (the perceptual/style terms on from the first iteration,
    the steady state of a run); the process CPU time per iteration is printed too (the better figure on a shared
    machine);
(c) inference images/s of :func:`~labelless.semisup.protocol.predict_masks` at batch 1 with ``refine=True`` and
    ``refine=False`` (untrained weights; the cost does not depend on them; median time per call, the two settings
    interleaved), the ratio of the two and the time of the refinement step alone.

Usage::

    python benchmarks/bench_sabrnet.py [--dataset_dir DIR] [--image_size 128] [--profile cpu] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_shadow import synthetic_fans, time_transform  # noqa: E402

from labelless.engines.semisup import EMAModel  # noqa: E402
from labelless.networks.sabrnet import build_sabrnet  # noqa: E402
from labelless.semisup.data import SemiSupDataset  # noqa: E402
from labelless.semisup.protocol import predict_masks  # noqa: E402
from labelless.semisup.synthetic import default_ultrasound_dir  # noqa: E402
from labelless.semisup.workflow import build_trainer, resolve_split, training_dataset  # noqa: E402
from labelless.transforms.boundary import refine_with_offsets  # noqa: E402
from labelless.transforms.shadow import RandShadow  # noqa: E402

__all__ = ["cpu_model", "shadow_costs", "train_speed", "inference_speed", "main"]

WARMUP_ITERATIONS = 2


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` where that file is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def shadow_costs(size: int, n: int) -> dict[str, tuple[float, float]]:
    """Mean (wall, CPU) ms per image of both shadow modes on synthetic fans of side ``size``.

    Args:
        size: image side.
        n: draws per mode.

    Returns:
        ``{"freeform": (wall, cpu), "acoustic": (wall, cpu)}``.
    """
    fans = synthetic_fans(min(n, 20), size)
    return {
        "freeform": time_transform(RandShadow("freeform"), fans, n),
        "acoustic": time_transform(RandShadow("acoustic", geometry="auto"), fans, n),
    }


def train_speed(
    split: Any,
    stage: str,
    profile: str,
    image_size: int,
    batch_size: int,
    steps: int,
    shadow_mode: str = "freeform",
    seed: int = 0,
) -> dict[str, float]:
    """Time ``steps`` training iterations of ``stage`` (the first :data:`WARMUP_ITERATIONS` not counted).

    Args:
        split: the data split (:func:`~labelless.semisup.workflow.resolve_split`).
        stage: ``"pretrain"`` (run with the ``lite`` pretraining profile) or ``"finetune"``.
        profile: network size profile.
        image_size: network input side.
        batch_size: loader batch size.
        steps: iterations run (must exceed the warm-up).
        shadow_mode: stage-1 shadow mode.
        seed: data and weight seed.

    Returns:
        ``{"s_per_it", "cpu_s_per_it", "wait_share", "iterations"}`` over the timed iterations.
    """
    torch.manual_seed(seed)
    network = build_sabrnet(profile, n_classes=2, image_size=image_size)
    ema = EMAModel(network)
    dataset = training_dataset(split, stage, image_size, steps * batch_size, seed, shadow_mode, 1.0, "auto")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    trainer = build_trainer(stage, "cpu", network, loader, n_steps=steps, epoch_length=steps, ema=ema,
                            profile="lite", image_size=image_size, warmup_steps=0)  # fmt: skip
    batch_done: list[float] = []
    iter_done: list[float] = []
    cpu: dict[int, float] = {}

    def on_batch(engine: Any) -> None:
        batch_done.append(time.perf_counter())

    def on_iteration(engine: Any) -> None:
        iter_done.append(time.perf_counter())
        cpu[engine.state.iteration] = time.process_time()

    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, on_batch)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, on_iteration)  # after the EMA update (attached first)
    trainer.run()
    w = WARMUP_ITERATIONS
    n = len(iter_done) - w
    total = iter_done[-1] - iter_done[w - 1]
    wait = sum(batch_done[k] - iter_done[k - 1] for k in range(w, len(iter_done)))
    return {
        "s_per_it": total / n,
        "cpu_s_per_it": (cpu[len(iter_done)] - cpu[w]) / n,
        "wait_share": wait / total,
        "iterations": float(n),
    }


def inference_speed(split: Any, profile: str, image_size: int, n: int, seed: int = 0) -> dict[str, float]:
    """Images/s of :func:`predict_masks` at batch 1 with and without boundary refinement.

    The two settings are timed interleaved (one call of each per image, after 2 warm-up rounds) and each is summed
    up by the median time per call, which is robust to other jobs on the machine. The refinement step alone
    (:func:`~labelless.transforms.boundary.refine_with_offsets` on the network's outputs) is timed too.

    Args:
        split: the data split (images cycled from its evaluation items, loaded once).
        profile: network size profile.
        image_size: network input side.
        n: timed calls per setting.
        seed: weight seed.

    Returns:
        ``{"refine": images/s, "coarse": images/s, "refine_step_ms": ms}``.
    """
    torch.manual_seed(seed)
    network = build_sabrnet(profile, n_classes=2, image_size=image_size).eval()
    items = split.eval_items() or split.labeled
    data = SemiSupDataset(items[: min(len(items), 8)], image_size=image_size)
    images = [data[i]["image"][None] for i in range(len(data))]
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(n + 2):
        for refine in (True, False) if i % 2 == 0 else (False, True):
            start = time.perf_counter()
            predict_masks(network, images[i % len(images)], refine=refine)
            if i >= 2:
                times[refine].append(time.perf_counter() - start)
    with torch.no_grad():
        out = network(images[0], torch.ones_like(images[0][:, :1]))
        coarse = out.seg.argmax(1)
        step = []
        for _ in range(n):
            start = time.perf_counter()
            refine_with_offsets(coarse, out.boundary, out.direction)
            step.append(time.perf_counter() - start)
    return {
        "refine": 1.0 / statistics.median(times[True]),
        "coarse": 1.0 / statistics.median(times[False]),
        "refine_step_ms": 1e3 * statistics.median(step),
    }


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset_dir",
        type=Path,
        default=None,
        help="data set folder (default: the synthetic head set, default_ultrasound_dir('head'))",
    )
    parser.add_argument("--image_size", type=int, default=128, help="network input side")
    parser.add_argument("--profile", default="cpu", help="network size profile")
    parser.add_argument("--steps", type=int, default=20, help="training iterations per stage (2 are warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--finetune_batch", type=int, default=2, help="stage-2 batch size")
    parser.add_argument(
        "--shadow_modes",
        nargs="+",
        default=["freeform", "acoustic"],
        choices=["freeform", "acoustic", "none"],
        help="stage-1 shadow modes to time",
    )
    parser.add_argument("--shadow_n", type=int, default=100, help="draws per shadow mode in (a)")
    parser.add_argument("--infer_n", type=int, default=20, help="timed predict_masks calls per setting in (c)")
    args = parser.parse_args(argv)  # fmt: skip
    if args.steps <= WARMUP_ITERATIONS:
        parser.error(f"--steps must exceed the {WARMUP_ITERATIONS} warm-up iterations")
    torch.set_num_threads(args.threads)
    root = default_ultrasound_dir("head") if args.dataset_dir is None else args.dataset_dir
    split = resolve_split(root)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU {cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} CPU(s) available")  # fmt: skip
    print(f"data {root} ({len(split.labeled)} labelled, {len(split.unlabeled)} unlabelled); profile {args.profile}, "
          f"{args.image_size} px")  # fmt: skip

    print("\n(a) shadow imitation, ms per image (synthetic fans; acoustic with geometry=auto)")
    print(f"{'size':>6} {'mode':<10} {'wall ms':>9} {'CPU ms':>9}")
    for size in dict.fromkeys((256, args.image_size)):
        for mode, (wall, cpu) in shadow_costs(size, args.shadow_n).items():
            print(f"{size:>6} {mode:<10} {wall:9.2f} {cpu:9.2f}")

    print(f"\n(b) training, {args.steps} iterations per stage ({WARMUP_ITERATIONS} warm-up not counted), EMA on, "
          f"DataLoader num_workers=0")  # fmt: skip
    print(f"{'stage':<28} {'batch':>5} {'s/it wall':>10} {'s/it CPU':>9} {'data wait':>10} {'it/hour':>8}")
    runs = [("pretrain", 1, mode) for mode in args.shadow_modes] + [("finetune", args.finetune_batch, "none")]
    for stage, batch, mode in runs:
        r = train_speed(split, stage, args.profile, args.image_size, batch, args.steps, mode)
        name = f"1 pretrain lite ({mode})" if stage == "pretrain" else "2 finetune"
        print(f"{name:<28} {batch:>5} {r['s_per_it']:10.3f} {r['cpu_s_per_it']:9.3f} "
              f"{100 * r['wait_share']:9.1f}% {3600 / r['s_per_it']:8.0f}")  # fmt: skip

    print("\n(c) inference, predict_masks at batch 1 (all-ones keep-mask)")
    speed = inference_speed(split, args.profile, args.image_size, args.infer_n)
    print(f"refine=True  {speed['refine']:7.1f} images/s ({1e3 / speed['refine']:6.1f} ms/image)")
    print(f"refine=False {speed['coarse']:7.1f} images/s ({1e3 / speed['coarse']:6.1f} ms/image)")
    print(f"ratio refine/coarse time per image x{speed['coarse'] / speed['refine']:.2f}; the refinement step alone "
          f"(refine_with_offsets) {speed['refine_step_ms']:.2f} ms; both settings run the boundary heads")  # fmt: skip


if __name__ == "__main__":
    main()
