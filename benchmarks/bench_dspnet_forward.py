# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Forward time per query slice: DSPNet against SSL-ALPNet in the same process (issue target: ratio ≤ 1.3 on CPU).

Both models share the same encoder weights (the DSPNet segmentor's encoder state is copied into the SSL-ALPNet
segmentor), run in eval mode with ``torch.no_grad`` on the same inputs: one support slice with a liver-sized mask (the
FSPA clustering path: J ≥ 2 clusters) or, with ``--mask small``, a kidney-sized one (the single-prototype fallback),
and ``--queries`` query slices per forward. Timings alternate between the two models (``--repeats`` rounds, median)
so that both see the same machine state. The head-only times (features computed once) are printed too, and so is the
DSPNet time with each module switched off. Prints a JSON summary; ``--json`` also writes it (atomically).

Usage::

    python benchmarks/bench_dspnet_forward.py [--encoder resnet18 --base_width 32] [--size 256] [--queries 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from labelless.networks.dspnet import build_dspnet_segmentor
from labelless.networks.fewshot import build_fewshot_segmentor
from labelless.utils import write_json_atomic

__all__ = ["main"]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--base_width", type=int, default=32, help="ResNet base width (64 = torchvision's)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1, help="query slices per forward")
    ap.add_argument("--mask", choices=["large", "small"], default="large")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = {"base_width": args.base_width} if args.encoder.startswith("resnet") else {}
    torch.manual_seed(0)
    dsp = build_dspnet_segmentor(args.encoder, encoder_options=opts, dataset="chaos", setting=1, cache_support=False)
    alp = build_fewshot_segmentor(args.encoder, encoder_options=opts, cache_support=False)
    alp.encoder.load_state_dict(dsp.encoder.state_dict())
    variants = {
        "no_fspa": build_dspnet_segmentor(args.encoder, encoder_options=opts, dataset="chaos", setting=1,
                                          cache_support=False, use_fspa=False),
        "no_bcma": build_dspnet_segmentor(args.encoder, encoder_options=opts, dataset="chaos", setting=1,
                                          cache_support=False, use_bcma=False),
        "no_cross_attention": build_dspnet_segmentor(args.encoder, encoder_options=opts, dataset="chaos", setting=1,
                                                     cache_support=False, use_cross_attention=False),
    }  # fmt: skip
    for v in variants.values():
        v.encoder.load_state_dict(dsp.encoder.state_dict())
    models = {"ssl_alpnet": alp, "dspnet": dsp, **variants}
    for m in models.values():
        m.eval()

    g = torch.Generator().manual_seed(1)
    s = args.size
    support = torch.randn(1, 3, s, s, generator=g)
    query = torch.randn(args.queries, 3, s, s, generator=g)
    mask = torch.zeros(1, 1, s, s)
    if args.mask == "large":  # ~40% of the slice: clustering path
        mask[..., int(0.15 * s) : int(0.8 * s), int(0.1 * s) : int(0.75 * s)] = 1
    else:  # ~1.5%: FSPA fallback
        mask[..., int(0.4 * s) : int(0.52 * s), int(0.4 * s) : int(0.52 * s)] = 1

    with torch.no_grad():
        fs, fq = dsp.encoder(support), dsp.encoder(query)
        for m in models.values():  # warm-up
            m(support, mask, query)
        full = {k: [] for k in models}
        head = {k: [] for k in models}
        for _ in range(args.repeats):  # alternate the models round by round
            for k, m in models.items():
                full[k].append(_median_time(lambda m=m: m(support, mask, query), 1))
                head[k].append(
                    _median_time(lambda m=m: m.head(fs, mask, fq, window=m.test_window, output_size=(s, s)), 1)
                )
        clusters = dsp.head.last_info.get("fspa_clusters")
    per_slice = {k: statistics.median(v) / args.queries for k, v in full.items()}
    head_ms = {k: 1000 * statistics.median(v) / args.queries for k, v in head.items()}
    result = {
        "encoder": args.encoder,
        "base_width": args.base_width,
        "size": args.size,
        "queries_per_forward": args.queries,
        "mask": args.mask,
        "fspa_clusters": clusters,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "forward_ms_per_query_slice": {k: round(1000 * v, 2) for k, v in per_slice.items()},
        "head_ms_per_query_slice": {k: round(v, 2) for k, v in head_ms.items()},
        "ratio_dspnet_vs_ssl_alpnet": round(per_slice["dspnet"] / per_slice["ssl_alpnet"], 3),
        "target_ratio": 1.3,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(0 if res["ratio_dspnet_vs_ssl_alpnet"] <= res["target_ratio"] else 1)
