# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Markdown tables of the SABR-Net results (test split) from the outputs of ``benchmarks/train_sabrnet.sh`` and
``benchmarks/sabrnet_baselines.py`` under ``runs/sabrnet/``.

    python benchmarks/sabrnet_summary.py [runs/sabrnet]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

METHODS = ("sabrnet", "sabrnet_norefine", "sabrnet_noshadow", "sabrnet_acoustic", "supervised", "mean_teacher")
NAMES = {
    "sabrnet": "SABR-Net (freeform shadows, refined)",
    "sabrnet_norefine": "SABR-Net without refinement (coarse)",
    "sabrnet_noshadow": "SABR-Net, no shadow imitation",
    "sabrnet_acoustic": "SABR-Net, acoustic shadows",
    "supervised": "supervised-only (labelled images only, 800 iterations)",
    "mean_teacher": "mean teacher (same network, 800 iterations)",
}


def _f(v: float | None, scale: float = 100.0) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.2f}"


def main(root: Path) -> None:
    for ds in ("hc18", "ddti"):
        hc = ds == "hc18"
        head = "| method | r | Dice coarse | Dice refined | IoU | HD95 px | ASD px |"
        head += " HD95 mm | HC error mm |" if hc else ""
        print(f"\n### {ds.upper()}\n\n{head}\n|" + "---|" * (head.count("|") - 1))
        for ratio in ("0.2", "0.5"):
            base = root / f"baselines_{ds}_r{ratio}.json"
            if base.is_file():
                b = json.loads(base.read_text())
                for k, label in (("all_foreground", "all foreground"), ("otsu", "Otsu threshold"),
                                 ("mean_mask", "mean labelled mask")):  # fmt: skip
                    m = b[k]
                    row = (f"| {label} | {ratio} | {_f(m['dice'])} | – | {_f(m['iou'])} | "
                           f"{_f(m['hd95_px'], 1)} | {_f(m['asd_px'], 1)} |")  # fmt: skip
                    if hc:
                        row += f" – | {_f(m.get('hc_abs_diff_mm'), 1)} |"
                    print(row)
            for method in METHODS:
                f = root / f"{ds}_r{ratio}" / method / "eval" / "test" / "metrics.json"
                if not f.is_file():
                    continue
                m = json.loads(f.read_text())
                c, r = m["coarse"], m["refined"]
                shown = c if method in ("sabrnet_norefine", "supervised", "mean_teacher") else r
                row = (f"| {NAMES[method]} | {ratio} | {_f(c['mean_dice'])} | "
                       f"{_f(r['mean_dice']) if m.get('refine') else '–'} | {_f(shown['mean_iou'])} | "
                       f"{_f(shown['mean_hd95_px'], 1)} | {_f(shown['mean_asd_px'], 1)} |")  # fmt: skip
                if hc:
                    row += f" {_f(shown.get('mean_hd95_mm'), 1)} | {_f(shown.get('mean_hc_abs_diff_mm'), 1)} |"
                print(row)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/sabrnet"))
