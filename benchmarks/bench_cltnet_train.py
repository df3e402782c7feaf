# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Training speed of the CLTNet bundle's CPU profile: seconds per iteration and the share spent waiting for data.

    python benchmarks/bench_cltnet_train.py [--dataset_dir runs/cltnet/brats_domains] [--iters 20] [--threads 2]

Builds the network, optimisers, loss and loader exactly as train.json does (its config values), runs ``--warmup``
then ``--iters`` timed iterations of ``CycleTranslationTrainer`` and prints s/iteration, iterations per hour and the
data-wait percentage (time between GET_BATCH_STARTED and GET_BATCH_COMPLETED over the wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from labelless.engines.adversarial import CycleTranslationTrainer
from labelless.losses import CycleTranslationLoss
from labelless.networks.cltnet import build_cltnet
from labelless.weak.workflow import resolve_domains, training_dataset

TRAIN_JSON = Path(__file__).resolve().parents[1] / "bundles/cltnet_weakly_supervised_segmentation/configs/train.json"


def main() -> None:
    cfg = json.loads(TRAIN_JSON.read_text())
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset_dir", default=None)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image_size", type=int, default=cfg["image_size"])
    ap.add_argument("--ngf", type=int, default=cfg["ngf"])
    ap.add_argument("--ndf", type=int, default=cfg["ndf"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folders = resolve_domains(args.dataset_dir)
    n = args.warmup + args.iters
    ds = training_dataset(folders, args.image_size, seed=0, length=n)
    net = build_cltnet(ngf=args.ngf, ndf=args.ndf, n_res_blocks=cfg["n_res_blocks"],
                       n_layers_global=cfg["n_layers_global"], n_layers_local=cfg["n_layers_local"])  # fmt: skip
    kw = {"lr": cfg["learning_rate"], "betas": (0.5, 0.999), "weight_decay": cfg["weight_decay"]}
    trainer = CycleTranslationTrainer("cpu", 1, DataLoader(ds, batch_size=1), net,
                                      torch.optim.Adam(net.generator_parameters(), **kw),
                                      torch.optim.Adam(net.discriminator_parameters(), **kw),
                                      loss_function=CycleTranslationLoss(cfg["loss_weights"]), epoch_length=n,
                                      n_steps=n)  # fmt: skip
    marks: dict[str, float] = {"wait": 0.0}

    def started(engine):
        marks["t0"] = time.perf_counter()

    def completed(engine):
        if engine.state.iteration >= args.warmup:
            marks["wait"] += time.perf_counter() - marks["t0"]

    def iteration(engine):
        if engine.state.iteration == args.warmup:
            marks["start"] = time.perf_counter()

    trainer.add_event_handler(Events.GET_BATCH_STARTED, started)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, completed)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, iteration)
    trainer.run()
    wall = time.perf_counter() - marks["start"]
    per = wall / args.iters
    print(f"CLTNet CPU profile: {args.image_size} px, ngf {args.ngf}, ndf {args.ndf}, {args.threads} threads, data "
          f"{folders.root}")  # fmt: skip
    wait = 100 * marks["wait"] / wall
    print(f"{per:.3f} s/iteration ({3600 / per:.0f} iterations/hour); waiting for data {wait:.1f} % of the wall time "
          f"over {args.iters} iterations")  # fmt: skip


if __name__ == "__main__":
    main()
