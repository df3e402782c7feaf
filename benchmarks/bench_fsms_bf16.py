# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Does bf16 autocast speed up an FSMS training step on this CPU, and does it change the predictions?

Same process, same network (the shipped configuration: VGG16 blocks 1-4 at width 16, 32 feature channels, 112² images),
same episode (5 one-way 1-shot tasks + 5 unlabelled images): fp32 and ``torch.autocast("cpu", dtype=torch.bfloat16)``
training steps (segmentation forward/backward/Adam step, then the denoising step) alternate, so the machine's load
hits both alike. Prints the median step time of each and their ratio, the CPU's bf16/AMX flags, and, with the
shipped weights, the mean absolute difference of the sigmoid outputs and the Dice between the fp32 and bf16 masks of
the same episode (inference). A ratio > 1 means bf16 is slower.

    OMP_NUM_THREADS=1 python benchmarks/bench_fsms_bf16.py --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from labelless.networks.fsms import FSMSNet

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = sorted(f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512f"))
    return ", ".join(found) or "none of amx*/avx512_bf16/avx512f"


def episode(seed: int = 0, size: int = 112) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    s_img = torch.rand(5, 1, 3, size, size, generator=g)
    s_msk = torch.zeros(5, 1, 1, size, size)
    s_msk[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    q_img = torch.rand(5, 3, size, size, generator=g)
    q_msk = torch.zeros(5, 1, size, size)
    q_msk[..., size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 1
    unl = torch.rand(5, 3, size, size, generator=g)
    return s_img, s_msk, q_img, q_msk, unl


def step(net: FSMSNet, opt: torch.optim.Optimizer, batch: tuple, bf16: bool) -> float:
    s_img, s_msk, q_img, q_msk, unl = batch
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with ctx:
        logits = net(s_img, s_msk, q_img)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), q_msk)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    noisy = unl + 0.3 * torch.randn_like(unl)
    with ctx:
        rec = net.denoise(noisy)
    target = torch.nn.functional.interpolate(unl, size=rec.shape[-2:], mode="bilinear", align_corners=False)
    torch.nn.functional.binary_cross_entropy_with_logits(rec.float(), target).backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--weights", default=str(ROOT / "bundles/fsms_fewshot_skin_segmentation/models/model.pt"))
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    net = FSMSNet(encoder_blocks=4, width=16, feature_channels=32).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    batch = episode()
    for bf16 in (False, True):  # warm-up
        step(net, opt, batch, bf16)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.steps):
        for bf16 in (False, True):
            times[bf16].append(step(net, opt, batch, bf16))
    fp32, bf = statistics.median(times[False]), statistics.median(times[True])
    print(f"training step (median of {args.steps}): fp32 {fp32:.3f} s, bf16 autocast {bf:.3f} s, "
          f"bf16/fp32 = {bf / fp32:.2f}")  # fmt: skip
    if Path(args.weights).is_file():
        net = FSMSNet(encoder_blocks=4, width=16, feature_channels=32)
        net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        net.eval()
        s_img, s_msk, q_img, _, _ = episode(1)
        with torch.no_grad():
            p32 = torch.sigmoid(net(s_img, s_msk, q_img))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                p16 = torch.sigmoid(net(s_img, s_msk, q_img).float())
        a, b = p32 > 0.5, p16 > 0.5
        dice = 2 * (a & b).sum() / max(1, int(a.sum() + b.sum()))
        print(f"shipped weights, one episode: mean |p_fp32 - p_bf16| = {float((p32 - p16).abs().mean()):.4f}, "
              f"Dice(fp32 mask, bf16 mask) = {float(dice):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
