# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Benchmark of few-shot inference: encode the support once + batched queries vs a slice-by-slice loop.

Builds a :class:`~labelless.networks.fewshot.FewShotSegmentor` (random weights; the timing does not depend on them),
one support slice and a "volume" of ``--slices`` query slices, and times in the same process:

- ``batched``: :meth:`encode_support` once, then :meth:`segment_with` in batches of ``--batch_size`` slices;
- ``protocol``: the model used as the evaluation protocol's predictor (``segment_volume``, support cache on);
- ``slice-by-slice``: one forward per slice with the support re-encoded every time (the reference's loop).

It prints the times and the ratio (target ≤ 0.5; with one support and N slices the batched path encodes N + 1
images instead of 2N, so the ratio only goes below (N + 1) / 2N where batching itself pays, e.g. on a GPU), exits
with status 1 when batched and per-slice logits differ by more than 1e-3, and, when
``labelless.data.phantoms`` and the superpixel transforms are importable, times ``--train_iters`` training iterations of
:class:`~labelless.engines.EpisodicTrainer` on :class:`~labelless.fewshot.volume.episodes.SelfSupervisedEpisodeDataset`
episodes of a phantom volume and reports the share of time spent waiting for data.

Usage::

    python benchmarks/bench_fewshot_inference.py [--encoder resnet18] [--size 256] [--slices 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from labelless.networks.fewshot import FewShotSegmentor, build_fewshot_segmentor
from labelless.utils import write_json_atomic

__all__ = ["time_inference", "time_training", "main"]

_ENCODER_OPTIONS: dict = {}
_WORKERS = [0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _support(size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, 1, size, size, generator=g).repeat(1, 3, 1, 1)
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4 : size // 2, size // 3 : 2 * size // 3] = 1.0
    return s.to(device), m.to(device), g


def time_inference(
    model: FewShotSegmentor, size: int, n_slices: int, batch_size: int, device: torch.device, repeats: int = 1
) -> dict[str, float]:
    """Times (seconds, best of ``repeats``) of batched, protocol-predictor and slice-by-slice inference.

    Args:
        model: the segmentor (put in eval mode here).
        size: slice size (square, divisible by 8).
        n_slices: query slices of the "volume".
        batch_size: query slices per batched call.
        device: device of the model.
        repeats: timed repetitions of each variant (interleaved; the minimum is kept).

    Returns:
        ``{"batched_s", "protocol_s", "slice_by_slice_s", "ratio", "protocol_ratio", "max_abs_diff"}``.
    """
    from labelless.fewshot.volume.protocol import segment_volume

    model = model.eval()
    s, m, g = _support(size, device)
    volume = torch.randn(n_slices, 1, size, size, generator=g)
    q = volume.repeat(1, 3, 1, 1).to(device)

    def batched() -> torch.Tensor:
        enc = model.encode_support(s, m)
        return model.segment_with(enc, q, batch_size=batch_size)

    def per_slice() -> torch.Tensor:
        model.cache_support = False
        try:
            return torch.cat([model(s, m, q[i : i + 1]) for i in range(n_slices)])
        finally:
            model.cache_support = True

    def protocol() -> np.ndarray:
        model.clear_cache()
        sup = [(s[:, 0].cpu().numpy(), m[:, 0].cpu().numpy())]
        return segment_volume(volume[:, 0].numpy(), sup, [0] * n_slices, model, batch_size=batch_size, device=device)

    times: dict[str, float] = {}
    outs: dict[str, object] = {}
    variants = (("batched_s", batched), ("slice_by_slice_s", per_slice), ("protocol_s", protocol))
    with torch.no_grad():
        batched()  # warm-up (allocator, kernels)
        _sync(device)
        for _ in range(max(1, repeats)):  # interleaved, so that load changes on a shared machine hit all variants
            for name, fn in variants:
                _sync(device)
                t0 = time.perf_counter()
                outs[name] = fn()
                _sync(device)
                times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
    diff = float((outs["batched_s"] - outs["slice_by_slice_s"]).abs().max())
    times["ratio"] = times["batched_s"] / times["slice_by_slice_s"]
    times["protocol_ratio"] = times["protocol_s"] / times["slice_by_slice_s"]
    times["max_abs_diff"] = diff
    return times


def time_training(encoder: str, size: int, n_iters: int, device: torch.device, seed: int = 0) -> dict[str, float]:
    """Time ``n_iters`` episodic training iterations on phantom superpixel episodes (after one warm-up iteration).

    Returns:
        ``{"iteration_s", "data_wait_share", "episodes_per_s"}``; empty when the phantoms or superpixel modules are
        unavailable.
    """
    try:
        from labelless.data.phantoms import make_phantom
        from labelless.transforms.superpixel import body_mask, compute_superpixels, mask_superpixels
    except ImportError as exc:  # optional parts of the package
        print(f"training timing skipped: {exc}", file=sys.stderr)
        return {}
    from ignite.engine import Events
    from monai.data import DataLoader

    from labelless.engines import EpisodicTrainer
    from labelless.fewshot.volume.episodes import SelfSupervisedEpisodeDataset
    from labelless.transforms.augment import RandFewShotAugmentd
    from labelless.transforms.intensity import zscore

    image, _ = make_phantom("abdomen", seed=seed, shape=(size, size, 6))
    sp = compute_superpixels(image)
    body = body_mask(image, threshold=1e-4 + 50.0)
    labels, counts = mask_superpixels(sp, body)
    pool = [("1", z) for z in range(image.shape[0]) if counts[z] > 0]
    ds = SelfSupervisedEpisodeDataset(
        {"1": zscore(image)}, {"1": labels}, pool, n_episodes=n_iters + 1,
        transform=RandFewShotAugmentd(keys=("image", "label")), seed=seed,
    )  # fmt: skip
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_fewshot_segmentor(encoder, **_ENCODER_OPTIONS).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(ds, batch_size=1, num_workers=_WORKERS[0])
    trainer = EpisodicTrainer(device, 1, loader, model, opt, epoch_length=n_iters + 1)
    marks: dict[str, list[float]] = {"get_start": [], "get_end": [], "iter_end": []}
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda e: marks["get_start"].append(time.perf_counter()))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda e: marks["get_end"].append(time.perf_counter()))

    def _end(engine: EpisodicTrainer) -> None:
        _sync(device)
        marks["iter_end"].append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _end)
    trainer.run()
    # iteration k (k >= 1, skipping the warm-up) spans iter_end[k-1] .. iter_end[k]
    total = marks["iter_end"][-1] - marks["iter_end"][0]
    wait = sum(marks["get_end"][k] - marks["get_start"][k] for k in range(1, n_iters + 1))
    return {"iteration_s": total / n_iters, "data_wait_share": wait / total, "episodes_per_s": n_iters / total}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="resnet18", help="resnet18/34/50/101 or tiny (default resnet18 for CPU)")
    p.add_argument("--size", type=int, default=256, help="slice size (default 256)")
    p.add_argument("--slices", type=int, default=32, help="query slices in the volume (default 32)")
    p.add_argument("--batch_size", type=int, default=8, help="query slices per batched call (default 8)")
    p.add_argument("--repeats", type=int, default=1, help="timed repetitions, best kept (default 1)")
    p.add_argument("--train_iters", type=int, default=5, help="training iterations to time (0: skip)")
    p.add_argument("--train_encoder", default=None, help="encoder of the training timing (default --encoder)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--base_width", type=int, default=None, help="ResNet base width (32 = the shipped SSL-ALPNet model)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training timing (default 0)")
    args = p.parse_args(argv)
    if args.base_width is not None:
        _ENCODER_OPTIONS["base_width"] = args.base_width
    _WORKERS[0] = args.workers
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-initialisation warning
        model = build_fewshot_segmentor(args.encoder, **_ENCODER_OPTIONS).to(device)
    print(
        f"encoder {args.encoder}, {args.slices} query slices of {args.size}x{args.size}, 1 support, device {device}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    res = time_inference(model, args.size, args.slices, args.batch_size, device, args.repeats)
    print(f"batched (encode support once, batches of {args.batch_size}): {res['batched_s']:.3f} s")
    print(f"protocol predictor (segment_volume, support cache):        {res['protocol_s']:.3f} s")
    print(f"slice-by-slice (support re-encoded per slice):              {res['slice_by_slice_s']:.3f} s")
    print(
        f"ratio batched / slice-by-slice = {res['ratio']:.3f} (target <= 0.5); protocol = {res['protocol_ratio']:.3f}"
    )
    print(f"max |logit difference| batched vs per slice = {res['max_abs_diff']:.2e}")
    figures: dict[str, object] = {"args": vars(args), "device": str(device), "inference": res}
    if args.train_iters > 0:
        tr = time_training(args.train_encoder or args.encoder, args.size, args.train_iters, device)
        if tr:
            name = args.train_encoder or args.encoder
            print(
                f"training ({name}, phantom episodes): {tr['iteration_s']:.3f} s/iteration, "
                f"data wait {100 * tr['data_wait_share']:.1f} %"
            )
        figures["training"] = tr
    if args.json:
        write_json_atomic(args.json, figures)
    if res["ratio"] > 0.5:
        print(
            "note: with one support and N query slices the batched path encodes N + 1 images instead of 2N, so on "
            "hardware without batching gains (compute-bound CPU) the ratio cannot go below (N + 1) / (2N) = "
            f"{(args.slices + 1) / (2 * args.slices):.3f}"
        )
    return 0 if res["max_abs_diff"] < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
