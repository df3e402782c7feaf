# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Baselines of the weakly supervised lesion segmentation (CLTNet) on the same test images, and the table.

    python benchmarks/cltnet_baselines.py trivial --dataset_dir runs/cltnet/brats_domains --out runs/cltnet/base_brats
    python benchmarks/cltnet_baselines.py cam --dataset_dir runs/cltnet/brats_domains --out runs/cltnet/cam_brats
    python benchmarks/cltnet_baselines.py summarize "name=folder" ...

- ``trivial``: "all foreground" (every non-black pixel is lesion) and an **Otsu intensity baseline** (Otsu threshold
  of the grey image over its non-black pixels; lesion = brighter, or darker with ``--dark`` for dermoscopy), both with
  the bundle's post-processing defaults (background zeroing; ``--zero_corners`` also drops the corner triangles, as
  the bundle's ``zero_corners`` option does); no training.
- ``cam``: a small CNN classifier trained on the same image-level labels (trainA = 1, trainB = 0, seeded, CPU),
  then Grad-CAM (``monai.visualize.GradCAM``) of the lesion class, min-max normalised and thresholded at 0.5
  (``gradcam``) or at its per-image Otsu threshold over the non-black pixels (``gradcam_otsu``, the post-processing
  of CLTNet's default ``otsu`` mode).

- ``crf``: an **intensity + dense-CRF baseline**: the grey image's darkness (``--dark``) or brightness, min-max
  normalised over the non-black pixels, as the soft mask of the spec's CRF (cltnet.md §6, the same ``crf_mask`` as
  CLTNet's ``crf`` post-processing), with α chosen among ``--alphas`` by mean JA on the ``--select`` split (an
  ``--extra`` name: a validation folder, never the test images). Needs the optional ``pydensecrf``.
  ``--gate centre|blur``: the controls of CLTNet's ``intensity_prior`` fusion (``sqrt(M · darkness)``), with a gate
  that needs no learning in place of M: a Gaussian bump at the image centre, or the darkness blurred; its σ
  (``--gate_scales``, fractions of the shorter side) is chosen with α on the ``--select`` split.
  ``--color_constancy p``: the darkness is read from the image after shades-of-grey colour constancy (the
  pre-processing of a CLTNet trained with ``color_constancy p``); the CRF still reads the original colours.

Each writes ``<out>/<method>/<split>/metrics.json`` (per-image DI / JA / AC / SE / SP, the bundle's report format)
for the ``test`` split of the dataset and for any ``--extra name=folder`` labelled folders (``images/`` +
``labels/``, e.g. the CLTNet BraTS sample test folder).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.filters import threshold_otsu
from torch import nn

from labelless.data.images import find_image_mask_pairs, load_mask, load_rgb
from labelless.evaluation.metrics import segmentation_scores
from labelless.evaluation.reports import write_image_reports
from labelless.transforms.postprocess import intensity_prior, zero_corners
from labelless.weak.data import UnpairedDomainDataset
from labelless.weak.domains import WEAK_IMAGE_SUFFIXES, WeakDomainFolders


def _splits(dataset_dir: str, extra: list[str]) -> dict[str, list[dict]]:
    folders = WeakDomainFolders(dataset_dir, require_train=False)
    out = {"test": folders.test}
    for item in extra:
        name, folder = item.split("=", 1)
        out[name] = find_image_mask_pairs(Path(folder) / "images", Path(folder) / "labels",
                                          image_suffixes=WEAK_IMAGE_SUFFIXES).pairs  # fmt: skip
    return out


def _score(pairs: list[dict], predict) -> dict:
    per_image = []
    for p in pairs:
        image = load_rgb(p["image"], size=None)
        truth = load_mask(p["label"], size=None)[0].numpy() > 0.5
        if not truth.any():
            continue
        pred = predict(image)
        per_image.append({"name": p["name"], **segmentation_scores(pred, truth)})
    res = {f"mean_{k}": float(np.mean([r[m] for r in per_image])) if per_image else math.nan
           for k, m in (("dice", "di"), ("ja", "ja"), ("ac", "ac"), ("se", "se"), ("sp", "sp"))}  # fmt: skip
    res.update({"n_images": len(per_image), "per_image": per_image})
    return res


def _grey(image: torch.Tensor) -> np.ndarray:
    return (image * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0).numpy()


def _body(image: torch.Tensor, corners: bool = False) -> np.ndarray:
    """The non-black pixels; with ``corners``, also outside the corner triangles (``zero_corners``, dermoscopy)."""
    body = ~np.all(image.numpy() <= 1e-6, axis=0)
    return body & (zero_corners(np.ones(body.shape)) > 0) if corners else body


def predict_all(image: torch.Tensor, corners: bool = False) -> np.ndarray:
    return _body(image, corners)


def predict_otsu(image: torch.Tensor, dark: bool = False, corners: bool = False) -> np.ndarray:
    grey, body = _grey(image), _body(image, corners)
    if body.sum() < 2 or grey[body].max() == grey[body].min():
        return np.zeros(grey.shape, bool)
    t = threshold_otsu(grey[body])
    return body & ((grey < t) if dark else (grey > t))


class SmallClassifier(nn.Module):
    """A 4-block CNN (32-64-128-128) with global pooling: lesion vs normal from the image-level labels."""

    def __init__(self) -> None:
        super().__init__()
        layers, ch = [], 3
        for i, out in enumerate((32, 64, 128, 128)):
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(folders: WeakDomainFolders, image_size: int, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    ds = UnpairedDomainDataset(folders.train_a, folders.train_b, image_size=image_size, seed=seed, length=steps)
    model = SmallClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for i in range(steps):
        item = ds[i]
        x = torch.stack([item["image_a"], item["image_b"]])
        y = torch.tensor([1, 0])
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if (i + 1) % 100 == 0:
            print(f"classifier step {i + 1}/{steps}: loss {float(loss):.4f}", file=sys.stderr)
    return model.eval()


def cmd_trivial(args: argparse.Namespace) -> None:
    for split, pairs in _splits(args.dataset_dir, args.extra).items():
        fns = (("all_foreground", lambda im: predict_all(im, args.zero_corners)),
               ("otsu", lambda im: predict_otsu(im, args.dark, args.zero_corners)))  # fmt: skip
        for name, fn in fns:
            res = _score(pairs, fn)
            res.update({"method": name, "split": split, "dataset": args.dataset_dir, "zero_corners": args.zero_corners})
            write_image_reports(res, Path(args.out) / name / split, title=f"{name} baseline, {split}")
            print(f"{name:15s} {split:12s} DI {100 * res['mean_dice']:.2f} JA {100 * res['mean_ja']:.2f} "
                  f"(n={res['n_images']})")  # fmt: skip


def cmd_cam(args: argparse.Namespace) -> None:
    from monai.visualize import GradCAM

    folders = WeakDomainFolders(args.dataset_dir)
    model = train_classifier(folders, args.image_size, args.steps, args.seed)
    cam = GradCAM(nn_module=model, target_layers="features.14")
    from labelless.transforms.translation import TranslationInput

    prep = TranslationInput(args.image_size)

    def heatmap(image: torch.Tensor) -> np.ndarray:
        x = prep(image)[None]
        m = cam(x, class_idx=1)[0, 0].detach()
        m = torch.nn.functional.interpolate(m[None, None], size=tuple(image.shape[-2:]), mode="bilinear")[0, 0]
        m = m.numpy()
        return (m - m.min()) / (m.max() - m.min() + 1e-8)

    def predict(image: torch.Tensor) -> np.ndarray:
        return (heatmap(image) >= 0.5) & _body(image, args.zero_corners)

    def predict_otsu_cam(image: torch.Tensor) -> np.ndarray:
        """The same per-image Otsu threshold over the non-black pixels as CLTNet's ``otsu`` post-processing."""
        from labelless.transforms.postprocess import otsu_mask

        return otsu_mask(heatmap(image), _body(image, args.zero_corners))

    for split, pairs in _splits(args.dataset_dir, args.extra).items():
        for name, fn in (("gradcam", predict), ("gradcam_otsu", predict_otsu_cam)):
            res = _score(pairs, fn)
            res.update({"method": f"{name}_classifier", "split": split, "dataset": args.dataset_dir,
                        "classifier_steps": args.steps, "seed": args.seed,
                        "zero_corners": args.zero_corners})  # fmt: skip
            write_image_reports(res, Path(args.out) / name / split, title=f"{name} baseline, {split}")
            print(f"{name:15s} {split:12s} DI {100 * res['mean_dice']:.2f} JA {100 * res['mean_ja']:.2f} "
                  f"(n={res['n_images']})")  # fmt: skip


def soft_intensity(image: torch.Tensor, dark: bool = False, corners: bool = False) -> np.ndarray:
    """The grey level min-max normalised over the non-black pixels (inverted with ``dark``), 0 outside them."""
    return intensity_prior(image, dark, _body(image, corners)).astype(np.float32)


def gate_map(soft: np.ndarray, gate: str, scale: float) -> np.ndarray:
    """A gate without learning, the control for CLTNet's ``intensity_prior`` (the gate's M × the darkness):
    ``centre``: a Gaussian bump at the image centre, σ = ``scale`` · the shorter side (dermoscopy centres the lesion);
    ``blur``: the darkness ``soft`` blurred with that σ and min-max normalised (where it is dark on a large scale)."""
    h, w = soft.shape
    sigma = float(scale) * min(h, w)
    if gate == "centre":
        yy, xx = np.mgrid[:h, :w]
        return np.exp(-((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2))
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(soft.astype(np.float64), sigma)
    lo, hi = float(blurred.min()), float(blurred.max())
    return (blurred - lo) / (hi - lo) if hi > lo else np.zeros_like(blurred)


def cmd_crf(args: argparse.Namespace) -> None:
    from labelless.transforms.postprocess import crf_mask

    splits = _splits(args.dataset_dir, args.extra)
    chosen = args.select.split(",")
    if any(s not in splits or s == "test" for s in chosen):
        raise SystemExit(f"--select must name --extra validation folders, got {args.select!r}")
    select_pairs = [p for s in chosen for p in splits[s]]  # several folders: pooled, every image counts once
    method = "intensity_crf" if args.gate == "none" else f"intensity_{args.gate}_crf"
    if args.color_constancy:
        from labelless.transforms.translation import shades_of_grey

        method += f"_cc{args.color_constancy:g}"

    def predictor(alpha: float, scale: float):
        def predict(image: torch.Tensor) -> np.ndarray:
            rgb = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            seen = shades_of_grey(image, args.color_constancy) if args.color_constancy else image
            soft = soft_intensity(seen, args.dark, args.zero_corners)  # the CRF reads the original colours
            if args.gate != "none":  # sqrt(gate · darkness), as SoftMaskPostprocess(intensity_prior=...) fuses M
                soft = np.sqrt(soft * gate_map(soft, args.gate, scale))
            return crf_mask(soft, rgb, alpha) & _body(image, args.zero_corners)

        return predict

    grid = [(float(a), float(g)) for a in args.alphas.split(",")
            for g in (args.gate_scales.split(",") if args.gate != "none" else ["0"])]  # fmt: skip
    scores = {k: _score(select_pairs, predictor(*k)) for k in grid}
    for a, g in grid:
        print(f"{method}  α={a:g}{f' σ={g:g}' if args.gate != 'none' else ''}  {args.select:12s} "
              f"DI {100 * scores[a, g]['mean_dice']:.2f} JA {100 * scores[a, g]['mean_ja']:.2f}")  # fmt: skip
    best = max(grid, key=lambda k: scores[k]["mean_ja"])
    print(f"α{', σ' if args.gate != 'none' else ''} chosen on {args.select}: {best[0]:g}"
          f"{f', {best[1]:g}' if args.gate != 'none' else ''}")  # fmt: skip
    for split, pairs in splits.items():
        res = scores[best] if split == args.select else _score(pairs, predictor(*best))
        res.update({"method": method, "split": split, "dataset": args.dataset_dir, "crf_alpha": best[0],
                    "gate": args.gate, "gate_scale": best[1], "alpha_selected_on": args.select, "dark": args.dark,
                    "zero_corners": args.zero_corners, "color_constancy": args.color_constancy})  # fmt: skip
        write_image_reports(res, Path(args.out) / method / split, title=f"{method} baseline, {split}")
        print(f"{method}  {split:12s} DI {100 * res['mean_dice']:.2f} JA {100 * res['mean_ja']:.2f} "
              f"(n={res['n_images']}, α={best[0]:g}{f', σ={best[1]:g}' if args.gate != 'none' else ''})")  # fmt: skip


def cmd_summarize(args: argparse.Namespace) -> None:
    print("| method | split | n | DI | JA | SE | SP |\n|---|---|---|---|---|---|---|")
    for item in args.runs:
        name, folder = item.split("=", 1)
        for mj in sorted(Path(folder).rglob("metrics.json")):
            r = json.loads(mj.read_text())
            where = mj.parent.relative_to(folder)
            print(
                f"| {name} | {where} | {r['n_images']} | {100 * r['mean_dice']:.2f} | "
                f"{100 * r['mean_ja']:.2f} | {100 * r['mean_se']:.2f} | {100 * r['mean_sp']:.2f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("trivial", "cam", "crf"):
        p = sub.add_parser(name)
        p.add_argument("--dataset_dir", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--extra", action="append", default=[], help="name=folder with images/ and labels/")
        p.add_argument("--dark", action="store_true", help="lesions darker than the background (dermoscopy)")
        p.add_argument("--image_size", type=int, default=128)
        p.add_argument("--steps", type=int, default=600)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--zero_corners", action="store_true", help="drop the corner triangles too (dermoscopy)")
        if name == "crf":
            p.add_argument("--alphas", default="1,2,4,8", help="CRF α values to choose from")
            p.add_argument(
                "--select",
                required=True,
                help="the --extra split that chooses α (validation); comma-separated: those splits pooled",
            )
            p.add_argument(
                "--gate",
                choices=("none", "centre", "blur"),
                default="none",
                help="a gate without learning fused with the darkness as sqrt(gate · darkness)",
            )
            p.add_argument(
                "--gate_scales",
                default="0.15,0.25,0.4",
                help="σ of the gate as a fraction of the shorter side, chosen with α on --select",
            )
            p.add_argument(
                "--color_constancy",
                type=float,
                default=0.0,
                help="shades-of-grey power applied before the darkness is read (CLTNet's color_constancy; 0: off)",
            )
    s = sub.add_parser("summarize")
    s.add_argument("runs", nargs="+")
    args = ap.parse_args()
    {"trivial": cmd_trivial, "cam": cmd_cam, "crf": cmd_crf, "summarize": cmd_summarize}[args.cmd](args)


if __name__ == "__main__":
    main()
