# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The semi-supervised ultrasound data layer (labelless.semisup.data) and the synthetic set (semisup.synthetic)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from PIL import Image

from conftest import shared_data_dir
from labelless.errors import ConfigError, DataError
from labelless.semisup import data as ssd
from labelless.semisup import synthetic
from labelless.semisup.data import (
    SemiSupDataset,
    SemiSupItem,
    build_split,
    case_id,
    detect_layout,
    labeled_cases,
    load_label,
    load_ultrasound,
    read_ultrasound,
    split_cases,
    ultrasound_size,
)
from labelless.semisup.synthetic import (
    default_ultrasound_dir,
    make_ultrasound_phantom,
    write_synthetic_ultrasound,
)


# ---------------------------------------------------------------------------------------------- helpers
def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _grey(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _mask(h: int = 24, w: int = 32) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    return m


def _one_line(err: pytest.ExceptionInfo, name: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and name in msg, msg


def _folders(root: Path, n: int = 10, mask_dir: str = "masks", n_unlabeled: int = 0) -> Path:
    """A folders-layout set: images p<k>_<j>.png (two images per patient k) and masks."""
    for i in range(n):
        name = f"p{i // 2}_{i % 2}"
        _png(root / "images" / f"{name}.png", _grey(seed=i))
        _png(root / mask_dir / f"{name}.png", _mask())
    for j in range(n_unlabeled):
        _png(root / "unlabeled" / f"u{j}.png", _grey(seed=100 + j))
    return root


@pytest.fixture(scope="module")
def head_set(tmp_path_factory) -> Path:
    """A small synthetic HC18-layout set (the writer adds NNN_2HC repeats)."""
    out = tmp_path_factory.mktemp("synthetic") / "head"
    return write_synthetic_ultrasound(out, "head", n_labeled=18, n_unlabeled=3, seed=3, size=48)


def _parts_by_case(split) -> dict[str, set[str]]:
    return {k: {i.case for i in v} for k, v in split.parts().items()}


def _check_by_case(split) -> None:
    cases = _parts_by_case(split)
    names = ("labeled", "unlabeled", "val", "test")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not cases[a] & cases[b], (a, b, cases[a] & cases[b])
    assert all(item.label is None for item in split.unlabeled)
    assert all(item.label is not None for part in (split.labeled, split.val, split.test) for item in part)


# ---------------------------------------------------------------------------------------------- split
def test_split_cases_is_by_case_seeded_and_complete():
    ids = [f"{i:03d}" for i in range(20)] + ["003", "003", "007"]  # repeats of a case
    a = split_cases(ids, seed=0)
    assert a == split_cases(list(reversed(ids)), seed=0)  # reproducible, order-free
    assert a != split_cases(ids, seed=1)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(set(ids))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 2, 4)
    for n in (3, 4, 5):
        parts = split_cases([str(i) for i in range(n)], seed=5)
        assert all(parts[k] for k in ("train", "val", "test")), parts
    assert split_cases(["a", "b"], seed=0)["train"]  # two cases: train keeps one
    assert split_cases(["x"])["train"] == ["x"]
    assert split_cases([str(i) for i in range(10)], fractions=(0.8, 0.0, 0.2))["val"] == []
    with pytest.raises(ConfigError):
        split_cases(ids, fractions=(0.5, 0.1, 0.1))
    with pytest.raises(DataError):
        split_cases([])


def test_labeled_cases_inside_train_and_nested():
    train = [str(i) for i in range(30)]
    small, big = labeled_cases(train, 0.2, seed=4), labeled_cases(train, 0.5, seed=4)
    assert len(small) == 6 and len(big) == 15 and set(small) <= set(big) <= set(train)
    assert labeled_cases(train, 0.2, seed=4) == small
    assert len(labeled_cases(["a", "b"], 0.01)) == 1
    with pytest.raises(ConfigError):
        labeled_cases(train, 0.0)


def test_case_ids():
    assert case_id("012_2HC", ssd._NUMBER_PREFIX) == "012"
    assert case_id("102_1(2)", ssd._NUMBER_PREFIX) == "102"
    assert case_id("img_7") == "img_7"
    assert case_id("patient0004_2CH_ED", r"^(patient\d+)") == "patient0004"
    assert case_id("other", r"^(\d+)_") == "other"


def test_hc18_layout_on_synthetic_set(head_set):
    assert detect_layout(head_set) == "hc18"
    names = sorted(p.stem for p in (head_set / "labeled" / "images").iterdir())
    assert any("_2HC" in n for n in names)
    for ratio in (0.2, 0.5):
        split = build_split(head_set, labeled_ratio=ratio, seed=0)
        _check_by_case(split)
        assert split.layout == "hc18"
        assert split == build_split(head_set, labeled_ratio=ratio, seed=0)  # reproducible
        train_cases = split_cases([case_id(n, ssd._NUMBER_PREFIX) for n in names], seed=0)["train"]
        labelled = _parts_by_case(split)["labeled"]
        assert labelled <= set(train_cases) and len(labelled) == max(1, round(ratio * len(train_cases)))
        # repeats stay with their fetus
        by_case: dict[str, set[str]] = {}
        for part, items in split.parts().items():
            for item in items:
                by_case.setdefault(item.case, set()).add(part)
        assert all(len(v) == 1 for v in by_case.values())
        pool = [i for i in split.unlabeled if i.case.startswith("unlabeled/")]
        assert len(pool) == 3
        assert all(i.pixel_size and i.hc_mm for i in split.labeled + split.val + split.test)
        manifest = split.manifest()
        json.dumps(manifest)
        assert manifest["seed"] == 0 and manifest["labeled_ratio"] == ratio and manifest["layout"] == "hc18"
        assert manifest["counts"]["unlabeled"] == len(split.unlabeled)
        assert manifest["source"] == str(head_set)
    assert build_split(head_set, seed=0) != build_split(head_set, seed=1)


def test_eval_split_all_and_val(head_set):
    split = build_split(head_set, eval_split="all")
    n = len(list((head_set / "labeled" / "images").iterdir()))
    assert len(split.test) == n and split.labeled == [] and split.val == []
    assert split.eval_items() is split.test and split.manifest()["labeled_ratio"] is None
    val = build_split(head_set, eval_split="val")
    assert val.eval_items() is val.val and val.val
    with pytest.raises(ConfigError):
        build_split(head_set, eval_split="train")
    with pytest.raises(ConfigError):
        build_split(head_set, labeled_ratio=1.5)


def test_folders_layout_custom_mask_dir_and_pattern(tmp_path):
    root = _folders(tmp_path / "mine", n=12, mask_dir="labels", n_unlabeled=2)
    with pytest.raises(DataError) as err:
        detect_layout(root)  # no masks/ folder: the message lists what was expected
    _one_line(err, "mine")
    assert "labeled/images" in str(err.value) and "label_data/image" in str(err.value)
    assert detect_layout(root, mask_dir="labels") == "folders"
    split = build_split(root, mask_dir="labels", labeled_ratio=0.5, seed=2)
    _check_by_case(split)
    assert len({i.case for p in split.parts().values() for i in p}) == 12 + 2  # default: one case per image
    grouped = build_split(root, mask_dir="labels", case_pattern=r"^(p\d+)_", seed=2)
    _check_by_case(grouped)
    assert {i.case for i in grouped.test} <= {f"p{k}" for k in range(6)}
    assert sum(1 for i in grouped.unlabeled if i.case.startswith("unlabeled/")) == 2
    no_pool = _folders(tmp_path / "nopool", n=6)
    assert build_split(no_pool).unlabeled is not None  # the unlabelled folder is optional here
    with pytest.raises(DataError) as err:
        build_split(no_pool, require_unlabeled=True)
    _one_line(err, "unlabeled")


def test_empty_unlabelled_folder_is_an_error_when_required(head_set, tmp_path):
    copy = tmp_path / "hc"
    for sub in ("labeled/images", "labeled/masks"):
        (copy / sub).mkdir(parents=True)
        for f in (head_set / sub).iterdir():
            os.symlink(f, copy / sub / f.name)
    (copy / "unlabeled").mkdir()
    with pytest.raises(DataError) as err:
        build_split(copy)
    _one_line(err, str(copy / "unlabeled"))
    assert len(build_split(copy, eval_split="all").test) > 0  # a test set needs no pool
    root = _folders(tmp_path / "f", n=6)
    (root / "unlabeled").mkdir()
    with pytest.raises(DataError) as err:
        build_split(root, require_unlabeled=True)
    _one_line(err, "unlabeled")


def test_bad_masks_and_images(tmp_path):
    root = _folders(tmp_path / "size", n=6)
    _png(root / "masks" / "p1_0.png", _mask(20, 32))
    with pytest.raises(DataError) as err:
        build_split(root, eval_split="all")
    _one_line(err, "p1_0.png")
    assert "size" in str(err.value)

    root = _folders(tmp_path / "missing", n=6)
    (root / "masks" / "p2_1.png").unlink()
    with pytest.raises(DataError) as err:
        build_split(root)
    _one_line(err, "p2_1.png")

    root = _folders(tmp_path / "broken", n=6)
    (root / "images" / "p0_1.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        build_split(root)
    _one_line(err, "p0_1.png")
    with pytest.raises(DataError) as err:
        load_ultrasound(root / "images" / "p0_1.png", 16)
    _one_line(err, "p0_1.png")


def _reference(root: Path) -> Path:
    img, lab, u = root / "label_data" / "image", root / "label_data" / "label", root / "unlabel_data" / "image"
    for i in range(8):
        _png(img / f"case{i}.png", _grey(seed=i))
        label = (_mask() > 0).astype(np.uint8)  # class indices 0/1
        _png(lab / f"case{i}.png", label * (255 if i == 0 else 1))  # 255 is read as 1
    for j in range(3):
        _png(u / f"u{j}.png", _grey(seed=50 + j))
    lists = {
        "train_full_list.txt": "case0.png\ncase1.png\ncase2.png\n",
        "train_20_list.txt": "case0\n",
        "val_full_list.txt": "case3.png\n",
        "test_list.txt": "case4.png\ncase5.png\n\n# comment\n",
    }
    for name, text in lists.items():
        (root / "label_data" / name).write_text(text)
    (root / "unlabel_data" / "unlabel_list.txt").write_text("u0.png\nu1.png\nu2.png\n")
    (root / "unlabel_data" / "unlabel_list_20.txt").write_text("u0.png\n")
    return root


def test_reference_layout_lists(tmp_path):
    root = _reference(tmp_path / "ref")
    assert detect_layout(root) == "reference"
    split = build_split(root)
    assert [i.name for i in split.labeled] == ["case0", "case1", "case2"]
    assert [i.name for i in split.val] == ["case3"] and [i.name for i in split.test] == ["case4", "case5"]
    assert [i.name for i in split.unlabeled] == ["u0", "u1", "u2"] and all(i.label is None for i in split.unlabeled)
    assert split.manifest()["labeled_ratio"] is None
    v20 = build_split(root, list_variant=20)
    assert [i.name for i in v20.labeled] == ["case0"] and [i.name for i in v20.unlabeled] == ["u0"]
    assert [i.name for i in v20.val] == ["case3"]  # val_20 missing: the full val list
    assert len(build_split(root, eval_split="all").test) == 8
    lab = load_label(split.labeled[0].label, 16)
    assert lab.dtype == torch.int64 and set(lab.unique().tolist()) == {0, 1}

    (root / "label_data" / "test_list.txt").write_text("case4.png\nghost.png\n")
    with pytest.raises(DataError) as err:
        build_split(root)
    _one_line(err, "test_list.txt")
    assert "ghost.png" in str(err.value) and "line 2" in str(err.value)
    (root / "label_data" / "test_list.txt").unlink()
    with pytest.raises(DataError) as err:
        build_split(root)
    _one_line(err, "test_list.txt")


# ---------------------------------------------------------------------------------------------- readers
def test_png_readers_8_16_bit_and_rgba(tmp_path):
    g8 = _grey(20, 30)
    p8 = _png(tmp_path / "g8.png", g8)
    x = load_ultrasound(p8, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and -1.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    full = load_ultrasound(p8, None)
    assert full.shape == (3, 20, 30) and torch.allclose(full[0], torch.from_numpy(g8 / 127.5 - 1.0).float(), atol=1e-6)
    assert ultrasound_size(p8) == (20, 30)

    g16 = (g8.astype(np.uint16) * 257).astype(np.uint16)  # 16-bit: divided by 65535
    p16 = tmp_path / "g16.png"
    Image.fromarray(g16).save(p16)
    assert np.allclose(read_ultrasound(p16), g8 / 255.0, atol=1e-6)

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7  # alpha is dropped
    p = _png(tmp_path / "rgba.png", rgba)
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert np.allclose(read_ultrasound(p), luma, atol=1e-5)


def test_nifti_and_dicom_readers(tmp_path):
    g = _grey(20, 30)
    nib.save(nib.Nifti1Image(g.T.copy(), np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(g.T[..., None].copy(), np.eye(4)), tmp_path / "one_slice.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([g.T, g.T], -1).copy(), np.eye(4)), tmp_path / "two.nii.gz")
    for name in ("a.nii.gz", "one_slice.nii.gz"):
        assert np.allclose(read_ultrasound(tmp_path / name), g / 255.0)
        assert ultrasound_size(tmp_path / name) == (20, 30)
    with pytest.raises(DataError) as err:
        read_ultrasound(tmp_path / "two.nii.gz")
    _one_line(err, "two.nii.gz")

    sitk.WriteImage(sitk.GetImageFromArray(g), str(tmp_path / "one.dcm"))
    assert np.allclose(read_ultrasound(tmp_path / "one.dcm"), g / 255.0)
    assert ultrasound_size(tmp_path / "one.dcm") == (20, 30)
    assert load_ultrasound(tmp_path / "one.dcm", 8).shape == (3, 8, 8)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([g, 255 - g, g])), str(tmp_path / "cine.dcm"))
    with pytest.warns(UserWarning, match="first frame"):
        first = read_ultrasound(tmp_path / "cine.dcm")
    assert np.allclose(first, g / 255.0)
    rgb = np.stack([g, g // 2, 255 - g], -1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.dcm"))
    assert np.allclose(read_ultrasound(tmp_path / "rgb.dcm"), (rgb @ [0.299, 0.587, 0.114]) / 255.0, atol=1e-5)
    lab16 = (g > 128).astype(np.int16) * 300  # 16-bit scanner data is min-max scaled
    sitk.WriteImage(sitk.GetImageFromArray(lab16), str(tmp_path / "i16.dcm"))
    assert set(np.unique(read_ultrasound(tmp_path / "i16.dcm")).tolist()) == {0.0, 1.0}
    with pytest.raises(DataError) as err:
        read_ultrasound(tmp_path / "nothing.png")
    _one_line(err, "nothing.png")


def test_label_reader(tmp_path):
    m = _mask(20, 30)
    gif = tmp_path / "m.gif"
    Image.fromarray(m).convert("P").save(gif)  # a grey-palette GIF mask, as in DDTI
    lab = load_label(gif, None)
    assert lab.dtype == torch.int64 and lab.shape == (20, 30) and torch.equal(lab, torch.from_numpy(m // 255).long())
    assert load_label(gif, 10).shape == (10, 10)
    three = _png(tmp_path / "three.png", (m // 255) * 2)
    assert set(load_label(three, 16, n_classes=3).unique().tolist()) == {0, 2}
    with pytest.raises(DataError) as err:
        load_label(three, 16)  # value 2 with two classes
    _one_line(err, "three.png")
    soft = _png(tmp_path / "soft.png", np.linspace(0, 255, 600).astype(np.uint8).reshape(20, 30))
    with pytest.raises(DataError) as err:
        load_label(soft, 16)
    _one_line(err, "soft.png")
    nii = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image((m.T // 255).astype(np.float64), np.eye(4)), nii)
    assert torch.equal(load_label(nii, None), torch.from_numpy(m // 255).long())
    with pytest.raises(ConfigError):
        load_label(gif, 16, n_classes=1)


def test_dataset_items(tmp_path):
    root = _folders(tmp_path / "d", n=4, n_unlabeled=1)
    split = build_split(root, eval_split="all")
    split.test[0].pixel_size = 0.5
    ds = SemiSupDataset(split.test, image_size=16)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["label"].shape == (1, 16, 16)
    assert item["label"].dtype == torch.int64 and set(item["label"].unique().tolist()) == {0, 1}
    assert item["original_size"] == (24, 32) and item["pixel_size"] == 0.5 and np.isnan(item["hc_mm"])
    assert item["name"] == split.test[0].name and item["case"] == split.test[0].case
    assert torch.equal(ds[0]["image"], item["image"])  # cached copy
    unl = SemiSupDataset([i.as_dict() for i in split.unlabeled], image_size=16)  # dicts work too
    assert "label" not in unl[0] and np.isnan(unl[0]["pixel_size"])
    assert "label" not in SemiSupDataset(split.test, 16, with_labels=False)[0]
    tagged = SemiSupDataset(split.test, 16, transform=lambda d: {**d, "flag": 1}, cache_size=0)
    assert tagged[1]["flag"] == 1
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 16, 16) and batch["label"].shape == (2, 1, 16, 16)
    with pytest.raises(ConfigError):
        SemiSupDataset(split.test, image_size=0)
    assert SemiSupItem("x/a.png").name == "a" and SemiSupItem("x/a.png").case == "a"


# ---------------------------------------------------------------------------------------------- synthetic
def test_phantoms_deterministic_and_plausible():
    img, mask = make_ultrasound_phantom(0, "head", 64)
    again, _ = make_ultrasound_phantom(np.random.default_rng(0), "head", 64)
    assert img.dtype == np.uint8 and img.shape == (64, 64) and np.array_equal(img, again)
    assert set(np.unique(mask).tolist()) == {0, 255}
    assert img[0, 0] == 0 and img[0, -1] == 0  # outside the fan
    assert img[mask > 0].mean() != img[mask == 0].mean()
    nod, nmask = make_ultrasound_phantom(1, "nodule", (48, 64))
    assert nod.shape == nmask.shape == (48, 64) and set(np.unique(nmask).tolist()) == {0, 255}
    assert (nod > 0).mean() > 0.9  # full frame
    with pytest.raises(ConfigError):
        make_ultrasound_phantom(0, "liver")


def test_synthetic_set_written_atomically_and_loads(head_set, tmp_path, monkeypatch):
    manifest = json.loads((head_set / "manifest.json").read_text())
    assert manifest["kind"] == "head" and manifest["n_labeled"] == 18
    assert not [p for p in head_set.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    mtime = (head_set / "manifest.json").stat().st_mtime_ns
    assert write_synthetic_ultrasound(head_set, "head", n_labeled=18, n_unlabeled=3, seed=3, size=48) == head_set
    assert (head_set / "manifest.json").stat().st_mtime_ns == mtime  # idempotent
    with pytest.raises(ConfigError):
        write_synthetic_ultrasound(head_set, "head", n_labeled=18, n_unlabeled=3, seed=4, size=48)
    split = build_split(head_set, eval_split="all")
    item = SemiSupDataset(split.test, 32)[0]
    assert item["image"].shape == (3, 32, 32) and item["hc_mm"] > 0

    def boom(out, opts):
        (out / "half.png").write_bytes(b"")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(synthetic, "_write_set", boom)
    with pytest.raises(RuntimeError):
        write_synthetic_ultrasound(tmp_path / "never", "nodule", n_labeled=4, n_unlabeled=0, size=32)
    assert not (tmp_path / "never").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()

    monkeypatch.setenv("LABELLESS_CACHE", str(tmp_path / "cache"))
    nodules = default_ultrasound_dir("nodule", n_labeled=6, n_unlabeled=2, size=32)
    assert nodules.parent == tmp_path / "cache" / "semisup" and detect_layout(nodules) == "folders"
    assert default_ultrasound_dir("nodule", n_labeled=6, n_unlabeled=2, size=32) == nodules
    split = build_split(nodules, labeled_ratio=0.5)
    _check_by_case(split)
    assert len(split.unlabeled) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SemiSupDataset(split.labeled, 32)[0]["label"].max() == 1


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_hc18_and_ddti_splits():
    hc18 = shared_data_dir("hc18")
    assert detect_layout(hc18) == "hc18"
    split = build_split(hc18, labeled_ratio=0.2, seed=0)
    _check_by_case(split)
    assert len(split.unlabeled) > len(list((hc18 / "unlabeled").iterdir())) - 1
    assert all(i.pixel_size and i.hc_mm for i in split.test)
    item = SemiSupDataset(split.test[:1], 64)[0]
    assert item["original_size"] == ultrasound_size(split.test[0].image)

    ddti = shared_data_dir("ddti")
    assert detect_layout(ddti) == "ddti"
    for ratio in (0.2, 0.5):
        split = build_split(ddti, labeled_ratio=ratio, seed=0)
        _check_by_case(split)
        assert all(i.case == i.name.split("_")[0] for p in split.parts().values() for i in p)
        assert all(i.label.endswith(".gif") for i in split.test)
