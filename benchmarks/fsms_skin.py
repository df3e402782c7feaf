# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""FSMS skin-lesion benchmark helpers: trivial baselines under the episode protocol, and the results table.

``baselines`` runs two predictors that use no image content at all through the same seeded episodes as the bundle's
``evaluate.json`` (``FewShotImageEvaluationRunner``) and writes one ``metrics.json`` per predictor in the same format:

- ``copy_support``: the query mask is the support mask (K-shot: the pixel-wise majority of the K support masks);
- ``all_lesion``: every pixel is lesion.

and three simple predictors: ``otsu_dark`` reads the query image but no mask (the grey query image thresholded by
Otsu, darker = lesion, the intensity baseline of the CLTNet results); ``colour_prototypes`` is the training-free
few-shot predictor (each query pixel takes the label of the nearer of two mean RGB colours of the K supports: lesion
and background); ``dark_region`` is the pseudo-label of the ``pseudo_kind="dark"`` meta-training classes applied to the
query (Otsu on the smoothed grey image, one component, holes filled), i.e. the teacher of those classes.

``postproc`` scores the shipped model's masks with and without a shape post-processing (hole filling, the largest
connected component, both) on the validation pool, and runs the variant chosen there on the test pools.

``reselect`` chooses the checkpoint of each training run on an in-domain validation pool (the ISIC-2016 images of the
unlabelled 40 % with their masks, which training never reads) and scores the chosen one on the test pools.

They tell how much of a score comes from the data (ISIC crops are mostly lesion) rather than from the model.

``threshold`` scores weight files with the fixed 0.5 threshold and with the threshold fitted on each task's supports
(the bundle's ``support_threshold``) on both validation pools, then on the test pools.

``summarize`` prints one markdown row per (test pool, K) with the episode Dice (%) of every evaluation folder given
(``LABEL=F1+F2+...``: mean ± sd over several folders, e.g. the last checkpoints of one run).

Usage::

    python benchmarks/fsms_skin.py baselines --data ../shared/data --out runs/fsms/eval_trivial
    python benchmarks/fsms_skin.py postproc --data ../shared/data --out runs/fsms/eval_postproc
    python benchmarks/fsms_skin.py reselect runs/fsms_zoom/cont/fsms_zoom_s0 --out runs/fsms_zoom/reselect
    python benchmarks/fsms_skin.py threshold bundles/fsms_fewshot_skin_segmentation/models/model.pt --out runs/fsms/thr
    python benchmarks/fsms_skin.py summarize "baseline=runs/fsms/eval_baseline" "surrogate=runs/fsms/eval_surrogate" \\
        "copy support=runs/fsms/eval_trivial/copy_support"
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "copy_support",
    "all_lesion",
    "otsu_dark",
    "colour_prototypes",
    "dark_region",
    "shape_postprocess",
    "run_compare",
    "run_baselines",
    "run_postproc",
    "run_reselect",
    "run_threshold",
    "in_domain_val_pool",
    "summarize",
    "main",
]


def copy_support(support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
    """The pixel-wise majority of the K support masks as the query prediction."""
    return (support_masks.float().mean(dim=1) > 0.5).float()


def all_lesion(support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
    """Every pixel is lesion."""
    return torch.ones_like(query_images[:, :1])


def otsu_dark(support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
    """Per query image: the channel mean thresholded by Otsu's method, pixels darker than the threshold are lesion
    (a constant image gives no lesion)."""
    from skimage.filters import threshold_otsu

    grey = query_images.float().mean(dim=1).cpu().numpy()
    out = np.zeros_like(grey, dtype=np.float32)
    for i, g in enumerate(grey):
        if float(g.max() - g.min()) > 1e-8:
            out[i] = g < threshold_otsu(g)
    return torch.from_numpy(out)[:, None].to(query_images.device)


def colour_prototypes(
    support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor
) -> torch.Tensor:
    """Training-free few-shot predictor: the mean RGB of the K supports' lesion pixels and of their background pixels
    are two prototypes; a query pixel is lesion when it is nearer (Euclidean) to the lesion prototype."""
    s = support_images.float()  # [T, K, 3, H, W]
    m = support_masks.float()  # [T, K, 1, H, W]
    fg = (s * m).sum(dim=(1, 3, 4)) / m.sum(dim=(1, 3, 4)).clamp_min(1.0)  # [T, 3]
    bg = (s * (1 - m)).sum(dim=(1, 3, 4)) / (1 - m).sum(dim=(1, 3, 4)).clamp_min(1.0)
    q = query_images.float()
    d_fg = ((q - fg[:, :, None, None]) ** 2).sum(dim=1, keepdim=True)
    d_bg = ((q - bg[:, :, None, None]) ** 2).sum(dim=1, keepdim=True)
    return (d_fg < d_bg).float()


def dark_region(support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
    """Per query image: the dark-region pseudo-label of the FSMS ``pseudo_kind="dark"`` classes
    (:func:`labelless.fewshot.image.pseudo.dark_region_mask`: smoothed grey image below Otsu, the largest component
    mostly inside the inscribed ellipse, holes filled; no region: no lesion). No support, no mask, no training: the
    teacher of the dark pseudo-label classes, scored as a baseline."""
    from labelless.fewshot.image.pseudo import dark_region_mask

    out = torch.zeros(query_images.shape[0], 1, *query_images.shape[2:])
    for i, img in enumerate(query_images.float().cpu()):
        m = dark_region_mask(img, max_area=1.0)
        if m is not None:
            out[i, 0] = torch.from_numpy(m.astype(np.float32))
    return out.to(query_images.device)


def shape_postprocess(mask: np.ndarray, fill: bool = True, largest: bool = True) -> np.ndarray:
    """A binary (H, W) mask with its holes filled and/or only its largest 8-connected component kept."""
    from scipy import ndimage

    out = np.asarray(mask) > 0
    if largest and out.any():
        lab, n = ndimage.label(out, structure=np.ones((3, 3)))
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            out = lab == (int(np.argmax(sizes)) + 1)
    if fill:
        out = ndimage.binary_fill_holes(out)
    return out


def run_baselines(
    data: str | os.PathLike,
    out: str | os.PathLike,
    shots: tuple[int, ...] = (1, 5),
    image_size: int = 112,
    n_episodes: int = 200,
    n_tasks: int = 5,
    seed: int = 0,
    names: tuple[str, ...] | None = None,
) -> dict[str, dict]:
    """Evaluate :func:`copy_support`, :func:`all_lesion`, :func:`otsu_dark`, :func:`colour_prototypes` and
    :func:`dark_region` (or only those in ``names``) on the test pools and the validation pool (``"val"``) of
    ``target_pools(shared_data_dir=data)`` with the bundle's protocol; writes ``<out>/<name>/metrics.json`` (+ one
    folder per pool and K) and returns the summaries.
    """
    from labelless.fewshot.image.workflow import evaluate_pools, target_pools
    from labelless.utils import write_json_atomic

    all_pools = target_pools(None, data, image_size)
    pools = {**all_pools["test"], **({"val": all_pools["val"]} if all_pools["val"] is not None else {})}
    summaries = {}
    predictors = (("copy_support", copy_support), ("all_lesion", all_lesion), ("otsu_dark", otsu_dark),
                  ("colour_prototypes", colour_prototypes), ("dark_region", dark_region))  # fmt: skip
    unknown = set(names or ()) - {n for n, _ in predictors}
    if unknown:
        raise SystemExit(f"unknown baseline(s) {sorted(unknown)}; known: {[n for n, _ in predictors]}")
    for name, predict in predictors:
        if names and name not in names:
            continue
        rows = evaluate_pools(
            predict, pools, shots, Path(out) / name, n_episodes=n_episodes, n_tasks=n_tasks, seed=seed, n_overlays=0,
            progress=False,
        )  # fmt: skip
        for r in rows:
            print(f"{name:13s} {r['pool']:18s} {r['shots']}-shot: episode Dice {100 * r['episode_dice']:.2f}")
        summaries[name] = {"label": name, "checkpoint": None, "seed": seed, "results": rows}
        write_json_atomic(Path(out) / name / "metrics.json", summaries[name])
    return summaries


def finetune_predictor(
    network: torch.nn.Module, steps: int = 20, lr: float = 1e-4, seed: int = 0
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The supervised reference on the same K shots: for every task, a copy of ``network`` is fine-tuned for ``steps``
    Adam steps (segmentation parameters, BCE) on its K support images only (each step: the K supports as supports and
    one of them, randomly flipped, as the query with its own mask), then segments the task's query. No other label is
    seen; every task starts again from ``network``'s weights. Seeded per task."""
    import copy

    def predict(support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
        out = []
        for t in range(support_images.shape[0]):
            model = copy.deepcopy(network).train()
            seg = getattr(model, "segmentation_parameters", None)
            opt = torch.optim.Adam(seg() if seg is not None else model.parameters(), lr=lr)
            g = torch.Generator().manual_seed(seed * 100003 + t)
            s, m = support_images[t : t + 1], support_masks[t : t + 1]
            with torch.enable_grad():
                for i in range(steps):
                    j = i % s.shape[1]
                    dims = [d for d, f in zip((-1, -2), torch.rand(2, generator=g) < 0.5) if f]
                    q, qm = s[0, j], m[0, j]
                    if dims:
                        q, qm = torch.flip(q, dims), torch.flip(qm, dims)
                    opt.zero_grad(set_to_none=True)
                    logits = model(s, m, q[None])
                    torch.nn.functional.binary_cross_entropy_with_logits(logits, qm[None]).backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                out.append(torch.sigmoid(model(s, m, query_images[t : t + 1])))
        return torch.cat(out)

    return predict


def _cpu_profile_network(weights: str | os.PathLike) -> torch.nn.Module:
    """The bundle's CPU-profile FSMSNet (4 blocks, width 16, 32 feature channels) with the weights of ``weights`` (a
    plain state dict or a training checkpoint)."""
    from labelless.io.checkpoint import read_state_dict
    from labelless.networks.fsms import FSMSNet

    net = FSMSNet(encoder_blocks=4, width=16, feature_channels=32)
    net.load_state_dict(read_state_dict(weights, "FSMS weights"))
    return net


def run_finetune_reference(
    data: str | os.PathLike,
    out: str | os.PathLike,
    weights: str | os.PathLike,
    shots: tuple[int, ...] = (1, 5),
    pools: tuple[str, ...] = ("isic2016_test",),
    image_size: int = 112,
    n_episodes: int = 20,
    steps: int = 20,
    seed: int = 0,
) -> dict[str, list]:
    """The shipped model with and without per-task fine-tuning on the K shots (:func:`finetune_predictor`) and the two
    trivial predictors, on the first ``n_episodes`` seeded episodes of each pool (the same episodes as the first
    ``n_episodes`` of the full protocol); writes ``<out>/<name>/metrics.json``."""
    from labelless.fewshot.image.protocol import network_predictor
    from labelless.fewshot.image.workflow import evaluate_pools, target_pools
    from labelless.utils import write_json_atomic

    net = _cpu_profile_network(weights)
    all_pools = target_pools(None, data, image_size)
    chosen = {k: v for k, v in all_pools["test"].items() if k in pools}
    summaries = {}
    predictors = (("meta_learnt", network_predictor(net)), ("finetuned_on_k_shots", finetune_predictor(net, steps)),
                  ("copy_support", copy_support), ("all_lesion", all_lesion))  # fmt: skip
    for name, predict in predictors:
        rows = evaluate_pools(predict, chosen, shots, Path(out) / name, n_episodes=n_episodes, seed=seed,
                              n_overlays=0, progress=False)  # fmt: skip
        for r in rows:
            print(f"{name:22s} {r['pool']:18s} {r['shots']}-shot: episode Dice {100 * r['episode_dice']:.2f} "
                  f"({n_episodes} episodes)", flush=True)  # fmt: skip
        summaries[name] = rows
        write_json_atomic(Path(out) / name / "metrics.json", {"label": name, "checkpoint": str(weights),
                                                              "finetune_steps": steps, "seed": seed, "results": rows})
    return summaries


POSTPROC_VARIANTS = {"none": None, "fill": (True, False), "largest": (False, True), "largest_fill": (True, True)}


def run_compare(
    data: str | os.PathLike,
    png: str | os.PathLike,
    before: str | os.PathLike,
    after: str | os.PathLike,
    pool: str = "isic_samples_test",
    n_pairs: int = 4,
    image_size: int = 112,
    seed: int = 0,
) -> Path:
    """A before | after figure: ``n_pairs`` seeded 1-shot (support, query) pairs of test pool ``pool``, one row each:
    the support with its mask, the query segmented by the CPU-profile model of ``before`` and of ``after`` (red: the
    model's mask, green: the ground-truth outline; per-image Dice in the titles). Written atomically to ``png``."""
    from PIL import Image

    from labelless.evaluation.overlays import render_panels, rgb_overlay
    from labelless.fewshot.image.workflow import target_pools

    def big(img: Image.Image) -> Image.Image:  # 2x, so that the panel titles fit
        return img.resize((2 * img.width, 2 * img.height), resample=Image.Resampling.NEAREST)

    pools = target_pools(None, data, image_size)["test"]
    if pool not in pools:
        raise SystemExit(f"unknown pool {pool!r}; known: {sorted(pools)}")
    p = pools[pool]
    nets = [_cpu_profile_network(w).eval() for w in (before, after)]
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    while len(rows) < int(n_pairs) and len(seen) < len(p.image_ids) * (len(p.image_ids) - 1):
        a, b = (p.image_ids[int(j)] for j in rng.choice(len(p.image_ids), 2, replace=False))
        if (a, b) in seen:
            continue
        seen.add((a, b))
        (si, sm), (qi, qm) = p.load(a), p.load(b)
        si, sm, qi, qm = (torch.as_tensor(x).float() for x in (si, sm, qi, qm))
        sm, qm = (sm > 0.5).float(), (qm > 0.5).float()
        panels = [(big(rgb_overlay(si, truth=sm[0])), f"support {a}")]
        for name, net in zip(("before", "after"), nets):
            with torch.no_grad():
                pred = (torch.sigmoid(net(si[None, None], sm[None, None], qi[None])) > 0.5).float()[0, 0]
            dice = float(2 * (pred * qm[0]).sum() / (pred.sum() + qm[0].sum()).clamp_min(1))
            panels.append((big(rgb_overlay(qi, truth=qm[0], prediction=pred)), f"{name} {b}: Dice {100 * dice:.1f}"))
        rows.append(render_panels(panels))
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)))
    for i, r in enumerate(rows):
        sheet.paste(r, (0, i * rows[0].height))
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    sheet.save(tmp)
    os.replace(tmp, out)
    print(f"written {out}")
    return out


def run_postproc(
    data: str | os.PathLike,
    out: str | os.PathLike,
    weights: str | os.PathLike,
    shots: tuple[int, ...] = (1, 5),
    image_size: int = 112,
    n_episodes: int = 200,
    seed: int = 0,
) -> dict[str, dict]:
    """The model of ``weights`` (the bundle's CPU configuration) through the seeded episodes, its 0.5 masks
    post-processed by each of :data:`POSTPROC_VARIANTS` on the validation pool; the variant with the highest mean
    episode Dice over ``shots`` there is then run on the test pools (the test pools are never used for the choice).
    Writes ``<out>/<variant>/metrics.json``."""
    from labelless.fewshot.image.protocol import network_predictor
    from labelless.fewshot.image.workflow import evaluate_pools, target_pools
    from labelless.utils import write_json_atomic

    base = network_predictor(_cpu_profile_network(weights))
    all_pools = target_pools(None, data, image_size)
    if all_pools["val"] is None:
        raise SystemExit(f"{data}: no validation pool; the post-processing cannot be chosen")

    def predictor(how: tuple[bool, bool] | None) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        def predict(si: torch.Tensor, sm: torch.Tensor, qi: torch.Tensor) -> torch.Tensor:
            prob = base(si, sm, qi)
            if how is None:
                return prob
            masks = (prob[:, 0] > 0.5).numpy()
            done = np.stack([shape_postprocess(mk, fill=how[0], largest=how[1]) for mk in masks])
            return torch.from_numpy(done.astype(np.float32))[:, None]

        return predict

    def evaluate(name: str, pools: dict) -> list[dict]:
        rows = evaluate_pools(predictor(POSTPROC_VARIANTS[name]), pools, shots, Path(out) / name,
                              n_episodes=n_episodes, seed=seed, n_overlays=0, progress=False)  # fmt: skip
        for r in rows:
            dice = 100 * r["episode_dice"]
            print(f"{name:13s} {r['pool']:18s} {r['shots']}-shot: episode Dice {dice:.2f}", flush=True)
        return rows

    val_rows = {name: evaluate(name, {"val": all_pools["val"]}) for name in POSTPROC_VARIANTS}
    val = {n: float(np.mean([r["episode_dice"] for r in rows])) for n, rows in val_rows.items()}
    best = max(val, key=val.get)
    print(f"validation choice: {best} (mean val episode Dice over K: "
          + ", ".join(f"{n} {100 * v:.2f}" for n, v in val.items()) + ")", flush=True)  # fmt: skip
    summaries = {}
    for name, rows in val_rows.items():
        if name == best:
            rows = rows + evaluate(name, all_pools["test"])
        summaries[name] = {"label": name, "checkpoint": str(weights), "seed": seed, "chosen_on_val": name == best,
                           "results": rows}  # fmt: skip
        write_json_atomic(Path(out) / name / "metrics.json", summaries[name])
    return summaries


def in_domain_val_pool(data: str | os.PathLike, image_size: int = 112) -> Any:
    """The ISIC-2016 images of the unlabelled 40 % *with* their masks: a validation pool from the test pool's own
    domain. Training never reads these masks (the images are seen unlabelled by the surrogate and the pseudo-label
    classes); here they are read to choose checkpoints only, as a user would label a few of their unlabelled images
    for validation. Disjoint from the test pools."""
    from labelless.data.images import ImageFolderPool, list_images, split_pool

    isic = Path(data) / "isic2016"
    files = list_images(isic / "images")
    unl, _ = split_pool(list(files), 0.4)
    return ImageFolderPool([files[i] for i in unl], size=image_size, masks=isic / "masks")


def run_reselect(
    data: str | os.PathLike,
    out: str | os.PathLike,
    runs: list[str],
    image_size: int = 112,
    n_val_episodes: int = 100,
    n_episodes: int = 200,
    seed: int = 0,
    support_threshold: bool = False,
) -> dict[str, dict]:
    """Checkpoint selection on :func:`in_domain_val_pool` instead of the CLTNet ISIC ``val`` samples: every
    ``<run>/models/checkpoint_iteration=*.pt`` of each run is scored there (1-shot, ``n_val_episodes``), the best one
    then on the test pools (the test pools never take part in the choice). Writes ``<out>/<run name>/val_<it>/`` and
    ``<out>/<run name>/test/metrics.json`` (with the choice). ``support_threshold``: every prediction (validation
    and test) thresholds each task at the threshold fitted on its supports
    (:func:`~labelless.fewshot.image.protocol.support_calibrated_predictor`)."""
    import re

    from labelless.fewshot.image.protocol import network_predictor, support_calibrated_predictor
    from labelless.fewshot.image.workflow import evaluate_pools, target_pools
    from labelless.utils import write_json_atomic

    def predictor(ck: Path) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        plain = network_predictor(_cpu_profile_network(ck))
        return support_calibrated_predictor(plain) if support_threshold else plain

    val_pool = {"isic2016_unlabeled_val": in_domain_val_pool(data, image_size)}
    test_pools = target_pools(None, data, image_size)["test"]
    summaries = {}
    for run in runs:
        name = Path(run).name
        cks = sorted(Path(run, "models").glob("checkpoint_iteration=*.pt"),
                     key=lambda p: int(re.sub(r"\D", "", p.stem)))  # fmt: skip
        if not cks:
            raise SystemExit(f"{run}: no models/checkpoint_iteration=*.pt")
        scores = {}
        for ck in cks:
            rows = evaluate_pools(predictor(ck), val_pool, (1,),
                                  Path(out) / name / f"val_{ck.stem.split('=')[-1]}", n_episodes=n_val_episodes,
                                  seed=seed, n_overlays=0, progress=False)  # fmt: skip
            scores[ck] = rows[0]["episode_dice"]
            print(f"{name} {ck.name}: in-domain val 1-shot episode Dice {100 * scores[ck]:.2f}", flush=True)
        best = max(scores, key=scores.get)  # ties: the first
        rows = evaluate_pools(predictor(best), test_pools, (1, 5),
                              Path(out) / name / "test", n_episodes=n_episodes, seed=seed, n_overlays=0,
                              progress=False)  # fmt: skip
        for r in rows:
            print(f"{name} {best.name} {r['pool']:18s} {r['shots']}-shot: episode Dice {100 * r['episode_dice']:.2f}",
                  flush=True)  # fmt: skip
        summaries[name] = {"label": name, "checkpoint": str(best), "seed": seed, "selection": "in-domain val",
                           "support_threshold": support_threshold,
                           "val_scores": {p.name: v for p, v in scores.items()}, "results": rows}  # fmt: skip
        write_json_atomic(Path(out) / name / "test" / "metrics.json", summaries[name])
    return summaries


def run_threshold(
    data: str | os.PathLike,
    out: str | os.PathLike,
    weights: list[str],
    shots: tuple[int, ...] = (1, 5),
    image_size: int = 112,
    n_val_episodes: int = 100,
    n_episodes: int = 200,
    seed: int = 0,
    test: bool = True,
    test_variants: tuple[str, ...] = ("plain", "support"),
) -> dict[str, dict]:
    """The fixed 0.5 threshold against the threshold fitted on each task's supports (``support_threshold``), per
    weight file: both on the two validation pools (:func:`in_domain_val_pool` and the CLTNet ISIC ``val`` samples),
    then (``test``) both on the test pools, so the test rows of the variant that validation prefers can be read
    beside the other (``test_variants``: only these on the test pools, e.g. when the plain test rows exist already).
    Writes ``<out>/<weights stem>/{val,test}_{plain,support}/metrics.json``."""
    from labelless.fewshot.image.protocol import network_predictor, support_calibrated_predictor
    from labelless.fewshot.image.workflow import evaluate_pools, target_pools
    from labelless.utils import write_json_atomic

    all_pools = target_pools(None, data, image_size)
    val_pools = {"isic2016_unlabeled_val": in_domain_val_pool(data, image_size), "cltnet_isic_val": all_pools["val"]}
    results: dict[str, dict] = {}
    for w in weights:
        name = Path(w).parent.parent.name + "_" + Path(w).stem if Path(w).parent.name == "models" else Path(w).stem
        plain = network_predictor(_cpu_profile_network(w))
        variants = {"plain": plain, "support": support_calibrated_predictor(plain)}
        for split, pools, n in (("val", val_pools, n_val_episodes), ("test", all_pools["test"], n_episodes)):
            if split == "test" and not test:
                continue
            for v, predict in variants.items():
                if split == "test" and v not in test_variants:
                    continue
                rows = evaluate_pools(predict, pools, shots, Path(out) / name / f"{split}_{v}", n_episodes=n,
                                      seed=seed, n_overlays=0, progress=False)  # fmt: skip
                write_json_atomic(Path(out) / name / f"{split}_{v}" / "metrics.json",
                                  {"label": f"{name} {v}", "weights": w, "support_threshold": v == "support",
                                   "results": rows})  # fmt: skip
                results[f"{name}/{split}_{v}"] = {r["pool"] + f"/{r['shots']}": r["episode_dice"] for r in rows}
                for r in rows:
                    print(f"{name} {split} {v:7s} {r['pool']:22s} {r['shots']}-shot: episode Dice "
                          f"{100 * r['episode_dice']:.2f}", flush=True)  # fmt: skip
    return results


def summarize(specs: list[str]) -> str:
    """Markdown table: one row per (pool, K), one column per ``LABEL=FOLDER`` (episode Dice in %, per-image Dice in
    brackets). ``LABEL=FOLDER+FOLDER+...`` averages several evaluations (e.g. the last checkpoints of one run):
    mean ± standard deviation of the episode Dice over the folders."""
    labels, tables = [], []
    for spec in specs:
        label, _, folders = spec.partition("=")
        merged: dict[tuple[str, int], list[dict]] = {}
        for folder in folders.split("+"):
            path = Path(folder) / "metrics.json"
            if not path.is_file():
                raise SystemExit(f"{path}: not found (run the evaluation first)")
            for r in json.loads(path.read_text())["results"]:
                merged.setdefault((r["pool"], int(r["shots"])), []).append(r)
        labels.append(label)
        tables.append(merged)
    keys = list(dict.fromkeys(k for t in tables for k in t))  # the evaluation order
    lines = ["| test pool | K | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for pool, k in keys:
        cells = []
        for t in tables:
            rs = t.get((pool, k))
            if not rs:
                cells.append("–")
            elif len(rs) == 1:
                cells.append(f"{100 * rs[0]['episode_dice']:.2f} ({100 * rs[0]['per_image_dice']:.2f})")
            else:
                d = np.array([100 * r["episode_dice"] for r in rs])
                cells.append(f"{d.mean():.2f} ± {d.std():.2f} (n={len(rs)})")
        lines.append(f"| {pool} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("baselines", help="trivial predictors under the episode protocol")
    b.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    b.add_argument("--out", default="runs/fsms/eval_trivial")
    b.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    b.add_argument("--image_size", type=int, default=112)
    b.add_argument("--n_episodes", type=int, default=200)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--only", nargs="+", default=None, help="run only these baselines (names as in the output)")
    f = sub.add_parser("finetune", help="supervised reference: the shipped model fine-tuned on each task's K shots")
    f.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    f.add_argument("--out", default="runs/fsms/eval_finetune")
    f.add_argument("--weights", default=str(Path(__file__).resolve().parents[1]
                                            / "bundles/fsms_fewshot_skin_segmentation/models/model.pt"))  # fmt: skip
    f.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    f.add_argument("--pools", nargs="+", default=["isic2016_test"])
    f.add_argument("--n_episodes", type=int, default=20)
    f.add_argument("--steps", type=int, default=20)
    f.add_argument("--seed", type=int, default=0)
    pp = sub.add_parser("postproc", help="the shipped model with shape post-processing, chosen on validation")
    pp.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    pp.add_argument("--out", default="runs/fsms/eval_postproc")
    pp.add_argument("--weights", default=str(Path(__file__).resolve().parents[1]
                                             / "bundles/fsms_fewshot_skin_segmentation/models/model.pt"))  # fmt: skip
    pp.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    pp.add_argument("--n_episodes", type=int, default=200)
    pp.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="before | after overlays of two weight files on seeded 1-shot pairs")
    c.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    c.add_argument("--before", required=True)
    c.add_argument("--after", default=str(Path(__file__).resolve().parents[1]
                                          / "bundles/fsms_fewshot_skin_segmentation/models/model.pt"))  # fmt: skip
    c.add_argument("--pool", default="isic_samples_test")
    c.add_argument("--n_pairs", type=int, default=4)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--png", required=True)
    rs = sub.add_parser("reselect", help="checkpoints of training runs chosen on the in-domain ISIC-2016 val pool")
    rs.add_argument("runs", nargs="+", help="run folders with models/checkpoint_iteration=*.pt")
    rs.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    rs.add_argument("--out", required=True)
    rs.add_argument("--n_val_episodes", type=int, default=100)
    rs.add_argument("--support_threshold", action="store_true",
                    help="threshold every task at the threshold fitted on its supports")  # fmt: skip
    th = sub.add_parser("threshold", help="fixed 0.5 vs the support-fitted threshold, on validation then test")
    th.add_argument("weights", nargs="+", help="weight files (plain state dicts or training checkpoints)")
    th.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    th.add_argument("--out", required=True)
    th.add_argument("--n_val_episodes", type=int, default=100)
    th.add_argument("--n_episodes", type=int, default=200)
    th.add_argument("--val_only", action="store_true", help="skip the test pools")
    th.add_argument("--test_variants", nargs="+", default=["plain", "support"], choices=["plain", "support"])
    s = sub.add_parser("summarize", help="markdown table of evaluation folders")
    s.add_argument("specs", nargs="+", help="LABEL=FOLDER[+FOLDER...] (folders with metrics.json)")
    args = parser.parse_args(argv)
    if args.cmd == "compare":
        run_compare(args.data, args.png, args.before, args.after, args.pool, args.n_pairs, seed=args.seed)
    elif args.cmd == "baselines":
        run_baselines(args.data, args.out, tuple(args.shots), args.image_size, args.n_episodes, seed=args.seed,
                      names=tuple(args.only) if args.only else None)
    elif args.cmd == "postproc":
        run_postproc(args.data, args.out, args.weights, tuple(args.shots), n_episodes=args.n_episodes, seed=args.seed)
    elif args.cmd == "finetune":
        run_finetune_reference(args.data, args.out, args.weights, tuple(args.shots), tuple(args.pools),
                               n_episodes=args.n_episodes, steps=args.steps, seed=args.seed)  # fmt: skip
    elif args.cmd == "reselect":
        run_reselect(args.data, args.out, args.runs, n_val_episodes=args.n_val_episodes,
                     support_threshold=args.support_threshold)  # fmt: skip
    elif args.cmd == "threshold":
        run_threshold(args.data, args.out, args.weights, n_val_episodes=args.n_val_episodes,
                      n_episodes=args.n_episodes, test=not args.val_only,
                      test_variants=tuple(args.test_variants))  # fmt: skip
    else:
        print(summarize(args.specs))


if __name__ == "__main__":
    main()
