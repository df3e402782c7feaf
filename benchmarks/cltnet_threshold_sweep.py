# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""A diagnostic, not a selection: score CLTNet checkpoints with **fixed thresholds** (and the per-image Otsu split) of
two soft readings of the A→B generator, on one or more labelled folders, and print every figure.

Readings:
    ``M``: the mask gate (the spec's segmentation, cltnet.md §6).
    ``diff``: ``mean_c |x − G_AB(x).y| / 2`` in [0, 1], the change the ungated translation makes to each pixel (the
        "difference map" of translation-based anomaly segmentation; **not in the spec**).

``--crf_alphas`` adds the dense CRF of cltnet.md §6 on a per-image **min–max-normalised** M (not in the spec, whose
unary ``M / max M`` is close to 1 everywhere when M hovers around 0.5; needs ``pip install pydensecrf2``).

Scores are the bundle's per-image DI (``labelless.evaluation.metrics.segmentation_scores``), with the bundle's
zeroing (black background; corners with ``--zero_corners``). Images with an empty mask are skipped.

Used to ask whether the **model**, not the selection, is what limits a result: when no checkpoint × threshold
reaches a baseline on a test folder even when the threshold is read off that test folder, no validation-based
selection can reach it. Figures on test folders from this script must never be used to choose a model.

    python benchmarks/cltnet_threshold_sweep.py runs/cltnet/isic_64_spec/keep/checkpoint_iteration=*.pt \
        --folders val=runs/cltnet/isic_domains_m0.6_v0.1/val,test=runs/cltnet/isic_domains_m0.6_v0.1/testA \
        --image_size 64 --n_layers_global 6 --zero_corners --flip_tta [--readings M,diff] [--out sweep.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.data.images import find_image_mask_pairs, load_mask, load_rgb
from labelless.evaluation.metrics import segmentation_scores
from labelless.transforms.postprocess import SoftMaskPostprocess, crf_mask
from labelless.transforms.translation import TranslationInput
from labelless.utils import write_json_atomic
from labelless.weak.domains import WEAK_IMAGE_SUFFIXES
from labelless.weak.workflow import flip_average, patch_input_size, windowed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cltnet_cli import add_model_args, iteration, load_model, sorted_checkpoints  # noqa: E402


@torch.no_grad()
def readings(
    generator: torch.nn.Module, image: torch.Tensor, image_size: int, flip_tta: bool, patch_zoom: float = 1.0
) -> dict[str, np.ndarray]:
    """``{"M", "diff"}`` soft maps of ``image`` (``[3, H, W]`` in [0, 1]) at its own size (flip-averaged with
    ``flip_tta``, and read with sliding windows when ``patch_zoom`` > 1, as
    :func:`labelless.weak.workflow.gate_mask`)."""

    def both(v: torch.Tensor) -> torch.Tensor:
        out = generator(v)
        return torch.cat([out.mask.float(), (v - out.y).abs().mean(1, keepdim=True) / 2.0], dim=1)

    x = TranslationInput(patch_input_size(image_size, patch_zoom))(image)[None]
    fn = windowed(both, image_size, tuple(x.shape[-2:]))  # one window when patch_zoom is 1
    maps = flip_average(fn, x) if flip_tta else fn(x)
    maps = F.interpolate(maps, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)
    return {"M": maps[0].numpy(), "diff": maps[1].numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--folders", required=True, help="name=folder[,name=folder...], each with images/ and labels/")
    ap.add_argument("--readings", default="M,diff")
    ap.add_argument("--thresholds", default="0.02,0.05,0.1,0.2,0.3,0.4,0.45,0.5,0.55,0.6,0.7,0.8")
    ap.add_argument("--crf_alphas", default="", help="e.g. 0.5,1,2,4 (min-max-normalised M; needs pydensecrf2)")
    ap.add_argument("--flip_tta", action="store_true")
    add_model_args(ap)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    alphas = [float(a) for a in args.crf_alphas.split(",") if a]
    names = [r for r in args.readings.split(",") if r]
    if set(names) - {"M", "diff"}:
        ap.error(f"--readings: M and/or diff, got {args.readings!r}")
    folders = {}
    for item in args.folders.split(","):
        name, _, folder = item.partition("=")
        pairs = find_image_mask_pairs(Path(folder) / "images", Path(folder) / "labels",
                                      image_suffixes=WEAK_IMAGE_SUFFIXES).pairs  # fmt: skip
        data = [(load_rgb(p["image"], size=None), load_mask(p["label"], size=None)[0].numpy() > 0.5) for p in pairs]
        folders[name] = [(img, t) for img, t in data if t.any()]
    post = SoftMaskPostprocess("otsu", zero_corners=args.zero_corners)
    rows = []
    for ckpt in sorted_checkpoints(args.ckpts):
        gen = load_model(args, ckpt).gen_ab.eval()
        for name, data in folders.items():
            scores: dict[str, list[float]] = {}
            for image, truth in data:
                soft_maps = readings(gen, image, args.image_size, args.flip_tta, args.patch_zoom)
                zeroed = {}
                for reading in names:
                    soft, otsu = zeroed[reading] = post(soft_maps[reading], image * 2.0 - 1.0)
                    scores.setdefault(f"{reading} otsu", []).append(segmentation_scores(otsu, truth)["di"])
                    for t in thresholds:
                        dice = segmentation_scores((soft >= t) & (soft > 0), truth)["di"]
                        scores.setdefault(f"{reading} >={t:g}", []).append(dice)
                if alphas:
                    soft = (zeroed.get("M") or post(soft_maps["M"], image * 2.0 - 1.0))[0]
                    keep = soft > 0
                    lo, hi = float(soft[keep].min()), float(soft[keep].max())
                    unary = np.where(keep, (soft - lo) / max(hi - lo, 1e-6), 0.0).clip(0.0, 1.0)
                    rgb = (image.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
                    for a in alphas:
                        dice = segmentation_scores(crf_mask(unary, rgb, a) & keep, truth)["di"]
                        scores.setdefault(f"M crf_minmax a={a:g}", []).append(dice)
            means = {k: 100.0 * float(np.mean(v)) for k, v in scores.items()}
            rows.append({"ckpt": str(ckpt), "iteration": iteration(ckpt), "folder": name, "n_images": len(data),
                         "mean_dice": means})  # fmt: skip
            best = max(means, key=means.get)
            print(f"{ckpt}  {name}[{len(data)}]  best {best}: {means[best]:.2f}  |  "
                  + "  ".join(f"{k} {v:.1f}" for k, v in means.items()), flush=True)  # fmt: skip
    for name in folders:
        top = max((r for r in rows if r["folder"] == name), key=lambda r: max(r["mean_dice"].values()))
        key = max(top["mean_dice"], key=top["mean_dice"].get)
        print(json.dumps({"folder": name, "highest": {"ckpt": top["ckpt"], "reading": key,
                                                      "mean_dice": top["mean_dice"][key]}}))  # fmt: skip
    if args.out:
        write_json_atomic(Path(args.out), {"flip_tta": args.flip_tta, "zero_corners": args.zero_corners,
                                           "image_size": args.image_size, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
