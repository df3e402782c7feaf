# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Trivial and simple baselines of the SABR-Net results table, on the same test images and grid as the bundle.

- ``all_foreground``: every pixel is foreground;
- ``otsu``: Otsu threshold of the grey image (smoothed, σ 2 px), the largest connected component with holes filled;
  ``--dark`` segments the dark side (thyroid nodules are mostly hypoechoic);
- ``mean_mask``: the pixel-wise mean of the labelled training masks (20 % or 50 % split), thresholded at 0.5 — a
  "copy the typical label" baseline that uses exactly the labels the learned models get.

Scores: :func:`labelless.semisup.protocol.image_scores` on the network grid (``--image_size``, 128 as the CPU
profile), HC18 head circumference from the same ellipse fit.

    python benchmarks/sabrnet_baselines.py ../shared/data/hc18 --ratio 0.2 --out runs/sabrnet/baselines_hc18.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu

from labelless.semisup.data import SemiSupDataset, build_split
from labelless.semisup.hc import head_circumference_mm
from labelless.semisup.protocol import image_scores


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))


def otsu_mask(grey: np.ndarray, dark: bool = False) -> np.ndarray:
    g = ndimage.gaussian_filter(grey.astype(np.float64), 2.0)
    t = threshold_otsu(g)
    return _largest_filled(g < t if dark else g > t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--dark", action="store_true", help="Otsu segments the dark side (DDTI nodules)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    split = build_split(args.dataset_dir, labeled_ratio=args.ratio, seed=args.seed)
    labelled = SemiSupDataset(split.labeled, image_size=args.image_size)
    mean = np.mean([np.asarray(labelled[i]["label"]).reshape(args.image_size, args.image_size) > 0
                    for i in range(len(labelled))], axis=0)  # fmt: skip
    prior = mean >= 0.5
    test = SemiSupDataset(split.test, image_size=args.image_size)
    rows: dict[str, list[dict]] = {"all_foreground": [], "otsu": [], "mean_mask": []}
    for i in range(len(test)):
        it = test[i]
        truth = np.asarray(it["label"]).reshape(args.image_size, args.image_size) > 0
        grey = np.asarray(torch.as_tensor(it["image"])[0])
        preds = {"all_foreground": np.ones_like(truth), "otsu": otsu_mask(grey, args.dark), "mean_mask": prior}
        spacing = it.get("pixel_size")
        spacing = None if spacing is None or not math.isfinite(float(spacing)) else float(spacing)
        hc_ref = it.get("hc_mm")
        for k, p in preds.items():
            s = image_scores(p, truth)
            if spacing is not None and hc_ref is not None and math.isfinite(float(hc_ref)):
                hc = head_circumference_mm(p, spacing, original_size=tuple(int(v) for v in it["original_size"]))
                s["hc_abs_diff_mm"] = abs(float(hc) - float(hc_ref)) if hc is not None else math.nan
            rows[k].append(s)
    summary = {"dataset": str(args.dataset_dir), "ratio": args.ratio, "seed": args.seed, "n_test": len(test),
               "n_labelled_for_mean_mask": len(labelled), "image_size": args.image_size}  # fmt: skip
    for k, rs in rows.items():
        summary[k] = {m: float(np.nanmean([r.get(m, math.nan) for r in rs])) for m in
                      ("dice", "iou", "hd95_px", "asd_px", "hc_abs_diff_mm") if any(m in r for r in rs)}  # fmt: skip
        print(f"{k:15s} " + "  ".join(f"{m} {v:.4f}" for m, v in summary[k].items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
