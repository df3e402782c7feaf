# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation protocol of the semi-supervised ultrasound bundle (sabrnet.md §9).

Per test image, on the foreground: Dice and IoU, HD95 and ASD (symmetric; same definitions as MONAI's
``HausdorffDistanceMetric(percentile=95)`` / ``SurfaceDistanceMetric(symmetric=True)``, see
:func:`labelless.evaluation.metrics.surface_distances`), accuracy, precision and recall, for the **coarse**
(argmax of the segmentation head) and the **refined** (offset-based boundary refinement) prediction. Dice/IoU and the
pixel distances are computed on the network grid (the reference's 256 grid: the label is resized with nearest
neighbour); when the pixel size is known (HC18), HD95/ASD in mm are computed after resampling the prediction to the
image's original grid (nearest), and the head circumference (ellipse fit, :mod:`labelless.semisup.hc`) is compared
with the reference HC (absolute difference in mm, the HC18 challenge's measure). Dataset-level Dice is computed from
the intersections and sums accumulated over all images. ``metrics.json`` carries the mean (refined) Dice as
``mean_dice``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelless.evaluation.metrics import confusion_counts, dice_from_counts, iou_from_counts, surface_distances
from labelless.evaluation.overlays import rgb_overlay
from labelless.io.checkpoint import load_network_weights
from labelless.options import as_float, as_int
from labelless.paths import locked_output
from labelless.semisup.data import SEMISUP_EVAL_SPLITS, SemiSupDataset, SemiSupItem, SemiSupSplit
from labelless.semisup.hc import head_circumference_mm
from labelless.transforms.boundary import refine_with_offsets
from labelless.utils import as_bool, atomic_path, is_unset, write_json_atomic, write_text_atomic

__all__ = [
    "predict_masks",
    "image_scores",
    "evaluate_items",
    "SemiSupEvaluationRunner",
    "write_semisup_reports",
]

logger = logging.getLogger("labelless.semisup")

_VARIANTS = ("coarse", "refined")
_PER_IMAGE = ("dice", "iou", "hd95_px", "asd_px", "accuracy", "precision", "recall")


@torch.no_grad()
def predict_masks(
    network: nn.Module, images: torch.Tensor, refine: bool = True, offset_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Coarse and refined label maps ``[B, H, W]`` (int64) of ``[B, 3, H, W]`` images in [−1, 1] (all-ones mask).

    ``refined`` equals ``coarse`` when ``refine`` is false or the network has no boundary heads.
    """
    net = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    net.eval()
    out = net(images, torch.ones_like(images[:, :1]))
    coarse = out.seg.argmax(1)
    refined = coarse
    if refine and getattr(out, "boundary", None) is not None and out.boundary is not None:
        refined = refine_with_offsets(coarse, out.boundary, out.direction, offset_scale)
    return {"coarse": coarse, "refined": refined, "probability": torch.softmax(out.seg.float(), 1)}


def image_scores(pred: np.ndarray, truth: np.ndarray, spacing: float | None = None) -> dict[str, float]:
    """Dice, IoU, HD95/ASD (pixels, or mm with ``spacing``), accuracy, precision and recall of binary masks."""
    c = confusion_counts(pred, truth)
    hd, asd = surface_distances(pred, truth, spacing)
    n = c.tp + c.fp + c.fn + c.tn
    return {
        "dice": dice_from_counts(c.tp, c.fp, c.fn),
        "iou": iou_from_counts(c.tp, c.fp, c.fn),
        "hd95_px": hd,
        "asd_px": asd,
        "accuracy": (c.tp + c.tn) / n if n else math.nan,
        "precision": c.tp / (c.tp + c.fp) if c.tp + c.fp else (1.0 if c.fn == 0 else 0.0),
        "recall": c.tp / (c.tp + c.fn) if c.tp + c.fn else 1.0,
        "tp": int(c.tp),
        "fp": int(c.fp),
        "fn": int(c.fn),
    }


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.as_tensor(mask.astype(np.uint8))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5


def _overlay(image: torch.Tensor, truth: np.ndarray, pred: np.ndarray) -> Any:
    """The image (in [−1, 1]) with the prediction in red and the ground-truth contour in green."""
    return rgb_overlay((image.float().clamp(-1, 1) + 1.0) / 2.0, truth=truth, prediction=pred)


def evaluate_items(
    network: nn.Module,
    items: Sequence[SemiSupItem],
    image_size: int = 128,
    device: str | torch.device = "cpu",
    refine: bool = True,
    offset_scale: float = 1.0,
    n_overlays: int = 8,
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Evaluate ``network`` on labelled ``items`` (see the module docstring).

    Returns:
        (result: ``mean_dice`` (refined), ``coarse`` and ``refined`` means, dataset Dice, HC errors, ``per_image``;
        overlays ``(name, PIL image)``).
    """
    ds = SemiSupDataset(list(items), image_size=image_size)
    dev = torch.device(device)
    network.to(dev)
    per_image, overlays = [], []
    acc = {v: [0, 0] for v in _VARIANTS}  # 2|P∩T|, |P|+|T|
    for i in range(len(ds)):
        it = ds[i]
        item = items[i]
        x = torch.as_tensor(it["image"])[None].to(dev)
        masks = predict_masks(network, x, refine, offset_scale)
        truth = torch.as_tensor(it["label"]).reshape(x.shape[-2:]).numpy() > 0
        rec: dict[str, Any] = {"name": it.get("name", item.name)}
        spacing = it.get("pixel_size")
        spacing = None if spacing is None or not math.isfinite(float(spacing)) else float(spacing)
        original = tuple(int(s) for s in it.get("original_size", x.shape[-2:]))
        for v in _VARIANTS:
            pred = masks[v][0].cpu().numpy() > 0
            s = image_scores(pred, truth)
            rec.update({f"{v}_{k}": s[k] for k in _PER_IMAGE})
            acc[v][0] += 2 * s["tp"]
            acc[v][1] += 2 * s["tp"] + s["fp"] + s["fn"]
            if spacing is not None:
                pred_o = _resize_nearest(pred, original)
                truth_o = _resize_nearest(truth, original)
                hd, asd = surface_distances(pred_o, truth_o, spacing)
                rec[f"{v}_hd95_mm"], rec[f"{v}_asd_mm"] = hd, asd
                if getattr(item, "hc_mm", None) is not None and math.isfinite(float(item.hc_mm)):
                    hc = head_circumference_mm(pred, spacing, original_size=original)
                    rec[f"{v}_hc_mm"] = math.nan if hc is None else float(hc)
                    rec["reference_hc_mm"] = float(item.hc_mm)
                    rec[f"{v}_hc_abs_diff_mm"] = abs(rec[f"{v}_hc_mm"] - float(item.hc_mm))
        per_image.append(rec)
        if len(overlays) < int(n_overlays):
            overlays.append((str(rec["name"]), _overlay(torch.as_tensor(it["image"]), truth,
                                                        masks["refined"][0].cpu().numpy() > 0)))  # fmt: skip
    result: dict[str, Any] = {"n_images": len(per_image), "image_size": int(image_size), "refine": bool(refine)}
    for v in _VARIANTS:
        keys = sorted({k[len(v) + 1 :] for r in per_image for k in r if k.startswith(v + "_")})
        result[v] = {f"mean_{k}": _nanmean([r.get(f"{v}_{k}", math.nan) for r in per_image]) for k in keys}
        result[v]["dataset_dice"] = acc[v][0] / acc[v][1] if acc[v][1] else math.nan
        result[v]["n_nan_hd95"] = int(sum(1 for r in per_image if math.isnan(r[f"{v}_hd95_px"])))
    result["mean_dice"] = result["refined"]["mean_dice"]
    result["mean_dice_coarse"] = result["coarse"]["mean_dice"]
    result["per_image"] = per_image
    return result, overlays


def _nanmean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def write_semisup_reports(
    result: dict[str, Any], output_dir: str | os.PathLike, overlays: Sequence[tuple[str, Any]] = (), title: str = ""
) -> dict[str, Any]:
    """``metrics.json`` (summary + ``per_image``), ``metrics.csv`` (one row per image), ``metrics.md`` and overlay
    PNGs under ``overlays/``, all written atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result.get("per_image", [])
    fields = ["name"] + sorted({k for r in rows for k in r if k != "name"})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in rows:
        w.writerow([r.get(k, "") if not isinstance(r.get(k), float) else f"{r[k]:.6f}" for k in fields])
    paths: dict[str, Any] = {"metrics_json": write_json_atomic(out / "metrics.json", result),
                             "metrics_csv": write_text_atomic(out / "metrics.csv", buf.getvalue())}  # fmt: skip
    md = [f"# {title or 'Semi-supervised ultrasound segmentation'}", "", f"{result.get('n_images', len(rows))} images "
          f"(network grid {result.get('image_size')} px). Means over images; dataset Dice from accumulated counts.", "",
          "| metric | coarse | refined |", "|---|---|---|"]  # fmt: skip
    for k in sorted(set(result.get("coarse", {})) | set(result.get("refined", {}))):
        c, r = result.get("coarse", {}).get(k, math.nan), result.get("refined", {}).get(k, math.nan)
        md.append(f"| {k} | {c:.4f} | {r:.4f} |")
    paths["metrics_md"] = write_text_atomic(out / "metrics.md", "\n".join(md) + "\n")
    paths["overlays"] = []
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    for name, img in overlays:
        p = out / "overlays" / f"{name}.png"
        with atomic_path(p) as tmp:
            img.save(tmp, format="PNG")
        paths["overlays"].append(p)
    return paths


class SemiSupEvaluationRunner:
    """Evaluate a SABR-Net (or a baseline of the same family) on a split (``validate#evaluator`` of evaluate.json).

    Args:
        network: the SABRNet.
        split: the dataset split (:func:`labelless.semisup.workflow.resolve_split`).
        output_dir: report folder; must not lie inside the dataset.
        ckpt_path: weights (a state dict or a checkpoint with ``model``); unset: the network as given (warning).
        eval_split: ``test`` (the seeded split, default), ``val``, or ``all`` (``resolve_split(eval_split="all")``
            puts every labelled image into ``test``).
        image_size: network grid.
        refine: apply the boundary refinement (reports coarse and refined either way).
        offset_scale: refinement offset in pixels.
        n_overlays: overlay PNGs.
        device: torch device.
    """

    def __init__(
        self,
        network: nn.Module,
        split: SemiSupSplit,
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        eval_split: str = "test",
        image_size: int = 128,
        refine: bool = True,
        offset_scale: float = 1.0,
        n_overlays: int = 8,
        device: str | torch.device = "cpu",
    ) -> None:
        from labelless.errors import ConfigError

        if eval_split not in SEMISUP_EVAL_SPLITS:
            raise ConfigError(f"eval_split must be one of {SEMISUP_EVAL_SPLITS}, got {eval_split!r}")
        self.network, self.split = network, split
        self.output_dir = Path(output_dir)
        root = Path(split.root).resolve()
        out = self.output_dir.resolve()
        if out == root or root in out.parents:
            raise ConfigError(f"output_dir {self.output_dir} lies inside the dataset {root}; choose another folder")
        self.ckpt_path = None if is_unset(ckpt_path) else Path(ckpt_path)
        self.eval_split = eval_split
        self.items = list(split.val) if eval_split == "val" else list(split.test)
        if eval_split == "all":
            self.items = list(split.test) + [i for i in split.val if i not in split.test]
        if not self.items:
            raise ConfigError(f"the {eval_split!r} split of {split.root} holds no labelled image")
        self.image_size, self.refine, self.offset_scale = (
            as_int(image_size, "image_size", 8),
            as_bool(refine, "refine"),
            as_float(offset_scale, "offset_scale", 0.0),
        )
        self.n_overlays, self.device = as_int(n_overlays, "n_overlays", 0), torch.device(device)

    @locked_output
    def run(self) -> dict[str, Any]:
        """Evaluate, write the reports, return the summary (without ``per_image``)."""
        if self.ckpt_path is not None:
            load_network_weights(self.network, self.ckpt_path, self.device)
        else:
            logger.warning("no ckpt_path: evaluating the network's current (possibly random) weights")
        result, overlays = evaluate_items(self.network, self.items, self.image_size, self.device, self.refine,
                                          self.offset_scale, self.n_overlays)  # fmt: skip
        result = {"split": self.eval_split, "dataset": str(self.split.root),
                  "checkpoint": None if self.ckpt_path is None else str(self.ckpt_path), **result}  # fmt: skip
        paths = write_semisup_reports(result, self.output_dir, overlays,
                                      title=f"SABR-Net, {self.eval_split} split")  # fmt: skip
        logger.info("%s split: mean Dice coarse %.4f, refined %.4f over %d images; reports in %s", self.eval_split,
                    result["coarse"]["mean_dice"], result["refined"]["mean_dice"], result["n_images"],
                    paths["metrics_json"].parent)  # fmt: skip
        return {k: v for k, v in result.items() if k != "per_image"}
