# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Score CLTNet checkpoints on a labelled validation folder with both readings of the mask gate (M, and 1 - M: the
bundle's ``invert_mask``), with and without the flip averaging (``flip_tta``), and name the best (checkpoint,
post-processing, reading, flip_tta) by validation JA (cltnet.md §8: the validation
split only). The same scoring as the bundle's evaluation (``labelless.weak.workflow.evaluate_images``).

    python benchmarks/cltnet_val_select.py runs/cltnet/isic_mn1/models/checkpoint_iteration=*.pt \
        --val_dir ../shared/data/weak_samples/ISIC/isic_1/val --zero_corners [--postprocess otsu] [--out sel.json]

``--ensemble`` scores all the checkpoints given as one model (the mean of their gates,
``labelless.weak.workflow.load_weak_ensemble``; e.g. the averaged models of several seeds).

``--postprocess`` takes a comma-separated list, ``crf:<alpha>`` for the CRF with that α (e.g.
``otsu,watershed,crf:1,crf:2,crf:4,crf:8``: the spec's α chosen on validation). Prints one line per checkpoint,
post-processing and reading, then the selection as JSON (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from labelless.data.images import find_image_mask_pairs
from labelless.transforms.postprocess import SoftMaskPostprocess
from labelless.utils import write_json_atomic
from labelless.weak.domains import WEAK_IMAGE_SUFFIXES
from labelless.weak.workflow import evaluate_images, load_weak_ensemble

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cltnet_cli import add_model_args, iteration, load_model, sorted_checkpoints  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--val_dir", required=True, help="a folder with images/ and labels/")
    ap.add_argument("--postprocess", default="otsu")
    ap.add_argument(
        "--intensity_priors",
        default="none",
        help="comma-separated SoftMaskPostprocess intensity_prior values to scan (none, dark, bright)",
    )
    add_model_args(ap)
    ens = "score the checkpoints as one ensemble (the mean of their gates; e.g. the models of several seeds)"
    ap.add_argument("--ensemble", action="store_true", help=ens)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    val = Path(args.val_dir)
    pairs = find_image_mask_pairs(val / "images", val / "labels", image_suffixes=WEAK_IMAGE_SUFFIXES).pairs
    rows = []
    posts = [(m.split(":")[0], float(m.split(":")[1]) if ":" in m else 1.0) for m in args.postprocess.split(",")]
    if args.ensemble:  # one model: the mean gate of all the checkpoints given
        net0 = load_model(args, args.ckpts[0])
        models = [("+".join(args.ckpts), lambda: load_weak_ensemble(net0, args.ckpts))]
    else:
        models = [(ckpt, lambda c=ckpt: load_model(args, c)) for ckpt in sorted_checkpoints(args.ckpts)]
    for ckpt, build in models:
        net = build()
        it = -1 if args.ensemble else iteration(Path(ckpt))
        caches: dict[bool, dict] = {False: {}, True: {}}  # the soft masks, computed once per checkpoint and flip_tta
        for (mode, alpha), prior, tta in itertools.product(posts, args.intensity_priors.split(","), (False, True)):
            post = SoftMaskPostprocess(mode, zero_corners=args.zero_corners, crf_alpha=alpha, intensity_prior=prior)
            res, _ = evaluate_images(net, pairs, args.image_size, post, n_overlays=0, complement=True, flip_tta=tta,
                                     patch_zoom=args.patch_zoom, soft_cache=caches[tta],
                                     color_constancy=args.color_constancy)  # fmt: skip
            for invert, di, ja in ((False, res["mean_dice"], res["mean_ja"]),
                                   (True, res["complement_mean_dice"], res["complement_mean_ja"])):  # fmt: skip
                rows.append({"ckpt": str(ckpt), "iteration": it, "postprocess": mode,
                             "crf_alpha": alpha, "intensity_prior": prior, "invert_mask": invert, "flip_tta": tta,
                             "val_mean_dice": di, "val_mean_ja": ja})  # fmt: skip
                print(
                    f"{ckpt}  {mode}{f'(α={alpha:g})' if mode == 'crf' else ''}  prior={prior}  "
                    f"flip_tta={str(tta).lower():5s}  invert_mask={str(invert).lower():5s}  "
                    f"val DI {100 * di:6.2f}  JA {100 * ja:6.2f}"
                )
    best = max(rows, key=lambda r: r["val_mean_ja"])
    out = {"selected": best, "zero_corners": args.zero_corners,
           "val_dir": str(val), "n_val_images": res["n_images"], "rows": rows}  # fmt: skip
    print(json.dumps(best))
    if args.out:
        write_json_atomic(Path(args.out), out)


if __name__ == "__main__":
    main()
