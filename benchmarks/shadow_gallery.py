# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""PNG galleries of the SABR-Net shadow imitation (sabrnet.md §3) on real ultrasound images.

For each dataset given (``--hc18`` and/or ``--ddti``: a folder of images, or a dataset root holding
``labeled/images`` or ``images``), ``--n`` images are drawn with ``--seed`` and shown one per row, resized to
``--size`` × ``--size`` exactly as the bundle loads them (:func:`labelless.semisup.data.load_ultrasound`), as four
panels:

1. the original image;
2. mode A (``freeform``, MAT-style holes): the network input ``x ⊙ m`` with the hole outline (keep-mask m = 0) in
   yellow;
3. mode B (``acoustic``, ``geometry="auto"``): the attenuated image;
4. the acoustic soft map A (black 0 → red → yellow 1) with the keep-mask outline (A ≥ 0.3) in cyan, the valid-data
   mask V outline in grey and the fitted field of view (sector edges or linear borders) in green.

The images are drawn with ``--seed``; the transforms are seeded with ``--seed`` (HC18) and ``--seed + 1000`` (DDTI,
so the two galleries show different holes). Each figure is written atomically as ``shadow_gallery_<dataset>.png`` in
``--out``; the geometry ``auto`` chose for every image is printed.

Usage::

    python benchmarks/shadow_gallery.py --hc18 ../shared/data/hc18 --ddti ../shared/data/ddti --out docs/images
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from labelless.data.images import list_images
from labelless.evaluation.overlays import paint_mask, render_panels
from labelless.semisup.data import load_ultrasound
from labelless.transforms.shadow import RandShadow, valid_data_mask

__all__ = ["image_folder", "pick_images", "grey_rgb", "soft_rgb", "draw_geometry", "gallery_rows", "write_png", "main"]

HOLE_COLOR = (255, 220, 0)
MASK_COLOR = (0, 230, 255)
VALID_COLOR = (140, 140, 140)
FOV_COLOR = (60, 220, 60)
_SOFT_ANCHORS = np.array([[0, 0, 0], [150, 0, 0], [255, 90, 0], [255, 220, 0], [255, 255, 200]], dtype=np.float64)


def image_folder(path: Path) -> Path:
    """The image folder of a dataset: ``path/labeled/images`` (HC18), ``path/images`` (DDTI) or ``path`` itself.

    Args:
        path: dataset root or image folder.

    Returns:
        the first of those folders that exists.
    """
    for candidate in (path / "labeled" / "images", path / "images"):
        if candidate.is_dir():
            return candidate
    return path


def pick_images(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` images of ``folder`` drawn without replacement with ``seed`` (in name order).

    Args:
        folder: image folder.
        n: number of images (all when fewer).
        seed: draw seed.

    Returns:
        the image paths.

    Raises:
        SystemExit: no image in ``folder``.
    """
    paths = sorted(list_images(folder).values())
    if not paths:
        raise SystemExit(f"no images in {folder}")
    idx = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)), replace=False)
    return [paths[i] for i in sorted(idx)]


def grey_rgb(image: torch.Tensor) -> np.ndarray:
    """A ``[C, H, W]`` image in [−1, 1] as a float ``(H, W, 3)`` display image in 0..255 (fixed window, no
    stretching, so shadows keep their darkness)."""
    grey = ((image.float().mean(0).numpy() + 1.0) / 2.0).clip(0.0, 1.0) * 255.0
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float64)


def soft_rgb(soft: torch.Tensor) -> np.ndarray:
    """A ``[1, H, W]`` soft map in [0, 1] as a float ``(H, W, 3)`` heat map in 0..255 (black → red → yellow)."""
    a = soft.float()[0].numpy().clip(0.0, 1.0)
    pos = np.linspace(0.0, 1.0, len(_SOFT_ANCHORS))
    return np.stack([np.interp(a, pos, _SOFT_ANCHORS[:, c]) for c in range(3)], axis=-1)


def draw_geometry(panel: Image.Image, geometry: dict[str, Any] | None) -> None:
    """Draw the field of view of a shadow geometry (``last_params["geometry"]``) on ``panel`` in place.

    Sector: the two edge beams from the apex to ``r_max`` and the arcs at ``r_min`` and ``r_max``; linear: the
    two border columns between ``r_min`` and ``r_max``.

    Args:
        panel: the RGB panel.
        geometry: the geometry dict (:meth:`ShadowGeometry.to_dict`) or ``None`` (nothing drawn).
    """
    if not geometry:
        return
    draw = ImageDraw.Draw(panel)
    r0, r1 = geometry["r_min"], geometry["r_max"]
    if geometry["kind"] == "sector":
        ax, ay = geometry["apex"]
        lo, hi = geometry["centre"] - geometry["half_angle"], geometry["centre"] + geometry["half_angle"]

        def point(r: float, phi: float) -> tuple[float, float]:
            return ax + r * math.sin(phi), ay + r * math.cos(phi)

        for phi in (lo, hi):
            draw.line([point(r0, phi), point(r1, phi)], fill=FOV_COLOR, width=1)
        for r in (r0, r1):
            draw.line([point(r, lo + (hi - lo) * k / 40) for k in range(41)], fill=FOV_COLOR, width=1)
    else:
        for x in (geometry["centre"] - geometry["half_angle"], geometry["centre"] + geometry["half_angle"]):
            draw.line([(x, r0), (x, r1)], fill=FOV_COLOR, width=1)


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))


def gallery_rows(paths: list[Path], size: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """One 4-panel row per image (see the module docstring) and a line per image naming the chosen geometry.

    Args:
        paths: image files.
        size: panel side (images are resized to ``size`` × ``size``).
        seed: seed of both transforms (drawn in sequence over ``paths``).

    Returns:
        ``(rows, lines)``.
    """
    freeform, acoustic = RandShadow("freeform"), RandShadow("acoustic", geometry="auto")
    freeform.set_random_state(seed)
    acoustic.set_random_state(seed + 1)
    rows, lines = [], []
    for path in paths:
        x = load_ultrasound(path, size)
        x_ff, keep_ff, _ = freeform(x)
        hole_ff = freeform.last_params["hole_ratio"]
        x_ac, keep_ac, soft_ac = acoustic(x)
        params = acoustic.last_params
        geom = params.get("geometry") or {}
        kind, shadows = geom.get("kind", "none"), params.get("shadows", [])
        rules = ",".join(s["rule"].replace("_fallback", "*") for s in shadows)

        ff = paint_mask(grey_rgb(x_ff), keep_ff[0].numpy() == 0, HOLE_COLOR, fill=False)
        soft = soft_rgb(soft_ac)
        valid = valid_data_mask((x.mean(0).numpy() + 1.0) / 2.0)
        paint_mask(soft, valid, VALID_COLOR, fill=False)
        paint_mask(soft, keep_ac[0].numpy() == 0, MASK_COLOR, fill=False)
        soft_panel = _to_image(soft)
        draw_geometry(soft_panel, geom)
        hole_ac = 100 * params["hole_ratio"]
        name = path.stem if len(path.stem) <= 22 else path.stem[:21] + "~"
        panels = [
            (_to_image(grey_rgb(x)), name),
            (_to_image(ff), f"freeform holes {100 * hole_ff:.0f}%"),
            (_to_image(grey_rgb(x_ac)), f"acoustic auto={kind} n={len(shadows)}"),
            (soft_panel, f"soft A max {float(soft_ac.max()):.2f} m {hole_ac:.0f}%"),
        ]
        rows.append(render_panels(panels))
        lines.append(f"  {path.name}: auto geometry {kind}, {len(shadows)} shadow(s) [{rules}], "
                     f"keep-mask hole {hole_ac:.1f}%, freeform hole {100 * hole_ff:.1f}%")  # fmt: skip
    return rows, lines


def write_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as an optimised PNG atomically (temporary file in the same folder, then :func:`os.replace`).

    Args:
        image: the figure.
        path: destination.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG", optimize=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hc18", type=Path, default=None, help="HC18 root or image folder")
    parser.add_argument("--ddti", type=Path, default=None, help="DDTI root or image folder")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="output folder")
    parser.add_argument("--n", type=int, default=4, help="images (rows) per dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image draw and of the transforms")
    parser.add_argument("--size", type=int, default=256, help="panel side in pixels")
    args = parser.parse_args(argv)
    datasets = {name: root for name, root in (("hc18", args.hc18), ("ddti", args.ddti)) if root is not None}
    if not datasets:
        parser.error("give --hc18 and/or --ddti")
    torch.set_num_threads(1)
    for name, root in datasets.items():
        folder = image_folder(root)
        seed = args.seed + (1000 if name == "ddti" else 0)  # DDTI gets other shadow draws than HC18
        rows, lines = gallery_rows(pick_images(folder, args.n, args.seed), args.size, seed)
        fig = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)))
        for i, row in enumerate(rows):
            fig.paste(row, (0, i * rows[0].height))
        out = write_png(fig, args.out / f"shadow_gallery_{name}.png")
        print(f"{out} ({out.stat().st_size / 1024:.0f} KB, {len(rows)} images of {folder})")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
