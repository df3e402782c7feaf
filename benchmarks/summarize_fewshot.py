# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Markdown rows (Dice in %) from few-shot evaluation folders (``metrics.json`` of ``FewShotVolumeEvaluationRunner``).

Each argument is ``LABEL=FOLDER[+FOLDER...]``; several folders are merged class by class (Setting 2: label set 0 gives
the kidneys, label set 1 liver and spleen). Prints one row per label for the protocol mode and, where present, the
GT-free mode, in the column order LIVER, RK, LK, SPLEEN, mean.

Usage::

    python benchmarks/summarize_fewshot.py "DSPNet S1=runs/dspnet_fewshot_segmentation/eval_s1"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["rows", "main"]

CLASSES = ("LIVER", "RK", "LK", "SPLEEN")


def _dice(metrics: dict, mode: str) -> dict[str, float]:
    block = metrics if metrics.get("mode") == mode else metrics.get(mode)
    if not isinstance(block, dict):
        return {}
    return {c: 100.0 * v["dice"] for c, v in block.get("per_class", {}).items() if v.get("dice") is not None}


def rows(spec: str) -> list[str]:
    """Markdown rows of one ``LABEL=FOLDER[+FOLDER...]`` argument."""
    label, _, folders = spec.partition("=")
    out = []
    for mode in ("protocol", "gt_free"):
        merged: dict[str, float] = {}
        for folder in folders.split("+"):
            path = Path(folder) / "metrics.json"
            if not path.is_file():
                raise SystemExit(f"{path}: not found (run the evaluation first)")
            merged.update(_dice(json.loads(path.read_text()), mode))
        if not merged:
            continue
        cells = [f"{merged[c]:.2f}" if c in merged else "—" for c in CLASSES]
        present = [merged[c] for c in CLASSES if c in merged]
        mean = f"{sum(present) / len(present):.2f}" if len(present) == len(CLASSES) else "—"
        out.append(f"| {label}, {mode.replace('_', '-')} mode | " + " | ".join(cells) + f" | {mean} |")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        return 2
    print("| | LIVER | RK | LK | SPLEEN | mean |\n|---|---|---|---|---|---|")
    for spec in args:
        print("\n".join(rows(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
