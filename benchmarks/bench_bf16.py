# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""bf16 autocast on this CPU for the shipped SSL-ALPNet model: inference and one training step, against float32.

Loads ``bundles/ssl_alpnet_fewshot_segmentation/models/model.pt`` into the bundle's network (ResNet-18 encoder,
base width 32), then, on an embedded abdominal phantom (liver, 256²): times (a) segmenting ``--slices`` query slices
given one support slice (support encoded once, batches of 8) and (b) one training step (forward, ALPNet loss,
backward, SGD step) on an episode, each in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
interleaved over ``--repeats`` rounds (the best round counts). It prints the ratios bf16/fp32, the largest absolute
difference of the foreground probabilities and the Dice of each mode against the phantom's liver. bf16 is adopted as
an option only where it is faster with unchanged Dice; the CPU flags that make it fast (AMX, AVX512-BF16) are
printed.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_bf16.py [--slices 16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.data.phantoms import default_dataset_dir
from labelless.io.checkpoint import load_network_weights
from labelless.io.readers import read_volume
from labelless.losses import ALPNetLoss
from labelless.networks.fewshot import build_fewshot_segmentor

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def _cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f") if f" {f}" in flags]
    return ", ".join(found) or "none of amx_bf16/amx_tile/avx512_bf16/avx512f"


def _slices(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support (slice with the most liver), its mask, ``n`` query slices around it and their liver masks, 256²."""
    data = default_dataset_dir("abdomen")
    img = read_volume(data / "image_2.nii.gz").array.astype(np.float32)
    lab = read_volume(data / "label_2.nii.gz").array
    liver = lab == 1
    z = int(np.argmax(liver.sum(axis=(0, 1))))
    zs = [min(max(z + d, 0), img.shape[2] - 1) for d in range(-(n // 2), n - n // 2)]
    x = torch.from_numpy((img - img.mean()) / (img.std() + 1e-6))
    m = torch.from_numpy(liver.astype(np.float32))

    def prep(t: torch.Tensor, zz: list[int], mode: str) -> torch.Tensor:
        s = t[:, :, zz].permute(2, 0, 1)[:, None]
        return F.interpolate(s, size=(256, 256), mode=mode)

    support = prep(x, [z], "bilinear").repeat(1, 3, 1, 1)
    support_mask = prep(m, [z], "nearest")
    queries = prep(x, zs, "bilinear").repeat(1, 3, 1, 1)
    query_masks = prep(m, zs, "nearest")
    return support, support_mask, queries, query_masks


def _dice(prob: torch.Tensor, truth: torch.Tensor) -> float:
    p, t = prob > 0.5, truth[:, 0] > 0.5
    return float(2 * (p & t).sum() / max(int(p.sum() + t.sum()), 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); CPU flags: {_cpu_flags()}")

    model = build_fewshot_segmentor("resnet18", encoder_options={"base_width": 32})
    load_network_weights(model, ROOT / "bundles" / "ssl_alpnet_fewshot_segmentation" / "models" / "model.pt")
    s, sm, q, qm = _slices(args.slices)
    modes = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}

    def infer(ctx) -> tuple[float, torch.Tensor]:
        model.eval()
        with torch.no_grad(), ctx():
            t0 = time.perf_counter()
            enc = model.encode_support(s, sm)
            logits = model.segment_with(enc, q, batch_size=8)
            dt = time.perf_counter() - t0
        return dt, torch.softmax(logits.float(), dim=1)[:, 1]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = ALPNetLoss()

    def train_step(ctx) -> float:
        model.load_state_dict(state)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        t0 = time.perf_counter()
        with ctx():
            out = model(s, sm, q[:1], return_aux=True)
            loss, _ = loss_fn(out, qm[:1].long(), sm)
        loss.float().backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {k: [] for k in modes}
    train_times: dict[str, list[float]] = {k: [] for k in modes}
    probs: dict[str, torch.Tensor] = {}
    for ctx in modes.values():  # warm-up
        infer(ctx)
        train_step(ctx)
    for _ in range(args.repeats):  # interleaved rounds
        for name, ctx in modes.items():
            dt, probs[name] = infer(ctx)
            times[name].append(dt)
            train_times[name].append(train_step(ctx))
    fp, bf = min(times["fp32"]), min(times["bf16"])
    tf, tb = min(train_times["fp32"]), min(train_times["bf16"])
    what = f"inference, 1 support + {args.slices} query slices 256²"
    print(f"{what}: fp32 {fp:.3f} s, bf16 {bf:.3f} s: ratio {bf / fp:.2f}")
    print(f"training step (1 episode): fp32 {tf:.3f} s, bf16 {tb:.3f} s: ratio {tb / tf:.2f}")
    diff = float((probs["fp32"] - probs["bf16"]).abs().max())
    d32, d16 = _dice(probs["fp32"], qm), _dice(probs["bf16"], qm)
    print(f"max |p_fp32 - p_bf16| = {diff:.4f}; liver Dice fp32 {100 * d32:.2f}, bf16 {100 * d16:.2f}")
    faster = bf < 0.95 * fp
    verdict = "faster" if faster else "not faster"
    same = abs(d32 - d16) < 0.005
    print(f"bf16 is {verdict} and Dice is {'unchanged' if same else 'changed'}: "
          f"{'adopt as an option' if faster and same else 'not adopted'}")  # fmt: skip


if __name__ == "__main__":
    main()
