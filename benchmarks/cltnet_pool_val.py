# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Pool the scans of :mod:`cltnet_val_select` on several validation folders (e.g. the ISIC-2016 val split and the
CLTNet ISIC sample val folder) into one selection: each configuration's score is the mean over all the pooled
images (each folder's mean weighted by its image count), and the best configuration by pooled JA is selected
(cltnet.md §8: validation images only).

    python benchmarks/cltnet_pool_val.py runs/cltnet/run/sel/a4_4800.json runs/cltnet/run/sel/sv_a4_4800.json \
        [more scans...] --out pooled.json [--top 10]

Every argument is one scan (``--out`` of ``cltnet_val_select.py``); scans of the same validation folder (e.g. of
several checkpoints) are concatenated, then the folders are pooled. A configuration is pooled only when every folder
scored it; the others are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from labelless.utils import write_json_atomic

KEY = ("ckpt", "postprocess", "crf_alpha", "intensity_prior", "invert_mask", "flip_tta")


def pool(scans: list[dict]) -> tuple[list[dict], int, dict[str, int]]:
    """Pooled rows (``val_mean_dice`` / ``val_mean_ja`` over all images), the number of configurations skipped
    (not scored on every folder), and the image count of each folder."""
    by_dir: dict[str, dict[tuple, dict]] = defaultdict(dict)
    sizes: dict[str, int] = {}
    for scan in scans:
        folder = str(scan["val_dir"])
        n = int(scan["n_val_images"])
        if sizes.setdefault(folder, n) != n:
            raise SystemExit(f"two scans of {folder} report different image counts ({sizes[folder]} and {n})")
        for row in scan["rows"]:
            by_dir[folder][tuple(row[k] for k in KEY)] = row
    keys = set.intersection(*(set(rows) for rows in by_dir.values()))
    skipped = len(set.union(*(set(rows) for rows in by_dir.values())) - keys)
    total = sum(sizes.values())
    pooled = []
    for key in keys:
        row = dict(zip(KEY, key))
        row["iteration"] = next(iter(by_dir.values()))[key].get("iteration", -1)
        for m in ("val_mean_dice", "val_mean_ja"):
            row[m] = sum(sizes[d] * by_dir[d][key][m] for d in by_dir) / total
        row["per_folder"] = {d: {"dice": by_dir[d][key]["val_mean_dice"], "ja": by_dir[d][key]["val_mean_ja"]}
                             for d in by_dir}  # fmt: skip
        pooled.append(row)
    pooled.sort(key=lambda r: r["val_mean_ja"], reverse=True)
    return pooled, skipped, sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="+", help="JSON files written by cltnet_val_select.py --out")
    ap.add_argument("--out", default=None)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    scans = [json.loads(Path(p).read_text()) for p in args.scans]
    rows, skipped, sizes = pool(scans)
    if not rows:
        raise SystemExit("no configuration was scored on every validation folder")
    print(f"pooled {sum(sizes.values())} images: " + ", ".join(f"{d} ({n})" for d, n in sizes.items()))
    if skipped:
        print(f"{skipped} configuration(s) not scored on every folder: skipped")
    for r in rows[: args.top]:
        folders = "  ".join(f"{100 * v['dice']:6.2f}" for v in r["per_folder"].values())
        alpha = f"(α={r['crf_alpha']:g})" if r["postprocess"] == "crf" else ""
        print(f"{r['ckpt']}  {r['postprocess']}{alpha}  flip_tta={str(r['flip_tta']).lower():5s}  "
              f"invert_mask={str(r['invert_mask']).lower():5s}  pooled DI {100 * r['val_mean_dice']:6.2f}  "
              f"JA {100 * r['val_mean_ja']:6.2f}  (DI per folder {folders})")  # fmt: skip
    out = {"selected": rows[0], "val_dirs": sizes, "n_val_images": sum(sizes.values()), "rows": rows}
    print(json.dumps({k: v for k, v in rows[0].items() if k != "per_folder"}))
    if args.out:
        write_json_atomic(Path(args.out), out)


if __name__ == "__main__":
    main()
