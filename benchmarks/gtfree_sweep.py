# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Measure the GT-free switches on CHAOS fold 0 without re-running the network for every combination.

Stage ``cache``: with a bundle's shipped ``models/model.pt`` (Setting 1, fold 0), every slice of the query scans and
of the support scan is segmented with **each** chunk's support slice; the FG-minus-BG logit maps are stored as
float16 under ``--work_dir`` (about 270 MB per bundle for the 4 test scans). ``--queries test`` caches the fold's test
scans (the report), ``--queries train`` its 15 training scans (the validation set used to choose the defaults: their
images were seen by the self-supervised training, their labels never).

Stage ``sweep``: runs the package's own GT-free functions
(:func:`~labelless.fewshot.volume.protocol.prepare_gt_free_support` and
:func:`~labelless.fewshot.volume.protocol.segment_volume_gt_free`, the code path of ``evaluate.json``,
``inference.json`` and ``labelless evaluate``) with a predictor that serves the cached logits, for the default
:class:`~labelless.fewshot.volume.gtfree.GTFreeOptions`, a factorial of the main switches and one-at-a-time
variations, and prints the 3D Dice per class (all slices scored). It also prints protocol mode from the cache (it must
reproduce the bundle's protocol figure: a check of the cache). The GT-free choices read only the support scan (image
and label) and the query images; the query labels are read only to score.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/gtfree_sweep.py cache --bundle ssl_alpnet_fewshot_segmentation [--queries train]
    OMP_NUM_THREADS=1 python benchmarks/gtfree_sweep.py sweep --bundle ssl_alpnet_fewshot_segmentation [--queries train]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def _network(bundle: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    from labelless.io.checkpoint import load_network_weights

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    load_network_weights(net, bundle / "models" / "model.pt", "cpu")
    return net.eval()


def _dataset(dataset_dir: str):
    from labelless.data.layouts import PreparedVolumeDataset

    return PreparedVolumeDataset(dataset_dir, "chaos")


def cache(args: argparse.Namespace) -> None:
    from labelless.fewshot.volume.folds import fold_split
    from labelless.fewshot.volume.protocol import support_shot_slices
    from labelless.transforms.intensity import slices_to_tensor_input, zscore

    torch.set_num_threads(args.threads)
    bundle = ROOT / "bundles" / args.bundle
    net = _network(bundle)
    ds = _dataset(args.dataset_dir)
    split = fold_split(ds.pids, args.fold, ds.preset.n_folds)
    pids = [*_queries(split, args.queries), split.support]
    t0 = time.perf_counter()
    vols = {p: zscore(ds.load_image(p).array) for p in pids}
    feats = {}
    with torch.no_grad():
        for p, v in vols.items():
            x = torch.from_numpy(slices_to_tensor_input(v))
            feats[p] = torch.cat([net.encoder(x[i : i + 8]) for i in range(0, x.shape[0], 8)])
        sup_lab = ds.load_label(split.support).array
        out: dict[str, np.ndarray] = {}
        for c in ds.preset.test_classes:
            mask = sup_lab == c
            zs = [int(z) for z in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]]
            shots = support_shot_slices(zs, 3, 1)
            for k, idx in enumerate(shots):
                img = torch.from_numpy(slices_to_tensor_input(vols[split.support][idx]))
                msk = torch.from_numpy(mask[idx].astype(np.float32)[:, None])
                enc = net.encode_support(img, msk)
                for p in pids:
                    parts = []
                    for i in range(0, feats[p].shape[0], 8):
                        lg = net._output(enc, feats[p][i : i + 8], (256, 256), net.test_window, False)
                        parts.append((lg[:, 1] - lg[:, 0]).numpy().astype(np.float16))
                    out[f"{c}_{p}_{k}"] = np.concatenate(parts)
            print(f"class {c} done ({time.perf_counter() - t0:.0f} s)", flush=True)
        for p in pids:
            out[f"feat_{p}"] = feats[p].float().mean(dim=(2, 3)).numpy()
    dest = _cache_file(args)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, **out)
    print(f"cache written to {dest} in {time.perf_counter() - t0:.0f} s")


def _queries(split, which: str) -> list[str]:
    """The query scans: the fold's test scans (the report) or its training scans (validation: their images were
    seen by self-supervised training, their labels never)."""
    return list(split.test) if which == "test" else list(split.train)


def _cache_file(args: argparse.Namespace) -> Path:
    return Path(args.work_dir) / f"cache_{args.bundle}{'' if args.queries == 'test' else '_' + args.queries}.npz"


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = int(np.logical_and(pred, truth).sum())
    den = int(pred.sum()) + int(truth.sum())
    return 1.0 if den == 0 else 2.0 * tp / den


class CachedPredictor:
    """A :data:`~labelless.fewshot.volume.protocol.Predictor` that serves the cached logits: the support tensor
    names the class and chunk, each query slice (by its content) the scan and slice. It lets the sweep run the
    package's own GT-free functions without the network."""

    def __init__(self, cache: dict[str, np.ndarray], volumes: dict[str, np.ndarray], support_keys: dict) -> None:
        self.cache = cache
        self.slices = {_key(v[z]): (p, z) for p, v in volumes.items() for z in range(v.shape[0])}
        self.supports = support_keys

    def __call__(self, sup_img: torch.Tensor, sup_msk: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        c, k = self.supports[(_key(sup_img[:, 0].numpy()), _key(sup_msk[:, 0].numpy()))]
        out = []
        for q in query[:, 0].numpy():
            p, z = self.slices[_key(q)]
            out.append(torch.from_numpy(self.cache[f"{c}_{p}_{k}"][z].astype(np.float32)))
        d = torch.stack(out)
        return torch.stack([torch.zeros_like(d), d], dim=1)


def _key(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def sweep(args: argparse.Namespace) -> None:
    from labelless.fewshot.volume.folds import fold_split
    from labelless.fewshot.volume.gtfree import GTFreeOptions
    from labelless.fewshot.volume.protocol import (
        prepare_gt_free_support,
        protocol_chunks,
        segment_volume_gt_free,
        support_shot_slices,
    )
    from labelless.transforms.intensity import zscore

    ds = _dataset(args.dataset_dir)
    split = fold_split(ds.pids, args.fold, ds.preset.n_folds)
    cache_file = np.load(_cache_file(args))
    d = {k: cache_file[k] for k in cache_file.files if not k.startswith("feat_")}
    sup = split.support
    queries = _queries(split, args.queries)
    norm = {p: zscore(ds.load_image(p).array) for p in [*queries, sup]}
    labels = {p: ds.load_label(p).array for p in [*queries, sup]}
    classes = list(ds.preset.test_classes)
    names = {c: ds.label_map.name(c) for c in classes}
    sup_keys, shots = {}, {}
    for c in classes:
        m = labels[sup] == c
        zs = [int(z) for z in np.nonzero(m.reshape(m.shape[0], -1).any(axis=1))[0]]
        shots[c] = support_shot_slices(zs, 3, 1)
        for k, idx in enumerate(shots[c]):
            sup_keys[(_key(norm[sup][idx]), _key(m[idx].astype(np.float32)))] = (c, k)
    predictor = CachedPredictor(d, norm, sup_keys)

    rows = []
    prot = {}  # protocol mode from the cache: must reproduce the bundle's figure (a check of the cache)
    for c in classes:
        vals = []
        for p in queries:
            t = labels[p] == c
            zq = np.nonzero(t.reshape(t.shape[0], -1).any(axis=1))[0]
            if zq.size:
                ch = protocol_chunks(t.shape[0], int(zq[0]), int(zq[-1]))
                pred = np.stack([d[f"{c}_{p}_{k}"][z] for z, k in enumerate(ch)]) > 0
                sl = slice(int(zq[0]), int(zq[-1]) + 1)
                vals.append(_dice(pred[sl], t[sl]))
        prot[c] = float(np.mean(vals))
    rows.append(("protocol mode", prot))

    def run(opts: GTFreeOptions) -> dict[int, float]:
        res = {}
        for c in classes:
            support = prepare_gt_free_support(norm[sup], labels[sup] == c, predictor, opts, shots=shots[c])
            vals = [_dice(segment_volume_gt_free(norm[p], support, predictor).prediction, labels[p] == c)
                    for p in queries if (labels[p] == c).any()]  # fmt: skip
            res[c] = float(np.mean(vals))
        return res

    off = dict(extent_reference="volume", predict_outside_extent=True, extent_margin=2, foreground_threshold="argmax",
               presence="none", cleanup="none")  # fmt: skip
    rows.append(("before: §6.5 rule + empty slices (all switches off)", run(GTFreeOptions(**off))))
    default = GTFreeOptions()
    variants = []
    for fg, pres, clean, outside in itertools.product(["argmax", "support"], ["none", "area"], ["none", "largest"],
                                                      [True, False]):  # fmt: skip
        variants.append(dict(foreground_threshold=fg, presence=pres, cleanup=clean, predict_outside_extent=outside))
    variants += [{"extent_reference": "volume"}, {"extent_margin": 2}, {"extent_margin": 3}, {"presence": "area"},
                 {"presence": "soft_area"}, {"presence": "max_prob"}, {"presence": "area", "presence_rule": "youden"},
                 {"cleanup": "fraction"}]  # fmt: skip
    if args.variants:
        variants = json.loads(args.variants)
    for kw in variants:
        opts = GTFreeOptions.from_options(default, **kw)
        rows.append((json.dumps({k: v for k, v in opts.as_dict().items() if v != getattr(GTFreeOptions(), k)} or
                                "defaults"), run(opts)))  # fmt: skip
        print(f"{100 * np.mean(list(rows[-1][1].values())):6.2f} {rows[-1][0]}", flush=True)
    print(f"\n{args.bundle}, {args.queries} scans {queries} (support {sup}); Dice % per class and mean")
    for name, res in rows:
        mean = 100 * float(np.mean(list(res.values())))
        print(f"{mean:6.2f} | " + " ".join(f"{names[c]} {100 * v:5.2f}" for c, v in res.items()) + f" | {name}")
    out = Path(args.work_dir) / f"sweep_{args.bundle}_{args.queries}.json"
    out.write_text(json.dumps([{"variant": n, "dice": {names[c]: v for c, v in r.items()}} for n, r in rows], indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["cache", "sweep"])
    parser.add_argument("--bundle", default="ssl_alpnet_fewshot_segmentation")
    parser.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "chaos_t2spir"))
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "gtfree"))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--queries",
        choices=["test", "train"],
        default="test",
        help="query scans: the fold's test scans (report) or its training scans (validation)",
    )
    parser.add_argument("--variants", default=None, help="JSON list of option dicts replacing the built-in variants")
    args = parser.parse_args(argv)
    cache(args) if args.stage == "cache" else sweep(args)


if __name__ == "__main__":
    main()
