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
from labelless.fewshot.image.pseudo import PseudoLabelClassSource, pseudo_label_source


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


def test_pseudo_episodes_never_open_a_mask(tmp_path, monkeypatch):
    """Building the source, its classes and whole episodes reads images only: any opening of a file under masks/
    fails the test (PIL, builtins.open and io.open are all watched)."""
    root = _write_lesions(tmp_path / "skin")
    masks = str(root / "masks")
    opened: list[str] = []

    def guard(fn):
        def wrapped(fp, *args, **kwargs):
            name = str(getattr(fp, "name", fp))
            if name.startswith(masks):
                opened.append(name)
                raise AssertionError(f"a target mask was opened: {name}")
            return fn(fp, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(Image, "open", guard(Image.open))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))
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
