# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""How much lesion the A and B crops of a ``labelless weak_domains_images`` folder hold, measured with the source
images' masks (a diagnostic: the domain builder never reads a training mask, this script does).

    python benchmarks/cltnet_patch_purity.py runs/cltnet/isic_domains --masks_dir ../shared/data/isic2016/masks

For every ``trainB`` patch of the manifest (corner patches ``tl``/``tr``/``bl``/``br``, or the crops ``r<i>c<j>`` of a
``lesion_crops`` grid), and with ``--folder trainA`` for every A crop of such a grid: the lesion fraction of its
crop in the source image's mask. Prints the number of crops, the mean lesion fraction and how many crops are more
than 5 %, 20 %, 50 % and 95 % lesion. Whole-image A views (no ``lesion_crops``) have no crop and are refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from labelless.data.images import find_image_mask_pairs, load_mask
from labelless.weak.domains import corner_slices, grid_crop_slices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("domains", help="a folder written by labelless weak_domains_images")
    ap.add_argument("--masks_dir", required=True, help="masks of the source images")
    ap.add_argument("--folder", default="trainB", choices=("trainA", "trainB"))
    args = ap.parse_args()
    manifest = json.loads((Path(args.domains) / "manifest.json").read_text())
    opts = manifest["options"]
    side, n_grid = float(opts["side_fraction"]), int(opts.get("lesion_crops") or 0)
    pairs = find_image_mask_pairs(Path(manifest["source"]), args.masks_dir).pairs
    by_id = {Path(p["image"]).stem: Path(p["label"]) for p in pairs}
    cache: dict[str, np.ndarray] = {}
    fractions = []
    for rec in manifest["images"]:
        if rec["folder"] != args.folder:
            continue
        pid, crop = Path(rec["image"]).stem.rsplit("_", 1)
        grid = crop.startswith("r") and "c" in crop
        if grid and not n_grid:
            raise SystemExit(f"{rec['image']}: a grid crop name, but the manifest has no lesion_crops")
        if not grid and crop not in ("tl", "tr", "bl", "br"):
            raise SystemExit(f"{rec['image']}: not a crop (a whole image or a painted-over one); nothing to measure")
        if pid not in by_id:
            raise SystemExit(f"{pid}: no mask in {args.masks_dir}")
        if pid not in cache:
            cache[pid] = load_mask(by_id[pid], size=None)[0].numpy() > 0.5
        shape = cache[pid].shape
        rows, cols = (grid_crop_slices(shape, n_grid, side) if grid else corner_slices(shape, side))[crop]
        fractions.append(float(cache[pid][rows, cols].mean()))
    f = np.asarray(fractions)
    if not f.size:
        raise SystemExit(f"{args.domains}: no {args.folder} crop in the manifest")
    print(
        f"{args.domains} {args.folder}: {len(f)} crops of {len(cache)} images (side {side}, min_mean "
        f"{opts['min_mean']}, max_std {opts['max_std']}); mean lesion fraction {f.mean():.3f}; > 5 %: "
        f"{(f > 0.05).sum()}, > 20 %: {(f > 0.2).sum()}, > 50 %: {(f > 0.5).sum()}, > 95 %: {(f > 0.95).sum()}"
    )


if __name__ == "__main__":
    main()
