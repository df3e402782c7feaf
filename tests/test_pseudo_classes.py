# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Label-free meta-training classes (issue 14): superpixel/region pseudo-labels of unlabelled images, built without
reading any mask, mixed with the labelled classes at a configured ratio, seeded and reproducible."""

from __future__ import annotations

import builtins
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelless.data.images import ImageFolderPool
from labelless.errors import ConfigError, DataError
from labelless.fewshot.image.episodes import MetaTrainEpisodes
from labelless.fewshot.image.pseudo import (
    DarkRegionClassSource,
    PseudoLabelClassSource,
    dark_region_mask,
    pseudo_label_source,
)


def _write_lesions(folder: Path, n: int = 6, size: int = 64) -> Path:
    """Skin-like images with a dark blob and a mask folder next to them (the masks must never be read)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 16)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img = np.stack([np.full((size, size), 200.0), np.full((size, size), 160.0), np.full((size, size), 140.0)], -1)
        img[blob] *= 0.4
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"img{i}.png")
        Image.fromarray((blob * 255).astype(np.uint8)).save(folder / "masks" / f"img{i}.png")
    return folder


class _Classes:
    """A tiny labelled class source (two classes of squares)."""

    classes = ["square", "bar"]
    ids = {"square": ["0", "1", "2"], "bar": ["0", "1", "2"]}

    def load_pair(self, cls: str, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.zeros(1, 64, 64)
        if cls == "square":
            m[:, 10 + idx : 30 + idx, 10:30] = 1
        else:
            m[:, 5:60, 30 + idx : 36 + idx] = 1
        return m.expand(3, -1, -1).clone() * 0.8, m


def _forbid_opening(monkeypatch, folder: Path) -> list[str]:
    """Make any opening of a file under ``folder`` fail (PIL, builtins.open, io.open); returns the list of tries."""
    opened: list[str] = []

    def guard(fn):
        def wrapped(fp, *args, **kwargs):
            name = str(getattr(fp, "name", fp))
            if name.startswith(str(folder)):
                opened.append(name)
                raise AssertionError(f"a target mask was opened: {name}")
            return fn(fp, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(Image, "open", guard(Image.open))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))
    return opened


def test_pseudo_episodes_never_open_a_mask(tmp_path, monkeypatch):
    """Building the source, its classes and whole episodes reads images only: any opening of a file under masks/
    fails the test (PIL, builtins.open and io.open are all watched)."""
    root = _write_lesions(tmp_path / "skin")
    opened = _forbid_opening(monkeypatch, root / "masks")
    pools = {"unlabeled": ImageFolderPool(root / "images", size=64)}
    source = pseudo_label_source(pools, [root / "images"], image_size=64, fraction=0.5, classes_per_image=3)
    assert len(source.classes) == 6 * 3  # the two inputs name the same files: one id per file
    ds = MetaTrainEpisodes(_Classes(), n_episodes=4, n_tasks=5, n_shots=1, unlabeled_pool=pools["unlabeled"],
                           n_unlabeled=2, seed=0, pseudo_source=source, pseudo_fraction=0.5)  # fmt: skip
    items = [ds[i] for i in range(4)]
    assert not opened
    pseudo_tasks = [c for it in items for c in it["classes"] if c.startswith("pseudo/")]
    assert pseudo_tasks, "no pseudo-label task in 20 draws at fraction 0.5"
    for it in items:
        assert it["support_label"].shape == (5, 1, 1, 64, 64)
        assert bool((it["support_label"].flatten(1).amax(1) > 0).all())  # supports never empty


def test_pseudo_source_is_seeded_and_views_differ(tmp_path):
    root = _write_lesions(tmp_path / "skin")
    pool = ImageFolderPool(root / "images", size=64)
    a = PseudoLabelClassSource(pool, classes_per_image=2, n_views=4, seed=3)
    b = PseudoLabelClassSource(pool, classes_per_image=2, n_views=4, seed=3)
    cls = a.classes[1]
    assert a.ids(cls) == ["v0", "v1", "v2", "v3"]
    for v in range(4):
        ia, ma = a.load_pair(cls, v)
        ib, mb = b.load_pair(cls, v)
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
        assert ia.shape == (3, 64, 64) and ma.shape == (1, 64, 64) and bool(ma.any())
        assert set(torch.unique(ma).tolist()) <= {0.0, 1.0} and float(ia.min()) >= 0 and float(ia.max()) <= 1
    assert not torch.equal(a.load_pair(cls, 0)[1], a.load_pair(cls, 1)[1])  # two views of one segment
    # the same segment under every view: the untransformed pseudo-label is a function of (seed, image, slot)
    assert torch.equal(a.segment_mask(cls)[1], b.segment_mask(cls)[1])
    # area rule: the chosen segment covers between min_area and max_area of the image
    frac = float(a.segment_mask(cls)[1].mean())
    assert 0.02 <= frac <= 0.6
    # the dark blob is found by the region method on these images: some class of each image overlaps it well
    gt = torch.from_numpy(np.array(Image.open(root / "masks" / "img0.png")) > 0)
    c = PseudoLabelClassSource(pool, classes_per_image=6, methods=["region"], seed=0)
    best = max(
        float((m[0] > 0).logical_and(gt).sum() * 2 / ((m[0] > 0).sum() + gt.sum()))
        for m in (c.segment_mask(f"pseudo/img0/{j}")[1] for j in range(6))
    )
    assert best > 0.8


def test_episode_draws_are_reproducible_and_unchanged_without_pseudo(tmp_path):
    root = _write_lesions(tmp_path / "skin")
    pool = ImageFolderPool(root / "images", size=64)
    src = PseudoLabelClassSource(pool, classes_per_image=2)
    plain = MetaTrainEpisodes(_Classes(), n_episodes=5, n_tasks=3, seed=1)
    off = MetaTrainEpisodes(_Classes(), n_episodes=5, n_tasks=3, seed=1, pseudo_source=src, pseudo_fraction=0.0)
    assert [plain.draw(i) for i in range(5)] == [off.draw(i) for i in range(5)]
    on1 = MetaTrainEpisodes(_Classes(), n_episodes=5, n_tasks=3, seed=1, pseudo_source=src, pseudo_fraction=1.0)
    on2 = MetaTrainEpisodes(_Classes(), n_episodes=5, n_tasks=3, seed=1, pseudo_source=src, pseudo_fraction=1.0)
    assert all(c.startswith("pseudo/") for i in range(5) for c in on1.draw(i)["classes"])
    x, y = on1[2], on2[2]
    assert all(torch.equal(x[k], y[k]) for k in ("support_image", "support_label", "query_image", "query_label"))


def test_pseudo_options_fail_with_a_clear_message(tmp_path):
    root = _write_lesions(tmp_path / "skin", n=2)
    pool = ImageFolderPool(root / "images", size=64)
    assert pseudo_label_source({"unlabeled": pool}, None, 64, fraction=0) is None
    with pytest.raises(ConfigError, match="pseudo_fraction must be in"):
        pseudo_label_source({"unlabeled": pool}, None, 64, fraction=1.5)
    with pytest.raises(ConfigError, match="needs unlabelled images"):
        pseudo_label_source({}, None, 64, fraction=0.5)
    with pytest.raises(DataError, match="does not exist"):
        pseudo_label_source({}, [tmp_path / "nowhere"], 64, fraction=0.5)
    with pytest.raises(ConfigError, match="methods"):
        PseudoLabelClassSource(pool, methods=["kmeans"])
    with pytest.raises(ConfigError, match="min_area"):
        PseudoLabelClassSource(pool, min_area=0.7, max_area=0.6)
    with pytest.raises(ConfigError, match="pseudo_fraction"):
        MetaTrainEpisodes(_Classes(), n_episodes=1, pseudo_source=PseudoLabelClassSource(pool), pseudo_fraction=-1)
    src = PseudoLabelClassSource(pool, n_views=2)
    with pytest.raises(DataError, match="n_shots"):
        MetaTrainEpisodes(_Classes(), n_episodes=1, n_shots=2, pseudo_source=src, pseudo_fraction=0.5)
    with pytest.raises(KeyError, match="unknown pseudo-label class"):
        src.load_pair("pseudo/img9/0", 0)
    # a constant image has no segment: one line naming the image
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    flat = PseudoLabelClassSource(ImageFolderPool([tmp_path / "flat.png"], size=64))
    with pytest.raises(DataError, match="flat"):
        flat.load_pair(flat.classes[0], 0)


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float(2 * (a & b).sum() / (a.sum() + b.sum()).clamp_min(1))


def test_dark_region_class_pairs_images_without_reading_masks(tmp_path, monkeypatch):
    """kind="dark": one class across images, its pseudo-labels are the dark blobs (checked against the true masks,
    read before the guard), tasks pair different images, and no mask file is opened while building episodes."""
    root = _write_lesions(tmp_path / "skin", n=8)
    pool_for_gt = ImageFolderPool(root / "images", size=64)
    gts = {
        pid: torch.from_numpy(np.array(Image.open(root / "masks" / f"{pid}.png")) > 0) for pid in pool_for_gt.image_ids
    }
    opened = _forbid_opening(monkeypatch, root / "masks")
    pools = {"unlabeled": ImageFolderPool(root / "images", size=64)}
    src = pseudo_label_source(pools, None, image_size=64, fraction=1.0, kind="dark", classes_per_image=3, n_views=4)
    assert isinstance(src, DarkRegionClassSource) and src.classes == ["pseudo/dark"]
    assert len(src.image_ids) == 8 and not src.skipped and len(src.ids("pseudo/dark")) == 32
    for pid in src.image_ids:
        assert _dice(src.region_mask(pid)[0], gts[pid]) > 0.85, pid
    ds = MetaTrainEpisodes(_Classes(), n_episodes=6, n_tasks=4, n_shots=1, seed=0, pseudo_source=src,
                           pseudo_fraction=1.0)  # fmt: skip
    pairs = []
    for i in range(6):
        d = ds.draw(i)
        assert d["classes"] == ["pseudo/dark"] * 4
        ids = src.ids("pseudo/dark")
        pairs += [(ids[s[0]].split("/")[0], ids[q].split("/")[0]) for s, q in zip(d["supports"], d["queries"])]
        item = ds[i]
        assert bool((item["support_label"].flatten(1).amax(1) > 0).all())
    assert not opened
    assert sum(a != b for a, b in pairs) >= len(pairs) - 2  # support and query nearly always from two images


def test_dark_region_mask_rules_and_seeded_views(tmp_path):
    size = 64
    yy, xx = np.mgrid[:size, :size]
    skin = torch.full((3, size, size), 0.8)
    # dark corners only (vignetting): no region
    corners = skin.clone()
    corners[:, ((yy - 31.5) ** 2 + (xx - 31.5) ** 2) > 40**2] = 0.2
    assert dark_region_mask(corners) is None
    # a dark blob plus dark corners: the blob is chosen, with its hole filled
    both = corners.clone()
    blob = ((yy - 30) ** 2 + (xx - 34) ** 2) < 12**2
    both[:, torch.from_numpy(blob)] = 0.25
    both[:, 29:32, 33:36] = 0.8  # a bright hole inside the blob
    m = dark_region_mask(both, sigma=0.5)
    assert m is not None and _dice(torch.from_numpy(m), torch.from_numpy(blob)) > 0.95 and m[30, 34]
    assert dark_region_mask(torch.full((3, size, size), 0.5)) is None  # constant image
    assert dark_region_mask(both, sigma=0.5, max_area=0.05) is None  # region larger than max_area
    root = _write_lesions(tmp_path / "skin", n=3)
    pool = ImageFolderPool(root / "images", size=64)
    a, b = DarkRegionClassSource(pool, n_views=3, seed=5), DarkRegionClassSource(pool, n_views=3, seed=5)
    for idx in range(9):
        (ia, ma), (ib, mb) = a.load_pair("pseudo/dark", idx), b.load_pair("pseudo/dark", idx)
        assert torch.equal(ia, ib) and torch.equal(ma, mb) and bool(ma.any())
        assert set(torch.unique(ma).tolist()) <= {0.0, 1.0}
    assert not torch.equal(a.load_pair("pseudo/dark", 0)[1], a.load_pair("pseudo/dark", 1)[1])
    c = DarkRegionClassSource(pool, n_views=3, seed=6)
    assert not torch.equal(a.load_pair("pseudo/dark", 0)[0], c.load_pair("pseudo/dark", 0)[0])


def test_dark_region_options_fail_with_a_clear_message(tmp_path):
    root = _write_lesions(tmp_path / "skin", n=2)
    pool = ImageFolderPool(root / "images", size=64)
    with pytest.raises(ConfigError, match="pseudo_kind must be"):
        pseudo_label_source({"unlabeled": pool}, None, 64, fraction=0.5, kind="bright")
    with pytest.raises(ConfigError, match="min_area"):
        DarkRegionClassSource(pool, min_area=0.9, max_area=0.5)
    src = DarkRegionClassSource(pool, n_views=2)
    with pytest.raises(KeyError, match="unknown dark-region class"):
        src.load_pair("pseudo/img0/0", 0)
    with pytest.raises(IndexError, match="out of range"):
        src.load_pair("pseudo/dark", 4)
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    flat = ImageFolderPool([tmp_path / "flat.png", root / "images" / "img0.png"], size=64)
    with pytest.raises(DataError, match="only 1 of 2 unlabelled images have a dark region"):
        DarkRegionClassSource(flat)


def test_dark_region_zoomed_views_at_oversampled_resolution(tmp_path, monkeypatch):
    """``oversample=2`` reads the unlabelled images at twice the episode size, finds the dark region there and
    downsamples each view: the views have the episode size, binary non-empty masks that still match the blob (the
    view of the untransformed image equals the area-downsampled 2× image), no mask file is opened, and a zoom range
    above 1 gives views whose region covers more of the frame."""
    root = _write_lesions(tmp_path / "skin", n=4, size=128)
    opened = _forbid_opening(monkeypatch, root / "masks")
    pools = {"unlabeled": ImageFolderPool(root / "images", size=32)}
    src = pseudo_label_source(pools, None, image_size=32, fraction=1.0, kind="dark", oversample=2, n_views=6,
                              scale=(1.5, 2.0), rotation=0.0, translation=0.0, colour=0.0)  # fmt: skip
    assert isinstance(src, DarkRegionClassSource) and src.output_size == 32 and src.sigma == 4.0
    flat = pseudo_label_source(pools, None, image_size=32, fraction=1.0, kind="dark", n_views=6, rotation=0.0,
                               translation=0.0, colour=0.0)  # fmt: skip
    zoom_area, flat_area = [], []
    for idx in range(len(src.ids("pseudo/dark"))):
        img, msk = src.load_pair("pseudo/dark", idx)
        assert img.shape == (3, 32, 32) and msk.shape == (1, 32, 32) and bool(msk.any())
        assert set(torch.unique(msk).tolist()) <= {0.0, 1.0}
        zoom_area.append(float(msk.mean()))
        flat_area.append(float(flat.load_pair("pseudo/dark", idx)[1].mean()))
    assert np.mean(zoom_area) > 1.5 * np.mean(flat_area)
    pid = src.image_ids[0]
    big = src._image(pid)
    assert big.shape == (3, 64, 64)
    small_img, small_msk = src._resized(big, src.region_mask(pid))
    expected = torch.nn.functional.interpolate(big[None], size=(32, 32), mode="area")[0]
    assert torch.allclose(small_img, expected)
    assert _dice(small_msk[0], flat.region_mask(pid)[0] > 0) > 0.85
    assert not opened


def test_view_options_fail_with_a_clear_message(tmp_path):
    root = _write_lesions(tmp_path / "skin", n=2)
    pool = ImageFolderPool(root / "images", size=64)
    with pytest.raises(ConfigError, match="scale must be"):
        DarkRegionClassSource(pool, scale=(0.8, 1.2, 2.0))
    with pytest.raises(ConfigError, match="scale must be"):
        DarkRegionClassSource(pool, scale=(2.0, 1.0))
    with pytest.raises(ConfigError, match="only used by pseudo_kind 'dark'"):
        pseudo_label_source({"unlabeled": pool}, None, 64, fraction=0.5, kind="segments", oversample=2)
    with pytest.raises(ConfigError, match="pseudo_oversample"):
        pseudo_label_source({"unlabeled": pool}, None, 64, fraction=0.5, kind="dark", oversample=0)
