# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""benchmarks/cltnet_pool_val.py: the pooled selection over several validation folders."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cltnet_pool_val.py"
_SPEC = importlib.util.spec_from_file_location("cltnet_pool_val", _SCRIPT)
cltnet_pool_val = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cltnet_pool_val)


def _row(ckpt: str, alpha: float, dice: float, ja: float) -> dict:
    return {"ckpt": ckpt, "iteration": 1, "postprocess": "crf", "crf_alpha": alpha, "intensity_prior": "none",
            "invert_mask": False, "flip_tta": True, "val_mean_dice": dice, "val_mean_ja": ja}  # fmt: skip


def test_pooled_scores_weight_each_folder_by_its_images_and_skip_partial_configurations(tmp_path):
    """A configuration that wins on the small folder only loses the pooled choice; one scored on one folder only is
    skipped, not pooled with missing scores."""
    big = {"val_dir": "big", "n_val_images": 12,
           "rows": [_row("a.pt", 2, 0.80, 0.70), _row("a.pt", 4, 0.90, 0.82), _row("a.pt", 8, 0.5, 0.4)]}  # fmt: skip
    small = {"val_dir": "small", "n_val_images": 4, "rows": [_row("a.pt", 2, 0.95, 0.90), _row("a.pt", 4, 0.70, 0.6)]}
    rows, skipped, sizes = cltnet_pool_val.pool([big, small])
    assert sizes == {"big": 12, "small": 4} and skipped == 1 and len(rows) == 2
    assert rows[0]["crf_alpha"] == 4 and rows[0]["val_mean_ja"] == pytest.approx((12 * 0.82 + 4 * 0.6) / 16)
    assert rows[1]["val_mean_dice"] == pytest.approx((12 * 0.80 + 4 * 0.95) / 16)
    assert rows[0]["per_folder"]["small"] == {"dice": 0.70, "ja": 0.6}
    # the command line writes the selection, and refuses two scans of one folder with different image counts
    files = []
    for name, scan in (("big", big), ("small", small)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(scan))
    out = tmp_path / "pooled.json"
    subprocess.run([sys.executable, str(_SCRIPT), *map(str, files), "--out", str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text())["selected"]["crf_alpha"] == 4
    (tmp_path / "odd.json").write_text(json.dumps({**small, "n_val_images": 5}))
    bad = subprocess.run([sys.executable, str(_SCRIPT), str(files[1]), str(tmp_path / "odd.json")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "different image counts" in bad.stderr
