# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Result types of the volume evaluation protocol (fewshot_protocol.md §6.4): per-scan scores, per-fold and per-mode
aggregation, overlay samples. Task packages fill them; :mod:`labelless.evaluation.reports` writes them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelless.evaluation.metrics import nanmean_with_count

__all__ = ["ScanScore", "OverlaySample", "FoldResult", "ModeResult", "EvaluationResult", "fold_label"]


@dataclass
class ScanScore:
    """Scores of one query scan for one class (Dice in 0..1, distances in mm, NaN = undefined)."""

    fold: int | None
    pid: str
    class_id: int
    class_name: str
    tp: int
    fp: int
    fn: int
    dice: float
    hd95: float
    asd: float
    n_scored_slices: int
    z_range: tuple[int, int]
    mode: str = "protocol"


@dataclass
class OverlaySample:
    """One slice kept for an overlay figure: grey images as uint8, masks as bool (all (H, W))."""

    mode: str
    fold: int | None
    class_id: int
    class_name: str
    pid: str
    z: int
    query_image: np.ndarray
    prediction: np.ndarray
    truth: np.ndarray
    support_pid: str | None = None
    support_z: int | None = None
    support_image: np.ndarray | None = None
    support_mask: np.ndarray | None = None
    dice: float | None = None


@dataclass
class FoldResult:
    """Result of one fold in one mode.

    ``skipped`` lists ``(pid, class_id)`` query scans without the class (skipped with a warning in protocol mode,
    excluded and counted in gt_free mode).
    """

    fold: int | None
    mode: str
    dataset: str
    n_folds: int
    classes: list[int]
    class_names: dict[int, str]
    test_pids: list[str]
    support_pid: str | None = None
    scans: list[ScanScore] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    support_slices: dict[int, list[list[int]]] = field(default_factory=dict)
    overlays: list[OverlaySample] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def scans_of(self, class_id: int) -> list[ScanScore]:
        return [s for s in self.scans if s.class_id == int(class_id)]

    def class_dice(self) -> dict[int, float]:
        """Mean Dice over the query scans of each class (NaN for a class with no scored scan)."""
        return {c: (float(np.mean([s.dice for s in self.scans_of(c)])) if self.scans_of(c) else math.nan)
                for c in self.classes}  # fmt: skip

    def class_distance(self, metric: str) -> dict[int, tuple[float, int]]:
        """Per class: mean of ``metric`` (``"hd95"`` or ``"asd"``) over scans with a finite value, and NaN count."""
        return {c: nanmean_with_count(getattr(s, metric) for s in self.scans_of(c)) for c in self.classes}

    @property
    def mean_dice(self) -> float:
        vals = [v for v in self.class_dice().values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan


def fold_label(evaluated: Sequence[int], n_folds: int) -> str:
    ev = sorted(int(f) for f in evaluated)
    if not ev:
        return "no fold"
    if ev == list(range(n_folds)):
        return f"{n_folds}-fold"
    if len(ev) == 1:
        return f"fold {ev[0]}"
    return f"folds {', '.join(map(str, ev))} ({len(ev)} of {n_folds})"


@dataclass
class ModeResult:
    """All evaluated folds of one mode, with the aggregation of §6.4.

    Examples::

        res = evaluate(ds, predictor_for_fold, folds=(0, 1, 2, 3, 4))
        res.modes["protocol"].per_class()[1]["dice"], res.modes["protocol"].label
    """

    mode: str
    dataset: str
    n_folds: int
    classes: list[int]
    class_names: dict[int, str]
    folds: dict[int, FoldResult] = field(default_factory=dict)
    folds_missing: list[int] = field(default_factory=list)

    @classmethod
    def from_fold(cls, fr: FoldResult) -> ModeResult:
        key = -1 if fr.fold is None else int(fr.fold)
        return cls(fr.mode, fr.dataset, fr.n_folds, list(fr.classes), dict(fr.class_names), {key: fr}, [])

    @property
    def folds_evaluated(self) -> list[int]:
        return sorted(self.folds)

    @property
    def label(self) -> str:
        """``"5-fold"`` only when all folds of the dataset were evaluated, else e.g. ``"fold 0"``."""
        return fold_label([f for f in self.folds if f >= 0], self.n_folds) if self.folds else "no fold"

    @property
    def scans(self) -> list[ScanScore]:
        return [s for f in self.folds_evaluated for s in self.folds[f].scans]

    def per_fold(self) -> dict[int, dict[int, float]]:
        """fold -> class -> Dice (mean over the fold's query scans)."""
        return {f: self.folds[f].class_dice() for f in self.folds_evaluated}

    def per_class(self) -> dict[int, dict[str, Any]]:
        """class -> aggregated numbers: Dice = mean over folds of the fold means; HD95/ASD likewise (NaN scans left
        out, their number in ``*_n_nan``); ``n_scans`` scored scans; ``n_skipped`` scans without the class."""
        out: dict[int, dict[str, Any]] = {}
        for c in self.classes:
            fold_dice = {f: self.folds[f].class_dice()[c] for f in self.folds_evaluated}
            valid = [v for v in fold_dice.values() if not math.isnan(v)]
            entry: dict[str, Any] = {
                "dice": float(np.mean(valid)) if valid else math.nan,
                "dice_std_folds": float(np.std(valid)) if valid else math.nan,
                "dice_per_fold": fold_dice,
            }
            for metric in ("hd95", "asd"):
                per = [self.folds[f].class_distance(metric)[c] for f in self.folds_evaluated]
                means = [m for m, _ in per if not math.isnan(m)]
                entry[metric] = float(np.mean(means)) if means else math.nan
                entry[f"{metric}_n_nan"] = int(sum(n for _, n in per))
            entry["n_scans"] = sum(len(self.folds[f].scans_of(c)) for f in self.folds_evaluated)
            entry["n_skipped"] = sum(1 for f in self.folds_evaluated for _, cc in self.folds[f].skipped if cc == c)
            out[c] = entry
        return out

    @property
    def mean_dice(self) -> float:
        vals = [e["dice"] for e in self.per_class().values() if not math.isnan(e["dice"])]
        return float(np.mean(vals)) if vals else math.nan


@dataclass
class EvaluationResult:
    """Results of :func:`evaluate`: one :class:`ModeResult` per mode, protocol mode first."""

    modes: dict[str, ModeResult]
    folds_missing: list[int] = field(default_factory=list)

    @property
    def primary(self) -> ModeResult:
        return next(iter(self.modes.values()))
