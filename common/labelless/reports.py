# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation reports: ``metrics.json``, ``metrics.csv``, ``metrics.md`` and PNG overlays (PIL only).

Layout of ``<output_dir>`` written by :func:`write_reports`:

- ``metrics.json``: the block of the first mode (protocol mode when it was run) at the top level, and one nested
  block per further mode under the mode's name, e.g. ``{"mode": "protocol", "per_class": ..., ..., "gt_free":
  {"mode": "gt_free", "per_class": ..., ...}}``. ``"modes"`` lists the modes in order. Each block has ``per_class``
  (``{name: {"dice", "hd95", "asd", "n_scans", ...}}``), ``mean_dice``, ``per_scan``, ``per_fold``, ``mode``,
  ``label`` ("5-fold" only when all folds of the dataset were evaluated, else e.g. "fold 0"), ``folds_evaluated``
  and ``folds_missing``. **Dice values are fractions in 0..1** (Markdown shows percentages); HD95/ASD are in mm.
  Undefined values (NaN: e.g. HD95 of an empty prediction) are written as ``null``; the number of scans left out
  of a distance mean is given as ``hd95_n_nan`` / ``asd_n_nan``.
- ``metrics.csv``: one row per (mode, fold, scan, class).
- ``metrics.md``: one Markdown table per mode (protocol mode first), Dice in %, with the GT-free caveat.
- ``overlays/<class>_<pid>_z<z>.png`` for the first mode and ``overlays/<mode>/<class>_<pid>_z<z>.png`` for the
  others: 4 panels (support image + mask, query image, prediction overlay, ground-truth overlay).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from labelless.fewshot.protocol import EvaluationResult, FoldResult, ModeResult, OverlaySample
from labelless.utils import atomic_path, write_json_atomic, write_text_atomic

__all__ = [
    "write_inference_overlay",
    "render_panels",
    "write_episode_png",
    "GT_FREE_NOTE",
    "PROTOCOL_NOTE",
    "mode_results",
    "mode_block",
    "result_to_dict",
    "write_reports",
    "to_uint8",
    "render_overlay",
    "TITLE_HEIGHT",
]

PROTOCOL_NOTE = (
    "Protocol mode (published protocol): the query's ground truth selects the scored slices and the support chunk "
    "of each slice; comparable with published tables when the result is labelled '5-fold'."
)
GT_FREE_NOTE = (
    "GT-free mode: all slices scored, chunks estimated from the support; these numbers are NOT comparable with "
    "published tables."
)
TITLE_HEIGHT = 16
_SUPPORT_COLOR = (60, 220, 60)
_PRED_COLOR = (255, 60, 60)
_TRUTH_COLOR = (60, 220, 60)


# ---------------------------------------------------------------------------------------------------- JSON
def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, tuples -> lists, keys -> str."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def mode_results(result: EvaluationResult | ModeResult | FoldResult) -> list[ModeResult]:
    """The result as a list of :class:`ModeResult`, protocol mode first."""
    if isinstance(result, EvaluationResult):
        return list(result.modes.values())
    if isinstance(result, ModeResult):
        return [result]
    if isinstance(result, FoldResult):
        return [ModeResult.from_fold(result)]
    raise TypeError(f"cannot report a {type(result).__name__}")


def _label(mr: ModeResult) -> str:
    if mr.folds and all(f < 0 for f in mr.folds):
        return "selected scans"
    return mr.label


def mode_block(mr: ModeResult) -> dict[str, Any]:
    """The metrics.json block of one mode (values not yet JSON-cleaned)."""
    names = mr.class_names
    per_class = {
        names[c]: {"class_id": c, **{k: v for k, v in e.items() if k != "dice_per_fold"},
                   "dice_per_fold": {str(f): v for f, v in e["dice_per_fold"].items()}}
        for c, e in mr.per_class().items()
    }  # fmt: skip
    dist = {m: [e[m] for e in per_class.values() if not math.isnan(e[m])] for m in ("hd95", "asd")}
    per_fold = {}
    for f in mr.folds_evaluated:
        fr = mr.folds[f]
        cd = fr.class_dice()
        per_fold[str(f)] = {
            "support_pid": fr.support_pid,
            "test_pids": list(fr.test_pids),
            "support_slices": {names[c]: v for c, v in fr.support_slices.items()},
            "per_class": {
                names[c]: {"dice": cd[c], "hd95": fr.class_distance("hd95")[c][0],
                           "asd": fr.class_distance("asd")[c][0], "n_scans": len(fr.scans_of(c))}
                for c in mr.classes
            },  # fmt: skip
            "mean_dice": fr.mean_dice,
            "skipped": [{"pid": p, "class": names.get(c, str(c))} for p, c in fr.skipped],
            "settings": dict(fr.settings),
        }
    per_scan = [
        {"fold": s.fold, "pid": s.pid, "class": s.class_name, "class_id": s.class_id, "dice": s.dice, "tp": s.tp,
         "fp": s.fp, "fn": s.fn, "hd95": s.hd95, "asd": s.asd, "n_scored_slices": s.n_scored_slices,
         "z_range": list(s.z_range)}
        for s in mr.scans
    ]  # fmt: skip
    skipped = [{"fold": f, "pid": p, "class": names.get(c, str(c))} for f in mr.folds_evaluated
               for p, c in mr.folds[f].skipped]  # fmt: skip
    return {
        "mode": mr.mode,
        "label": _label(mr),
        "comparable_with_published": mr.mode == "protocol",
        "note": PROTOCOL_NOTE if mr.mode == "protocol" else GT_FREE_NOTE,
        "dataset": mr.dataset,
        "n_folds": mr.n_folds,
        "folds_evaluated": [f for f in mr.folds_evaluated if f >= 0],
        "folds_missing": sorted(mr.folds_missing),
        "classes": {names[c]: c for c in mr.classes},
        "per_class": per_class,
        "mean_dice": mr.mean_dice,
        "mean_hd95": float(np.mean(dist["hd95"])) if dist["hd95"] else math.nan,
        "mean_asd": float(np.mean(dist["asd"])) if dist["asd"] else math.nan,
        "per_fold": per_fold,
        "per_scan": per_scan,
        "skipped": skipped,
        "n_skipped": len(skipped),
    }


def result_to_dict(result: EvaluationResult | ModeResult | FoldResult) -> dict[str, Any]:
    """The JSON-ready content of ``metrics.json`` (layout in the module docstring)."""
    mrs = mode_results(result)
    out: dict[str, Any] = {
        "modes": [m.mode for m in mrs],
        "units": {"dice": "fraction (0..1)", "hd95": "mm", "asd": "mm"},
        "aggregation": "per scan: TP/FP/FN summed over scored slices; class per fold: mean over query scans; "
        "reported: mean over folds; mean_dice: mean over classes",
    }
    out.update(mode_block(mrs[0]))
    for mr in mrs[1:]:
        out[mr.mode] = mode_block(mr)
    return _clean(out)


# ---------------------------------------------------------------------------------------------------- CSV / MD
_CSV_FIELDS = ["mode", "fold", "pid", "class", "class_id", "dice", "tp", "fp", "fn", "hd95", "asd",
               "n_scored_slices", "z_first", "z_last"]  # fmt: skip


def _csv_text(mrs: Sequence[ModeResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_FIELDS)
    for mr in mrs:
        for s in mr.scans:
            w.writerow([mr.mode, "" if s.fold is None else s.fold, s.pid, s.class_name, s.class_id,
                        f"{s.dice:.6f}", s.tp, s.fp, s.fn, f"{s.hd95:.4f}", f"{s.asd:.4f}", s.n_scored_slices,
                        s.z_range[0], s.z_range[1]])  # fmt: skip
    return buf.getvalue()


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100.0 * v:.2f}"


def _mm(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.2f}"


def _markdown(mrs: Sequence[ModeResult]) -> str:
    lines = [f"# Evaluation results ({mrs[0].dataset})", "",
             "Dice in % (metrics.json stores fractions 0..1), HD95 and ASD in mm. Per scan, TP/FP/FN are summed over "
             "the scored slices (3D Dice); class Dice of a fold = mean over its query scans; reported = mean over "
             "the evaluated folds; Mean = mean over classes.", ""]  # fmt: skip
    for mr in mrs:
        title = "Protocol mode" if mr.mode == "protocol" else "GT-free mode"
        folds = [f for f in mr.folds_evaluated if f >= 0]
        lines += [f"## {title} ({_label(mr)})", "", PROTOCOL_NOTE if mr.mode == "protocol" else f"**{GT_FREE_NOTE}**",
                  "", f"Folds evaluated: {folds or 'none'}; folds missing (no checkpoint): "
                  f"{sorted(mr.folds_missing) or 'none'}.", ""]  # fmt: skip
        pc = mr.per_class()
        head = ["class", "Dice (%)"] + [f"fold {f}" for f in folds] + ["HD95 (mm)", "ASD (mm)", "scans", "skipped"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in mr.classes:
            e = pc[c]
            row = [mr.class_names[c], _pct(e["dice"])] + [_pct(e["dice_per_fold"][f]) for f in folds]
            row += [_mm(e["hd95"]), _mm(e["asd"]), str(e["n_scans"]), str(e["n_skipped"])]
            lines.append("| " + " | ".join(row) + " |")
        fold_means = [mr.folds[f].mean_dice for f in folds]
        hd = [pc[c]["hd95"] for c in mr.classes if not math.isnan(pc[c]["hd95"])]
        asd = [pc[c]["asd"] for c in mr.classes if not math.isnan(pc[c]["asd"])]
        mean_row = ["**Mean**", f"**{_pct(mr.mean_dice)}**"] + [_pct(v) for v in fold_means]
        mean_row += [_mm(float(np.mean(hd)) if hd else math.nan), _mm(float(np.mean(asd)) if asd else math.nan),
                     str(sum(pc[c]["n_scans"] for c in mr.classes)), str(sum(pc[c]["n_skipped"] for c in mr.classes))]
        lines.append("| " + " | ".join(mean_row) + " |")  # fmt: skip
        n_nan = sum(pc[c]["hd95_n_nan"] for c in mr.classes)
        if n_nan:
            lines += ["", f"HD95/ASD undefined (empty prediction) for {n_nan} scan(s); left out of the distance means."]
        n_skip = sum(pc[c]["n_skipped"] for c in mr.classes)
        if n_skip:
            what = "skipped" if mr.mode == "protocol" else "excluded from the means"
            lines += ["", f"{n_skip} (scan, class) pair(s) without the class in the query were {what}."]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- overlays
def to_uint8(image: np.ndarray) -> np.ndarray:
    """Grey image -> uint8 0..255 (uint8 input unchanged; others min-max scaled; constant images -> 0)."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    out = np.where(finite, (a - lo) / (hi - lo), 0.0)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _overlay(grey: np.ndarray, mask: np.ndarray | None, color: tuple[int, int, int], alpha: float = 0.3) -> Image.Image:
    g = to_uint8(grey)
    rgb = np.repeat(g[..., None], 3, axis=2).astype(np.float64)
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        if m.any():
            col = np.asarray(color, dtype=np.float64)
            rgb[m] = (1 - alpha) * rgb[m] + alpha * col
            edge = m & ~ndimage.binary_erosion(m)
            rgb[edge] = col
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))


def render_overlay(sample: OverlaySample) -> Image.Image:
    """4-panel figure (support image + mask, query image, prediction overlay, truth overlay) with titles.

    Size: ``(4 W, H + TITLE_HEIGHT)`` for (H, W) slices. A missing support (scoring saved predictions) gives a
    black first panel.
    """
    q = np.asarray(sample.query_image)
    h, w = q.shape
    if sample.support_image is not None and np.asarray(sample.support_image).shape == (h, w):
        sup = _overlay(sample.support_image, sample.support_mask, _SUPPORT_COLOR)
        sup_title = f"support {sample.support_pid} z{sample.support_z}"
    else:
        sup = Image.new("RGB", (w, h))
        sup_title = "support n/a"
    dice = "" if sample.dice is None else f" (scan Dice {100 * sample.dice:.1f}%)"
    panels = [
        (sup, sup_title),
        (_overlay(q, None, _PRED_COLOR), f"query {sample.pid} z{sample.z}"),
        (_overlay(q, sample.prediction, _PRED_COLOR), f"prediction{dice}"),
        (_overlay(q, sample.truth, _TRUTH_COLOR), f"truth {sample.class_name}"),
    ]
    return render_panels(panels)


def render_panels(panels: Sequence[tuple[Image.Image, str]]) -> Image.Image:
    """Paste equally sized panels side by side under one title row each."""
    w, h = panels[0][0].size
    fig = Image.new("RGB", (len(panels) * w, h + TITLE_HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    for i, (img, title) in enumerate(panels):
        fig.paste(img, (i * w, TITLE_HEIGHT))
        draw.text((i * w + 2, 2), title, fill=(255, 255, 255), font=font)
    return fig


def write_episode_png(episode: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a few-shot episode (the items of the episode datasets) as a PNG: each support shot with its mask, then
    the query with its label, so pseudo-labels and augmentation can be checked by eye.

    Args:
        episode: dict with ``support_image`` [S, C, H, W], ``support_mask`` [S, 1, H, W], ``query_image`` [C, H, W],
            ``query_label`` [H, W] (tensors or arrays) and optional ``meta``.
        path: destination PNG (written atomically).
    """
    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    sup, msk = arr(episode["support_image"]), arr(episode["support_mask"])
    meta = episode.get("meta") or {}
    tag = " ".join(f"{k}={v}" for k, v in meta.items() if k in ("pid", "z", "superpixel", "class_id"))
    panels = [(_overlay(sup[s, 0], msk[s, 0] > 0.5, _SUPPORT_COLOR), f"support {s} {tag}") for s in range(len(sup))]
    panels.append((_overlay(arr(episode["query_image"])[0], arr(episode["query_label"]) == 1, _TRUTH_COLOR), "query"))
    with atomic_path(path) as tmp:
        render_panels(panels).save(tmp, format="PNG")
    return Path(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def _overlay_path(root: Path, sample: OverlaySample, sub: str | None) -> Path:
    folder = root / "overlays" if sub is None else root / "overlays" / sub
    return folder / f"{_safe(sample.class_name)}_{_safe(sample.pid)}_z{sample.z}.png"


# ---------------------------------------------------------------------------------------------------- entry point
def write_reports(
    result: EvaluationResult | ModeResult | FoldResult, output_dir: str | os.PathLike, overlays: bool = True
) -> dict[str, Any]:
    """Write metrics.json, metrics.csv, metrics.md and the overlay PNGs (all atomically) to ``output_dir``.

    Args:
        result: what :func:`~labelless.fewshot.protocol.evaluate`, ``evaluate_fold`` or ``score_predictions``
            returned.
        output_dir: destination folder (created).
        overlays: write the overlay PNGs of the samples kept in the result.

    Returns:
        ``{"metrics_json": Path, "metrics_csv": Path, "metrics_md": Path, "overlays": [Path, ...]}``.

    Examples::

        res = evaluate(ds, predictor_for_fold, folds=(0,))
        paths = write_reports(res, "eval_out")
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mrs = mode_results(result)
    paths: dict[str, Any] = {
        "metrics_json": write_json_atomic(out / "metrics.json", result_to_dict(result)),
        "metrics_csv": write_text_atomic(out / "metrics.csv", _csv_text(mrs)),
        "metrics_md": write_text_atomic(out / "metrics.md", _markdown(mrs)),
        "overlays": [],
    }
    if overlays:
        for i, mr in enumerate(mrs):
            for f in mr.folds_evaluated:
                for sample in mr.folds[f].overlays:
                    p = _overlay_path(out, sample, None if i == 0 else mr.mode)
                    p.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(p) as tmp:
                        render_overlay(sample).save(tmp, format="PNG")
                    paths["overlays"].append(p)
    return paths


def write_inference_overlay(
    image: np.ndarray, prediction: np.ndarray, out_dir: str | os.PathLike, stem: str, n: int = 1
) -> list[Path]:
    """Overlay PNGs of a predicted volume: the ``n`` slices with the largest predicted area (the middle slice when
    nothing is predicted), two panels each (query, prediction). Written atomically as ``<stem>_z<z>.png``.

    Args:
        image: (Z, H, W) query intensities.
        prediction: (Z, H, W) binary prediction.
        out_dir: destination folder.
        stem: file name stem (usually the query's).
        n: number of slices.
    """
    img, pred = np.asarray(image), np.asarray(prediction).astype(bool)
    area = pred.reshape(pred.shape[0], -1).sum(axis=1)
    order = [int(z) for z in np.argsort(-area, kind="stable")[: max(int(n), 0)] if area[z] > 0]
    if not order and n > 0:
        order = [pred.shape[0] // 2]
    paths = []
    for z in order:
        fig = render_panels([(_overlay(img[z], None, _PRED_COLOR), f"{stem} z{z}"),
                             (_overlay(img[z], pred[z], _PRED_COLOR), f"prediction ({int(area[z])} px)")])  # fmt: skip
        p = Path(out_dir) / f"{_safe(stem)}_z{z}.png"
        with atomic_path(p) as tmp:
            fig.save(tmp, format="PNG")
        paths.append(p)
    return paths
