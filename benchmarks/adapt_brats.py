# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Dice of a few-shot volume model on the BraTS FLAIR volumes before and after label-free adaptation (docs/results.md,
"Label-free adaptation").

Class = whole tumour (``OTMultiClass > 0``); support = one case (its whole-tumour mask, written once to
``<out>/support``); queries = the other cases' FLAIR volumes. Every model goes through the bundle's inference path
(``inference.json``: GT-free, no ground truth used) and the predictions are scored with the 3D Dice of each whole
query volume. Baselines on the same queries: the support mask copied onto each query (the cases are registered to one
atlas), the whole brain mask, and the training-free intensity-prototype predictor through the same GT-free runner.

Usage::

    python benchmarks/adapt_brats.py model --ckpt bundles/ssl_alpnet_fewshot_segmentation/models/model.pt --name before
    python benchmarks/adapt_brats.py baselines
    python benchmarks/adapt_brats.py overlay --before runs/adapt/eval/before --after runs/adapt/eval/after_60min \
        --png docs/images/adapt_brats_before_after.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LABELLESS_DATA", ROOT.parent / "shared" / "data")) / "brats2015"
CASES = ["brats_2013_pat0001_1", "brats_2013_pat0002_1", "brats_2013_pat0003_1", "brats_2013_pat0004_1"]
FLAIR = "Flair_subtrMeanDivStd.nii.gz"


def _read(path: Path) -> np.ndarray:
    from labelless.io.readers import read_volume

    return read_volume(path, is_label=True).array


def support_label(out: Path, support: str) -> Path:
    """Whole-tumour mask of the support case (uint8, the FLAIR grid)."""
    from labelless.io.readers import read_volume
    from labelless.io.writers import write_volume

    path = out / "support" / f"{support}_wt.nii.gz"
    if not path.is_file():
        ref = read_volume(DATA / support / FLAIR)
        wt = (_read(DATA / support / "OTMultiClass.nii.gz") > 0).astype(np.uint8)
        write_volume(wt, path, reference=ref, dtype=np.uint8)
    return path


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred > 0, gt > 0
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


def score(pred_dir: Path, queries: list[str]) -> dict[str, float]:
    out = {}
    for case in queries:
        pred = next(pred_dir.glob(f"{case}_pred.nii*"))
        out[case] = dice(_read(pred), _read(DATA / case / "OTMultiClass.nii.gz"))
    return out


def query_files(out: Path, queries: list[str]) -> list[str]:
    """Query FLAIR volumes under distinct names (links in ``<out>/queries``: the runner names outputs by file)."""
    folder = out / "queries"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for case in queries:
        link = folder / f"{case}.nii.gz"
        if not link.exists():
            link.symlink_to(DATA / case / FLAIR)
        files.append(str(link))
    return files


def _settings(args: argparse.Namespace) -> dict[str, str]:
    """``--set key=value`` options: inference settings (e.g. ``cleanup=none``) for the model and the baseline runner."""
    pairs = [kv.split("=", 1) for kv in args.set or []]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--set takes key=value, got {args.set}")
    return dict(pairs)  # type: ignore[arg-type]


def run_model(args: argparse.Namespace) -> dict:
    queries = [c for c in CASES if c != args.support]
    out = Path(args.out)
    bundle = ROOT / "bundles" / args.bundle
    pred_dir = out / args.name
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
        "--bundle_root", str(bundle), "--ckpt_path", str(args.ckpt), "--output_dir", str(pred_dir),
        "--support_image", str(DATA / args.support / FLAIR), "--support_label", str(support_label(out, args.support)),
        "--label_value", "1", "--queries", json.dumps(query_files(out, queries)),
    ]  # fmt: skip
    for key, value in _settings(args).items():
        cmd += [f"--{key}", value]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    per = score(pred_dir, queries)
    res = {"name": args.name, "ckpt": str(args.ckpt), "dice": per, "mean_dice": float(np.mean(list(per.values()))),
           "seconds": round(time.time() - t0, 1)}  # fmt: skip
    print(json.dumps(res))
    return res


def run_baselines(args: argparse.Namespace) -> dict:
    import torch

    from labelless.fewshot.volume.baseline import IntensityPrototypePredictor
    from labelless.fewshot.volume.inference import FewShotVolumeInferenceRunner

    queries = [c for c in CASES if c != args.support]
    out = Path(args.out)
    sup = _read(support_label(out, args.support))
    res: dict[str, dict] = {"copy_support": {}, "brain_mask": {}}
    for case in queries:
        gt = _read(DATA / case / "OTMultiClass.nii.gz")
        res["copy_support"][case] = dice(sup, gt)
        res["brain_mask"][case] = dice(_read(DATA / case / "brainmask.nii.gz"), gt)

    class _Wrapped(torch.nn.Module):
        """The training-free predictor as a module (the runner calls ``eval()``)."""

        def __init__(self) -> None:
            super().__init__()
            self.predictor = IntensityPrototypePredictor()

        def forward(self, support_images, support_masks, query_images):  # noqa: ANN001, ANN201
            return self.predictor(support_images, support_masks, query_images)

    pred_dir = out / ("training_free" + "".join(f"_{k}-{v}" for k, v in _settings(args).items()))
    runner = FewShotVolumeInferenceRunner(
        network=_Wrapped(), support_image=DATA / args.support / FLAIR, support_label=support_label(out, args.support),
        label_value=1, queries=query_files(out, queries), output_dir=pred_dir, n_overlays=0,
        **{k: json.loads(v) if v[:1] in "[{0123456789-" or v in ("true", "false", "null") else v
           for k, v in _settings(args).items()},
    )  # fmt: skip
    runner.run()
    res["training_free"] = score(pred_dir, queries)
    summary = {k: {"dice": v, "mean_dice": float(np.mean(list(v.values())))} for k, v in res.items()}
    print(json.dumps(summary))
    return summary


def _rgb_slice(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.stack([grey] * 3, -1)
    p = pred > 0
    rgb[p] = 0.5 * rgb[p] + 0.5 * np.array([1.0, 0.1, 0.1])
    g = gt > 0
    edge = g & ~(np.roll(g, 1, 0) & np.roll(g, -1, 0) & np.roll(g, 1, 1) & np.roll(g, -1, 1))
    rgb[edge] = [0.1, 1.0, 0.1]
    return (rgb * 255).astype(np.uint8)


def overlay(args: argparse.Namespace) -> None:
    """Before | after on the slice of largest tumour area of each query (green: ground-truth outline, red: model)."""
    from PIL import Image

    queries = [c for c in CASES if c != args.support]
    rows = []
    for case in queries:
        img = _read(DATA / case / FLAIR)
        gt = _read(DATA / case / "OTMultiClass.nii.gz") > 0
        z = int(np.argmax(gt.reshape(gt.shape[0], -1).sum(1)))
        tiles = [_rgb_slice(img[z], gt[z], _read(next(Path(d).glob(f"{case}_pred.nii*")))[z])
                 for d in (args.before, args.after)]  # fmt: skip
        rows.append(np.concatenate([tiles[0], np.full((gt.shape[1], 4, 3), 255, np.uint8), tiles[1]], axis=1))
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, 0), (0, 0)), constant_values=255) for r in rows], axis=0)
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.flipud(sheet) if args.flip else sheet).save(args.png)
    print(f"written {args.png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["model", "baselines", "overlay"])
    parser.add_argument("--ckpt", default=str(ROOT / "bundles/ssl_alpnet_fewshot_segmentation/models/model.pt"))
    parser.add_argument("--bundle", default="ssl_alpnet_fewshot_segmentation")
    parser.add_argument("--name", default="before")
    parser.add_argument("--support", default=CASES[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "adapt" / "eval"))
    parser.add_argument("--before", default=None)
    parser.add_argument("--after", default=None)
    parser.add_argument("--png", default=str(ROOT / "docs" / "images" / "adapt_brats_before_after.png"))
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--set", action="append", help="inference setting key=value (repeatable), e.g. cleanup=none")
    args = parser.parse_args()
    {"model": run_model, "baselines": run_baselines, "overlay": overlay}[args.what](args)


if __name__ == "__main__":
    main()
