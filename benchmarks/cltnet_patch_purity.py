# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""How much lesion the lesion-free B patches of a ``labelless weak_domains_images`` folder hold, measured with the
source images' masks (a diagnostic: the domain builder never reads a training mask, this script does).

    python benchmarks/cltnet_patch_purity.py runs/cltnet/isic_domains --masks_dir ../shared/data/isic2016/masks

For every ``trainB`` patch of the manifest: the lesion fraction of its corner crop in the source image's mask. Prints
the number of patches, the mean lesion fraction and how many patches are more than 5 %, 20 % and 50 % lesion.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from labelless.data.images import find_image_mask_pairs, load_mask
from labelless.weak.domains import corner_slices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("domains", help="a folder written by labelless weak_domains_images")
    ap.add_argument("--masks_dir", required=True, help="masks of the source images")
    args = ap.parse_args()
    manifest = json.loads((Path(args.domains) / "manifest.json").read_text())
    side = float(manifest["options"]["side_fraction"])
    sources = {Path(r["source"]).resolve() for r in manifest["images"] if r["folder"] == "trainB"}
    pairs = find_image_mask_pairs(Path(manifest["source"]), args.masks_dir).pairs
    masks = {Path(p["image"]).resolve(): Path(p["label"]) for p in pairs if Path(p["image"]).resolve() in sources}
    cache: dict[Path, np.ndarray] = {}
    fractions = []
    for rec in manifest["images"]:
        if rec["folder"] != "trainB":
            continue
        src = Path(rec["source"]).resolve()
        if src not in masks:
            raise SystemExit(f"{src}: no mask in {args.masks_dir}")
        if src not in cache:
            cache[src] = load_mask(masks[src], size=None)[0].numpy() > 0.5
        rows, cols = corner_slices(cache[src].shape, side)[Path(rec["image"]).stem.rsplit("_", 1)[-1]]
        fractions.append(float(cache[src][rows, cols].mean()))
    f = np.asarray(fractions)
    print(f"{args.domains}: {len(f)} B patches of {len(cache)} images (min_mean {manifest['options']['min_mean']}, "
          f"max_std {manifest['options']['max_std']}); mean lesion fraction {f.mean():.3f}; "
          f"> 5 %: {(f > 0.05).sum()}, > 20 %: {(f > 0.2).sum()}, > 50 %: {(f > 0.5).sum()}")  # fmt: skip


if __name__ == "__main__":
    main()
