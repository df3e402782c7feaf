# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""What the CLTNet mask gate M looks like on labelled lesion images: mean M inside the lesion, in the rest of the
non-black (brain) area, the Dice of M > 0.5 and of a per-image Otsu threshold of M (inside the brain), and the Dice /
Jaccard of the other side of that threshold (1 - M, the bundle's ``invert_mask``). A diagnostic of saturation or
inversion of M during training (docs/results.md, CLTNet); with ``--domain`` it also prints the mean M over unlabelled
folders (e.g. normal=trainB, lesion=trainA).

    python benchmarks/cltnet_mask_stats.py runs/cltnet/maskid/models/checkpoint_iteration=500.pt \
        --folder ../shared/data/weak_samples/BraTS/brats_1/val [--image_size 128 --ngf 16 --ndf 16]

Prints one JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from skimage.filters import threshold_otsu

from labelless.data.images import find_image_mask_pairs, load_mask, load_rgb
from labelless.evaluation.metrics import segmentation_scores
from labelless.networks.cltnet import build_cltnet
from labelless.transforms.postprocess import zero_corners
from labelless.transforms.translation import TranslationInput
from labelless.weak.domains import WEAK_IMAGE_SUFFIXES
from labelless.weak.workflow import load_weak_weights


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return segmentation_scores(pred, gt)["di"]


@torch.no_grad()
def stats(
    ckpt: Path, folder: Path, image_size: int, ngf: int, ndf: int, corners: bool = False, domains: dict | None = None
) -> dict:
    net = build_cltnet(ngf=ngf, ndf=ndf)
    load_weak_weights(net.gen_ab, ckpt)  # A→B generator of a full checkpoint (any D depth) or model.pt
    net.eval()
    pairs = find_image_mask_pairs(folder / "images", folder / "labels", image_suffixes=WEAK_IMAGE_SUFFIXES).pairs
    rows = []
    for p in pairs:
        img = load_rgb(p["image"], size=image_size)
        gt = load_mask(p["label"], size=image_size)[0].numpy() > 0.5
        if not gt.any():
            continue
        body = ~np.all(img.numpy() <= 1e-6, axis=0)
        m = net.gen_ab(TranslationInput(image_size)(img)[None]).mask[0, 0].numpy()
        inside, outside = m[gt], m[body & ~gt]
        if corners:
            body &= zero_corners(np.ones(m.shape)) > 0
        t = threshold_otsu(m[body]) if np.ptp(m[body]) > 1e-6 else 0.5
        rows.append({"in": float(inside.mean()), "out": float(outside.mean()) if outside.size else float("nan"),
                     "dice_05": dice((m > 0.5) & body, gt), "dice_otsu": dice((m > t) & body, gt),
                     **{f"{k}_otsu_inverted": v for k, v in segmentation_scores((m <= t) & body, gt).items()
                        if k in ("di", "ja")}})  # fmt: skip
    mean = {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in rows[0]}  # "out": NaN if all lesion
    out = {"ckpt": str(ckpt), "n_images": len(rows), **mean}
    for name, domain in (domains or {}).items():  # mean M on unlabelled domain images (image-level labels only)
        files = sorted(f for f in Path(domain).iterdir() if f.suffix.lower() in WEAK_IMAGE_SUFFIXES)
        out[f"mean_m_{name}"] = round(float(np.mean([
            net.gen_ab(TranslationInput(image_size)(load_rgb(f, size=image_size))[None]).mask.mean() for f in files
        ])), 4)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument(
        "--folder", default=str(Path(__file__).resolve().parents[2] / "shared/data/weak_samples/BraTS/brats_1/val")
    )
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--ndf", type=int, default=16)
    parser.add_argument("--zero_corners", action="store_true", help="drop the corner triangles (dermoscopy)")
    parser.add_argument(
        "--domain",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="also print the mean M over the images of an unlabelled folder (e.g. normal=.../trainB)",
    )
    args = parser.parse_args()
    domains = dict(d.split("=", 1) for d in args.domain)
    for c in args.ckpts:
        print(json.dumps(stats(Path(c), Path(args.folder), args.image_size, args.ngf, args.ndf, args.zero_corners,
                               domains)))  # fmt: skip


if __name__ == "__main__":
    main()
