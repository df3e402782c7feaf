# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Peak memory of SSL-ALPNet training steps with the ResNet-101 encoder: ``optim_set_to_none`` False vs True.

Each setting runs in a fresh subprocess (``--steps`` iterations of :class:`~labelless.engines.EpisodicTrainer` on
self-supervised episodes of an embedded abdominal phantom, 256², SGD with momentum as in ``train.json``) and reports
its peak resident memory (``ru_maxrss``); the difference is what freeing the gradient buffers between steps saves.
The weights after the run are compared too (they must be identical).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_train_memory.py [--encoder resnet101] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

__all__ = ["main"]

CHILD = r"""
import json, resource, sys, torch, hashlib
from labelless.engines import EpisodicTrainer
from labelless.fewshot.volume.workflow import resolve_dataset, training_episodes
from labelless.networks.fewshot import build_fewshot_segmentor
set_to_none, encoder, steps = sys.argv[1] == "1", sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
net = build_fewshot_segmentor(encoder)
opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
data = resolve_dataset(None, "phantom_abdomen")
ds = training_episodes(data, 0, 1, 0, 1, steps, "parity", sys.argv[4])
loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)
trainer = EpisodicTrainer("cpu", 1, loader, net, opt, epoch_length=steps, n_steps=steps, episode_seed=0,
                          optim_set_to_none=set_to_none)
trainer.run()
digest = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in net.state_dict().values())).hexdigest()
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "weights": digest}))
"""


def main(argv: list[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for flag in (0, 1):
            res = subprocess.run([sys.executable, "-c", CHILD, str(flag), args.encoder, str(args.steps), tmp],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if res.returncode != 0:
                raise SystemExit(res.stderr[-3000:])
            out[flag] = json.loads(res.stdout.strip().splitlines()[-1])
    off, on = out[0]["maxrss_mb"], out[1]["maxrss_mb"]
    print(f"{args.encoder}, {args.steps} training steps, 256² episodes: peak RSS optim_set_to_none=False {off:.0f} MB, "
          f"True {on:.0f} MB: saves {off - on:.0f} MB")  # fmt: skip
    print(f"weights identical: {out[0]['weights'] == out[1]['weights']}")


if __name__ == "__main__":
    main()
