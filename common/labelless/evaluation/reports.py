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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelless.evaluation.overlays import render_overlay, render_panels, safe_name
from labelless.evaluation.results import EvaluationResult, FoldResult, ModeResult, OverlaySample
from labelless.utils import atomic_path, write_json_atomic, write_text_atomic

__all__ = [
    "GT_FREE_NOTE",
    "PROTOCOL_NOTE",
    "json_safe",
    "mode_results",
    "mode_block",
    "result_to_dict",
    "write_reports",
    "write_episode_reports",
    "write_image_reports",
]

PROTOCOL_NOTE = (
    "Protocol mode (published protocol): the query's ground truth selects the scored slices and the support chunk "
    "of each slice; comparable with published tables when the result is labelled '5-fold'."
)
GT_FREE_NOTE = (
    "GT-free mode: all slices scored; the class extent, the support chunks and the slices that may hold the class "
    "are estimated from the support and the query image (settings: per_fold.settings.gt_free); these numbers are "
    "NOT comparable with published tables."
)


# ---------------------------------------------------------------------------------------------------- JSON
def json_safe(x: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, tuples -> lists, keys -> str."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
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
                names[c]: {
                    "dice": cd[c],
                    "hd95": fr.class_distance("hd95")[c][0],
                    "asd": fr.class_distance("asd")[c][0],
                    "n_scans": len(fr.scans_of(c)),
                }
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
    # only the published protocol over every fold of the data set (a single fold is not comparable)
    comparable = mr.mode == "protocol" and sorted(f for f in mr.folds if f >= 0) == list(range(mr.n_folds))
    return {
        "mode": mr.mode,
        "label": _label(mr),
        "comparable_with_published": comparable,
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
    return json_safe(out)


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
        mean_row += [
            _mm(float(np.mean(hd)) if hd else math.nan),
            _mm(float(np.mean(asd)) if asd else math.nan),
            str(sum(pc[c]["n_scans"] for c in mr.classes)),
            str(sum(pc[c]["n_skipped"] for c in mr.classes)),
        ]
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


def _overlay_path(root: Path, sample: OverlaySample, sub: str | None) -> Path:
    folder = root / "overlays" if sub is None else root / "overlays" / sub
    return folder / f"{safe_name(sample.class_name)}_{safe_name(sample.pid)}_z{sample.z}.png"


# ---------------------------------------------------------------------------------------------------- entry point
def write_reports(
    result: EvaluationResult | ModeResult | FoldResult, output_dir: str | os.PathLike, overlays: bool = True
) -> dict[str, Any]:
    """Write metrics.json, metrics.csv, metrics.md and the overlay PNGs (all atomically) to ``output_dir``.

    Args:
        result: what :func:`~labelless.fewshot.volume.protocol.evaluate`, ``evaluate_fold`` or ``score_predictions``
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


# ---------------------------------------------------------------------------------------------------- 2D episodes
_EPISODE_CSV_FIELDS = ["episode", "task", "query_id", "support_ids", "dice", "iou", "tp", "fp", "fn", "episode_dice"]


def write_episode_reports(
    result: dict[str, Any], output_dir: str | os.PathLike, overlays: Sequence[tuple[str, Any]] = ()
) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.csv`` (one row per query), ``metrics.md`` and overlay PNGs atomically.

    Args:
        result: what :func:`evaluate_episodes` computed (without ``files``).
        output_dir: destination folder (created).
        overlays: ``(name, [(PIL image, title), ...])`` panels, written as ``overlays/<name>.png``.

    Returns:
        ``{"metrics_json": Path, "metrics_csv": Path, "metrics_md": Path, "overlays": [Path, ...]}``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_EPISODE_CSV_FIELDS)
    for ep in result["episodes"]:
        for t, r in enumerate(ep["tasks"]):
            w.writerow([ep["episode"], t, r["query_id"], ";".join(r["support_ids"]), f"{r['dice']:.6f}",
                        f"{r['iou']:.6f}", r["tp"], r["fp"], r["fn"], f"{ep['dice']:.6f}"])  # fmt: skip
    md = [
        "# FSMS episode evaluation", "",
        f"{result['n_episodes']} episodes × {result['n_tasks']} tasks, {result['n_shots']}-shot, seed "
        f"{result['seed']}, threshold {result['threshold']}; pool of {result['n_pool_images']} images "
        f"({result['n_support_images']} with a non-empty mask, the only ones used as supports).", "",
        "| metric | value (%) |", "|---|---|",
        f"| episode Dice (mean ± std over episodes) | {100 * result['episode_dice_mean']:.2f} ± "
        f"{100 * result['episode_dice_std']:.2f} |",
        f"| per-image Dice (mean over {result['n_queries']} queries) | {100 * result['per_image_dice_mean']:.2f} |",
        f"| per-image IoU (mean over {result['n_queries']} queries) | {100 * result['per_image_iou_mean']:.2f} |",
        "", "Episode Dice pools the pixels of the queries of an episode (reference protocol, fsms.md §4.1). "
        f"{result['n_empty_truth_queries']} queries had an empty ground truth (Dice 1.0 only if nothing was "
        "predicted). Dice values in metrics.json are fractions in 0..1.", "",
    ]  # fmt: skip
    paths: dict[str, Any] = {
        "metrics_json": write_json_atomic(out / "metrics.json", json_safe({k: v for k, v in result.items()
                                                                        if k != "files"})),
        "metrics_csv": write_text_atomic(out / "metrics.csv", buf.getvalue()),
        "metrics_md": write_text_atomic(out / "metrics.md", "\n".join(md)),
        "overlays": [],
    }  # fmt: skip
    for name, panels in overlays:
        p = out / "overlays" / f"{safe_name(name)}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            render_panels(panels).save(tmp, format="PNG")
        paths["overlays"].append(p)
    return paths


# ---------------------------------------------------------------------------------------------------- per-image
_IMAGE_METRICS = ("di", "ja", "ac", "se", "sp")


def write_image_reports(
    result: dict[str, Any], output_dir: str | os.PathLike, overlays: Sequence[tuple[str, Any]] = (), title: str = ""
) -> dict[str, Any]:
    """Write a per-image segmentation evaluation: ``metrics.json`` (``mean_dice``, ``mean_ja``, ... and
    ``per_image``), ``metrics.csv`` (one row per image), ``metrics.md`` and overlay PNGs, all atomically.

    Args:
        result: ``{"per_image": [{"name", "di", "ja", "ac", "se", "sp", "tp", "fp", "fn", "tn"}, ...],
            "mean_<metric>": ..., ...}`` (other keys are copied to metrics.json and listed in metrics.md).
        output_dir: destination folder (created).
        overlays: ``(name, PIL image)`` pairs, written as ``overlays/<name>.png``.
        title: heading of metrics.md.

    Returns:
        ``{"metrics_json", "metrics_csv", "metrics_md", "overlays": [...]}`` paths.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    fields = ["name", *_IMAGE_METRICS, "tp", "fp", "fn", "tn"]
    w.writerow(fields)
    for r in result.get("per_image", []):
        w.writerow([r["name"], *(f"{r[k]:.6f}" for k in _IMAGE_METRICS), r["tp"], r["fp"], r["fn"], r["tn"]])
    n = len(result.get("per_image", []))
    md = [f"# {title or 'Segmentation evaluation'}", "", f"{n} images; values are means over images (%).", "",
          "| metric | value (%) |", "|---|---|"]  # fmt: skip
    names = {"di": "Dice (DI)", "ja": "Jaccard (JA)", "ac": "accuracy (AC)", "se": "sensitivity (SE)",
             "sp": "specificity (SP)"}  # fmt: skip
    key = {"di": "mean_dice", "ja": "mean_ja", "ac": "mean_ac", "se": "mean_se", "sp": "mean_sp"}
    md += [f"| {names[k]} | {100 * result[key[k]]:.2f} |" for k in _IMAGE_METRICS if result.get(key[k]) is not None]
    extra = {k: v for k, v in result.items() if k != "per_image" and not k.startswith("mean_")}
    if extra:
        md += ["", *(f"- {k}: {v}" for k, v in extra.items())]
    paths: dict[str, Any] = {
        "metrics_json": write_json_atomic(out / "metrics.json", json_safe(result)),
        "metrics_csv": write_text_atomic(out / "metrics.csv", buf.getvalue()),
        "metrics_md": write_text_atomic(out / "metrics.md", "\n".join(md) + "\n"),
        "overlays": [],
    }
    for name, image in overlays:
        p = out / "overlays" / f"{safe_name(name)}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            image.save(tmp, format="PNG")
        paths["overlays"].append(p)
    return paths
