# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Score CLTNet checkpoints on a labelled validation folder with both readings of the mask gate (M, and 1 - M: the
bundle's ``invert_mask``), with and without the flip averaging (``flip_tta``), and name the best (checkpoint,
post-processing, reading, flip_tta) by validation JA (cltnet.md §8: the validation
split only). The same scoring as the bundle's evaluation (``labelless.weak.workflow.evaluate_images``).

    python benchmarks/cltnet_val_select.py runs/cltnet/isic_mn1/models/checkpoint_iteration=*.pt \
        --val_dir ../shared/data/weak_samples/ISIC/isic_1/val --zero_corners [--postprocess otsu] [--out sel.json]

``--postprocess`` takes a comma-separated list, ``crf:<alpha>`` for the CRF with that α (e.g.
``otsu,watershed,crf:1,crf:2,crf:4,crf:8``: the spec's α chosen on validation). Prints one line per checkpoint,
post-processing and reading, then the selection as JSON (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

from labelless.data.images import find_image_mask_pairs
from labelless.networks.cltnet import build_cltnet
from labelless.transforms.postprocess import SoftMaskPostprocess
from labelless.utils import write_json_atomic
from labelless.weak.domains import WEAK_IMAGE_SUFFIXES
from labelless.weak.workflow import evaluate_images, load_weak_weights


def _iteration(path: Path) -> int:
    m = re.search(r"iteration=(\d+)", path.name)
    return int(m.group(1)) if m else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--val_dir", required=True, help="a folder with images/ and labels/")
    ap.add_argument("--postprocess", default="otsu")
    ap.add_argument("--zero_corners", action="store_true")
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--ndf", type=int, default=16)
    ap.add_argument("--n_layers_global", type=int, default=7, help="6 for a 64-px profile (train.json's option)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    val = Path(args.val_dir)
    pairs = find_image_mask_pairs(val / "images", val / "labels", image_suffixes=WEAK_IMAGE_SUFFIXES).pairs
    rows = []
    posts = [(m.split(":")[0], float(m.split(":")[1]) if ":" in m else 1.0) for m in args.postprocess.split(",")]
    for ckpt in sorted((Path(c) for c in args.ckpts), key=lambda p: (str(p.parent), _iteration(p))):
        net = build_cltnet(ngf=args.ngf, ndf=args.ndf, n_layers_global=args.n_layers_global)
        load_weak_weights(net, ckpt)
        for (mode, alpha), tta in itertools.product(posts, (False, True)):
            post = SoftMaskPostprocess(mode, zero_corners=args.zero_corners, crf_alpha=alpha)
            res, _ = evaluate_images(net, pairs, args.image_size, post, n_overlays=0, complement=True, flip_tta=tta)
            for invert, di, ja in ((False, res["mean_dice"], res["mean_ja"]),
                                   (True, res["complement_mean_dice"], res["complement_mean_ja"])):  # fmt: skip
                rows.append({"ckpt": str(ckpt), "iteration": _iteration(ckpt), "postprocess": mode,
                             "crf_alpha": alpha, "invert_mask": invert, "flip_tta": tta, "val_mean_dice": di,
                             "val_mean_ja": ja})  # fmt: skip
                print(
                    f"{ckpt}  {mode}{f'(α={alpha:g})' if mode == 'crf' else ''}  flip_tta={str(tta).lower():5s}  "
                    f"invert_mask={str(invert).lower():5s}  val DI {100 * di:6.2f}  JA {100 * ja:6.2f}"
                )
    best = max(rows, key=lambda r: r["val_mean_ja"])
    out = {"selected": best, "zero_corners": args.zero_corners,
           "val_dir": str(val), "n_val_images": res["n_images"], "rows": rows}  # fmt: skip
    print(json.dumps(best))
    if args.out:
        write_json_atomic(Path(args.out), out)


if __name__ == "__main__":
    main()
