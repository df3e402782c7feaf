# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Weak-supervision domains A (lesion) / B (normal): volume slices, lesion-free patches, tag CSVs, folder reading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import shared_data_dir
from labelless.errors import ConfigError, DataError
from labelless.weak.domains import (
    WeakDomainFolders,
    _corner_triangles,
    lesion_free_patches,
    lesion_removed_image,
    split_cases,
    volume_domain_slices,
    write_image_domains,
    write_tagged_domains,
    write_volume_domains,
)


def _synthetic_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z=10, 32, 32): body on every slice (small on z 0-1), lesion ≥ 100 px on z 4-5, 5 px on z 6."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 1, (10, 32, 32)).astype(np.float32)
    body = np.zeros(img.shape, bool)
    body[:, 4:28, 4:28] = True
    body[:2] = False
    body[:2, 14:18, 14:18] = True  # 16 px < 0.3 × 576
    lesion = np.zeros(img.shape, np.int16)
    lesion[4:6, 8:20, 8:20] = 2  # 144 px
    lesion[6, 10:15, 10] = 1  # 5 px: neither A nor B
    img[~body] = -5.0
    return img, lesion, body


def test_volume_slices_counts_and_no_lesion_in_b():
    img, lesion, body = _synthetic_volume()
    slices = volume_domain_slices(img, lesion, body, case="c1", size=64, orientation="display")
    assert [s.z for s in slices if s.domain == "A"] == [4, 5]
    assert [s.z for s in slices if s.domain == "B"] == [2, 3, 7, 8, 9]
    for s in slices:
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8 and s.mask.shape == (64, 64)
        assert np.array_equal(s.image[..., 0], s.image[..., 2])  # grey replicated to RGB
        if s.domain == "B":
            assert s.lesion_px == 0 and not s.mask.any()
            assert not lesion[s.z].any()
        else:
            assert s.mask.sum() == pytest.approx(144 * 4, rel=0.1)  # 32 -> 64: 4 px per px
    # outside the body: black; the lesion slice's mask lies where the lesion was (nearest resize)
    a = slices[[s.z for s in slices].index(4)]
    assert a.image[:4, :4].max() == 0 and a.mask[20:36, 20:36].all()
    # reference orientation = the file's first voxel axis as rows = the transposed display view
    ref = volume_domain_slices(img, lesion, body, case="c1", size=64)
    assert all(np.array_equal(r.image[..., 0], d.image[..., 0].T) for r, d in zip(ref, slices))


def test_volume_slices_errors():
    img, lesion, body = _synthetic_volume()
    with pytest.raises(DataError, match="vol.nii.gz: image .* and lesion labels"):
        volume_domain_slices(img, lesion[:5], body, source="vol.nii.gz")
    with pytest.raises(DataError, match="empty"):
        volume_domain_slices(img, lesion, np.zeros_like(body))
    bad = img.copy()
    bad[5, 10, 10] = np.nan
    with pytest.raises(DataError, match="NaN"):
        volume_domain_slices(bad, lesion, body)
    with pytest.raises(ConfigError, match="orientation"):
        volume_domain_slices(img, lesion, body, orientation="sideways")


def _to_nib(a: np.ndarray) -> np.ndarray:
    """(Z, H, W) -> the NIfTI (x, y, z) array order."""
    return np.ascontiguousarray(a.transpose(2, 1, 0))


def _brats_like(root: Path, n: int = 3) -> Path:
    for i in range(n):
        img, lesion, body = _synthetic_volume(seed=i)
        case = root / f"case{i + 1}"
        case.mkdir(parents=True)
        aff = np.diag([-1.0, -1.0, 1.0, 1.0])
        nib.save(nib.Nifti1Image(_to_nib(img), aff), str(case / "Flair_subtrMeanDivStd.nii.gz"))
        nib.save(nib.Nifti1Image(_to_nib(body.astype(np.uint8)), aff), str(case / "brainmask.nii.gz"))
        nib.save(nib.Nifti1Image(_to_nib(lesion), aff), str(case / "OTMultiClass.nii.gz"))
    return root


def test_write_volume_domains_splits_by_case(tmp_path):
    src = _brats_like(tmp_path / "brats")
    before = sorted((p.name, p.stat().st_size) for p in src.rglob("*"))
    m = write_volume_domains(src, tmp_path / "out", n_test=1, size=32)
    assert sorted((p.name, p.stat().st_size) for p in src.rglob("*")) == before  # inputs untouched
    assert len(m["split"]["train"]) == 2 and len(m["split"]["test"]) == 1
    assert m["counts"] == {"trainA": 4, "trainB": 10, "testA": 2, "testB": 5}
    test_case = m["split"]["test"][0]
    by_folder = {}
    for rec in m["slices"]:
        by_folder.setdefault(rec["folder"], set()).add(rec["case"])
    assert by_folder["testA"] == by_folder["testB"] == {test_case}
    assert test_case not in by_folder["trainA"] | by_folder["trainB"]
    out = tmp_path / "out"
    assert not (out / "trainA" / "labels").exists() and not list(out.glob("train*/*segmentation*"))
    assert len(list((out / "testA" / "labels").glob("*_segmentation.png"))) == 2
    assert json.loads((out / "manifest.json").read_text())["counts"] == m["counts"]
    folders = WeakDomainFolders(out)
    assert len(folders.train_a) == 4 and len(folders.train_b) == 10 and len(folders.test) == 2
    # the output folder must be new, and never inside the input
    with pytest.raises(ConfigError, match="not empty"):
        write_volume_domains(src, out)
    with pytest.raises(ConfigError, match="inside the input folder"):
        write_volume_domains(src, src / "derived")
    assert split_cases(["1", "2", "3", "4"], n_test=1, seed=3) == split_cases(["4", "3", "2", "1"], n_test=1, seed=3)
    with pytest.raises(ConfigError, match="keep one to train"):
        split_cases(["1", "2"], n_test=1, n_val=1)


def test_lesion_free_patch_rules():
    rgb = np.full((100, 120, 3), 0.7, np.float32)
    assert [c for c, _ in lesion_free_patches(rgb, size=16)] == ["tl", "tr", "bl", "br"]
    rgb[:30, :30] = 0.05  # vignetting in the top-left corner
    rgb[70:, 90:] = np.random.default_rng(0).uniform(0, 1, (30, 30, 3))  # structure in the bottom-right corner
    kept = lesion_free_patches(rgb, size=16)
    assert [c for c, _ in kept] == ["tr", "bl"] and kept[0][1].shape == (16, 16, 3)


def test_lesion_free_patches_at_the_image_scale_are_mirror_tiled():
    """patch_scale="image": the 30 x 30 corner of a 100 x 100 image is shrunk by 40/100 (the scale of the A image
    resized to 40) to 12 px and mirror-tiled: the output repeats with period 24 and mirrors at 12."""
    rng = np.random.default_rng(0)
    rgb = np.clip(0.6 + 0.01 * rng.standard_normal((100, 100, 3)), 0, 1).astype(np.float32)
    rgb[:30, :30, 0] = np.linspace(0.55, 0.65, 30)[None, :]  # a horizontal ramp in the top-left corner
    (name, patch), *_ = lesion_free_patches(rgb, size=40, patch_scale="image")
    assert name == "tl" and patch.shape == (40, 40, 3) and patch.dtype == np.uint8
    p = patch.astype(int)
    assert np.array_equal(p[:, :12], p[:, 24:36]) and np.array_equal(p[:, :12], p[:, 12:24][:, ::-1])
    assert np.array_equal(p[:12], p[12:24][::-1])
    ramp = p[0, :12, 0]
    assert ramp[-1] > ramp[0]  # the corner's own content, at the smaller scale
    resized = lesion_free_patches(rgb, size=40)[0][1]
    assert not np.array_equal(resized, patch)
    with pytest.raises(ConfigError, match="patch_scale"):
        lesion_free_patches(rgb, size=40, patch_scale="zoom")


def _skin_with_disc(
    size: int = 96,
    centre: tuple[int, int] | None = None,
    radius: int = 14,
    skin: float = 0.75,
    lesion: float = 0.25,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Textured skin with a dark disc (the lesion), RGB floats in [0, 1], and the disc's mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = centre if centre is not None else (size // 2, size // 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    rgb = skin + 0.02 * rng.standard_normal((size, size, 3))
    rgb[disc] = lesion + 0.02 * rng.standard_normal((int(disc.sum()), 3))
    return np.clip(rgb * np.array([1.0, 0.85, 0.8]), 0, 1).astype(np.float32), disc


def test_lesion_removed_image_paints_the_lesion_over_with_skin():
    rgb, disc = _skin_with_disc()
    out = lesion_removed_image(rgb, size=96, seed=0)
    assert out is not None and out.shape == (96, 96, 3) and out.dtype == np.uint8
    got = out.astype(float) / 255.0
    skin_colour = rgb[~disc].mean(axis=0)
    assert np.abs(got[disc].mean(axis=0) - skin_colour).max() < 0.03  # the disc is skin-coloured now
    assert got[disc].std(axis=0).max() > 0.005  # with texture, not a flat fill
    yy, xx = np.mgrid[0:96, 0:96]
    far = (yy - 48) ** 2 + (xx - 48) ** 2 >= 35**2
    assert np.abs(got[far] - rgb[far]).max() < 1.5 / 255  # the skin far away is untouched (up to rounding)
    assert np.array_equal(out, lesion_removed_image(rgb, size=96, seed=0))  # seeded
    resized = lesion_removed_image(rgb, size=48, seed=0)
    assert resized is not None and resized.shape == (48, 48, 3)


@pytest.mark.parametrize(
    "kwargs, why",
    [
        (dict(centre=(48, 4), radius=20), "touches the frame"),
        (dict(radius=44), "fills the frame"),
        (dict(lesion=0.7), "no contrast: Otsu split the skin"),
    ],
)
def test_lesion_removed_image_skips_what_cannot_be_painted_over(kwargs, why):
    rgb, _ = _skin_with_disc(**kwargs)
    assert lesion_removed_image(rgb, size=96) is None, why


def test_lesion_removed_image_relaxed_border_planar_fill_and_corners():
    """A lesion cut by the frame (skipped by default) is painted over with ``max_border`` relaxed; the clipped planar
    fill stays inside the far skin's colour range where the quadratic one may not; ``paint_corners`` also paints
    the part of the blob inside a corner triangle."""
    rgb, disc = _skin_with_disc(centre=(48, 6), radius=26)  # cut by the left frame, reaching two corner triangles
    assert lesion_removed_image(rgb, size=96) is None
    out = lesion_removed_image(rgb, size=96, max_border=0.5, fill="planar", paint_corners=True, seed=0)
    assert out is not None
    got = out.astype(float) / 255.0
    skin = rgb[~disc]
    lo, hi = np.percentile(skin, 1, axis=0) - 0.05, np.percentile(skin, 99, axis=0) + 0.05
    assert ((got[disc] >= lo) & (got[disc] <= hi)).all(axis=-1).mean() > 0.99  # skin-coloured, corner included
    no_corner = lesion_removed_image(rgb, size=96, max_border=0.5, fill="planar", seed=0)
    corner = disc & _corner_triangles(96, 96)  # lesion inside the triangles that zero_corners blanks
    assert corner.sum() > 20
    assert np.abs(no_corner[corner].astype(float) / 255.0 - rgb[corner]).max() < 1.5 / 255  # left as it was
    assert np.abs(got[corner] - rgb[corner]).mean() > 0.2  # painted over
    assert np.array_equal(out, lesion_removed_image(rgb, size=96, max_border=0.5, fill="planar",
                                                    paint_corners="true", seed=0))  # fmt: skip
    with pytest.raises(ConfigError, match="fill"):
        lesion_removed_image(rgb, fill="cubic")


def test_lesion_removed_image_errors():
    with pytest.raises(DataError, match="RGB"):
        lesion_removed_image(np.zeros((20, 20)))
    with pytest.raises(ConfigError, match="max_area"):
        lesion_removed_image(np.zeros((20, 20, 3)), min_area=0.5, max_area=0.4)


def test_lesion_removed_image_on_the_isic_val_samples_leaves_little_lesion():
    """On the 8 CLTNet ISIC ``val`` samples (masks read to check the rule, never by the builder) most images are
    kept, and the pixels a kept image leaves unchanged are almost all skin."""
    from labelless.data.images import load_mask, read_rgb
    from labelless.weak.domains import _resize

    folders = WeakDomainFolders(shared_data_dir("weak_samples/ISIC/isic_1"), require_train=False)
    lesion_left = []
    for i, item in enumerate(folders.val):
        rgb = read_rgb(item["image"])
        out = lesion_removed_image(rgb, seed=i)
        if out is None:
            continue
        truth = _resize(load_mask(item["label"], size=None)[0].numpy(), 256, "nearest") > 0.5
        before = np.round(np.clip(_resize(rgb, 256, "bilinear"), 0, 1) * 255)
        unchanged = np.abs(out.astype(float) - before).mean(-1) <= 3
        assert (truth & ~unchanged).sum() > 0.5 * truth.sum()  # most of the lesion was painted over
        lesion_left.append((truth & unchanged).sum() / unchanged.sum())
    assert len(lesion_left) >= 5 and float(np.mean(lesion_left)) < 0.05, lesion_left


def test_write_image_domains_normals_inpaint_and_both(tmp_path):
    for i in range(3):
        rgb, _ = _skin_with_disc(seed=i)
        _png(tmp_path / "images" / f"ISIC_{i}.png", np.round(rgb * 255).astype(np.uint8))
    big, _ = _skin_with_disc(radius=44)  # frame-filling: no inpainted B image from it
    _png(tmp_path / "images" / "ISIC_3.png", np.round(big * 255).astype(np.uint8))
    _png(tmp_path / "images" / "ISIC_4.png", np.round(big * 255).astype(np.uint8))  # the test image
    man = write_image_domains(tmp_path / "images", tmp_path / "inp", test_fraction=0.2, size=64, normals="inpaint")
    names = sorted(p.name for p in (tmp_path / "inp" / "trainB").iterdir())
    assert names == ["ISIC_0_inpaint.png", "ISIC_1_inpaint.png", "ISIC_2_inpaint.png"]
    assert man["counts"]["trainB"] == 3 and man["options"]["normals"] == "inpaint"
    both = write_image_domains(tmp_path / "images", tmp_path / "both", test_fraction=0.2, size=64, normals="both")
    corners = write_image_domains(tmp_path / "images", tmp_path / "corners", test_fraction=0.2, size=64)
    assert both["counts"]["trainB"] == corners["counts"]["trainB"] + 3
    with pytest.raises(ConfigError, match="normals"):
        write_image_domains(tmp_path / "images", tmp_path / "bad", normals="healthy")
    _png(tmp_path / "filled" / "ISIC_0.png", np.round(big * 255).astype(np.uint8))
    _png(tmp_path / "filled" / "ISIC_1.png", np.round(big * 255).astype(np.uint8))
    with pytest.raises(DataError, match="painted over") as err:
        write_image_domains(tmp_path / "filled", tmp_path / "none", test_fraction=0.5, size=64, normals="inpaint")
    assert "filled" in str(err.value) and not (tmp_path / "none").exists()


def test_write_image_domains_inpaint_options(tmp_path):
    for i in range(3):
        rgb, _ = _skin_with_disc(centre=(20, 10), radius=22, seed=i)  # cut by the frame: skipped by default
        _png(tmp_path / "images" / f"ISIC_{i}.png", np.round(rgb * 255).astype(np.uint8))
    with pytest.raises(DataError, match="painted over"):
        write_image_domains(tmp_path / "images", tmp_path / "default", test_fraction=0.4, size=64, normals="inpaint")
    opts = {"max_border": 0.5, "fill": "planar", "paint_corners": "true"}
    man = write_image_domains(tmp_path / "images", tmp_path / "relaxed", test_fraction=0.4, size=64,
                              normals="inpaint", inpaint_options=opts)  # fmt: skip
    assert man["counts"]["trainB"] == 2
    assert man["options"]["inpaint_options"] == {"max_border": 0.5, "fill": "planar", "paint_corners": True}
    with pytest.raises(ConfigError, match="unknown keys.*radius"):
        write_image_domains(tmp_path / "images", tmp_path / "bad", normals="inpaint", inpaint_options={"radius": 3})
    assert not (tmp_path / "bad").exists()


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_write_image_domains_reads_test_masks_only(tmp_path):
    skin = np.full((40, 50, 3), 180, np.uint8)
    for i in range(5):
        _png(tmp_path / "images" / f"ISIC_{i}.png", skin)
    (tmp_path / "masks").mkdir()
    for i in range(3):  # the training images' "masks" are unreadable: they must never be opened
        (tmp_path / "masks" / f"ISIC_{i}_segmentation.png").write_bytes(b"not a png")
    m = np.zeros((40, 50), np.uint8)
    m[10:30, 10:40] = 255
    for i in (3, 4):
        _png(tmp_path / "masks" / f"ISIC_{i}_segmentation.png", m)
    man = write_image_domains(tmp_path / "images", tmp_path / "out", masks_dir=tmp_path / "masks", test_fraction=0.4,
                              size=32)  # fmt: skip
    assert man["train_ids"] == ["ISIC_0", "ISIC_1", "ISIC_2"] and man["test_ids"] == ["ISIC_3", "ISIC_4"]
    assert man["counts"] == {"trainA": 3, "trainB": 12, "testA": 2}
    label = np.asarray(Image.open(tmp_path / "out" / "testA" / "labels" / "ISIC_3_segmentation.png"))
    assert label.shape == (32, 32) and set(np.unique(label)) == {0, 255}


def _tags(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "tags.csv"
    p.write_text("image,label,split,mask\n" + "\n".join(rows) + "\n")
    return p


def test_tag_csv_builds_domains_and_converts_grey_and_rgba(tmp_path):
    _png(tmp_path / "a1.png", np.full((20, 24), 90, np.uint8))  # greyscale: replicated to RGB
    _png(tmp_path / "a2.png", np.full((20, 24, 4), 200, np.uint8))  # RGBA: alpha dropped
    _png(tmp_path / "n1.jpg", np.full((20, 24, 3), 120, np.uint8))
    _png(tmp_path / "t1.png", np.full((20, 24, 3), 60, np.uint8))
    mask = np.zeros((20, 24), np.uint8)
    mask[5:10, 5:10] = 255
    _png(tmp_path / "t1_mask.png", mask)
    csv = _tags(tmp_path, ["a1.png,lesion,,", "a2.png,1,train,", "n1.jpg,normal,,", "t1.png,disease,test,t1_mask.png"])
    m = write_tagged_domains(csv, tmp_path.parent / f"{tmp_path.name}_out")
    assert m["counts"] == {"trainA": 2, "trainB": 1, "testA": 1}
    out = WeakDomainFolders(tmp_path.parent / f"{tmp_path.name}_out")
    assert len(out.train_a) == 2 and len(out.train_b) == 1 and out.test[0]["label"].endswith("t1_segmentation.png")
    assert np.asarray(Image.open(out.train_a[0])).shape == (20, 24, 3)


@pytest.mark.parametrize(
    "rows, needle",
    [
        (["missing.png,lesion,,", "n1.png,normal,,"], r"missing\.png: image named in .*tags\.csv, line 2 does not"),
        (["a1.png,maybe,,", "n1.png,normal,,"], r"tags\.csv, line 2: image-level label 'maybe'"),
        (["a1.png,lesion,train,m.png", "n1.png,normal,,"], "must not carry a mask"),
        (["a1.png,lesion,,"], "0 normal image"),
        (["a1.png,lesion,test,small.png", "a1.png,lesion,,", "n1.png,normal,,"], r"small\.png: mask size \(4, 4\)"),
    ],
)
def test_tag_csv_errors_name_the_file(tmp_path, rows, needle):
    _png(tmp_path / "a1.png", np.full((20, 24, 3), 90, np.uint8))
    _png(tmp_path / "n1.png", np.full((20, 24, 3), 90, np.uint8))
    _png(tmp_path / "m.png", np.zeros((20, 24), np.uint8))
    _png(tmp_path / "small.png", np.zeros((4, 4), np.uint8))
    out = tmp_path.parent / f"{tmp_path.name}_out"
    with pytest.raises(DataError, match=needle):
        write_tagged_domains(_tags(tmp_path, rows), out)
    # nothing half-written: no output folder, no staging folder left beside it
    assert not out.exists() and not list(tmp_path.parent.glob(f".{out.name}.*"))


def test_folders_errors(tmp_path):
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainB").mkdir()
    _png(tmp_path / "trainB" / "b.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"trainA: training folder holds no images"):
        WeakDomainFolders(tmp_path)
    with pytest.raises(DataError, match=r"lesions: training folder does not exist"):
        WeakDomainFolders(tmp_path, train_a_dir="lesions")
    _png(tmp_path / "trainA" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "testA" / "images" / "t.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"testA/labels: mask folder does not exist"):
        WeakDomainFolders(tmp_path)
    (tmp_path / "testA" / "labels").mkdir()
    with pytest.raises(DataError, match=r"1 image\(s\) have no mask .*t\.png"):
        WeakDomainFolders(tmp_path)


def test_val_folder_outside_the_dataset_and_a_missing_one(tmp_path, monkeypatch):
    data, other = tmp_path / "data", tmp_path / "elsewhere" / "val"
    for d, name in ((data / "trainA", "a"), (data / "trainB", "b")):
        _png(d / f"{name}.png", np.zeros((8, 8, 3), np.uint8))
    _png(other / "images" / "v.png", np.zeros((8, 8, 3), np.uint8))
    _png(other / "labels" / "v.png", np.zeros((8, 8), np.uint8))
    assert len(WeakDomainFolders(data).val) == 0  # the default "val" is optional
    assert len(WeakDomainFolders(data, val_dir=str(other)).val) == 1  # absolute
    monkeypatch.chdir(tmp_path)
    # relative to the working directory (not to the dataset folder): found, not silently skipped
    assert len(WeakDomainFolders(data, val_dir="elsewhere/val").val) == 1
    with pytest.raises(DataError, match=r"val folder does not exist \(looked for 'nowhere/val' inside"):
        WeakDomainFolders(data, val_dir="nowhere/val")
    with pytest.raises(DataError, match=r"test folder does not exist"):
        WeakDomainFolders(data, test_dir="my_test")


def test_cli_tag_csv_error_is_one_line(tmp_path):
    _png(tmp_path / "n1.png", np.full((8, 8, 3), 90, np.uint8))
    csv = _tags(tmp_path, ["gone.png,lesion,,", "n1.png,normal,,"])
    res = subprocess.run([sys.executable, "-m", "labelless", "weak_domains_csv", str(csv), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "gone.png" in res.stderr
    assert not (tmp_path / "o").exists()


def test_shared_sample_folders_and_brats_volumes(tmp_path):
    """The CLTNet sample folders read as test/val sets (BraTS names its test folder ``test``), and the 4 BraTS cases
    give A/B slices split by case with no tumour pixel in any B slice."""
    brats = WeakDomainFolders(shared_data_dir("weak_samples/BraTS/brats_1"), require_train=False)
    isic = WeakDomainFolders(shared_data_dir("weak_samples/ISIC/isic_1"), require_train=False)
    assert (len(brats.test), len(brats.val), len(isic.test), len(isic.val)) == (8, 8, 8, 8)
    m = write_volume_domains(shared_data_dir("brats2015"), tmp_path / "brats_domains", n_test=1, seed=0)
    assert m["counts"]["trainA"] > 100 and m["counts"]["trainB"] > 50 and m["counts"]["testA"] > 20
    assert all(r["lesion_px"] == 0 for r in m["slices"] if r["domain"] == "B")
    assert all(r["lesion_px"] >= 100 for r in m["slices"] if r["domain"] == "A")
    assert not set(m["split"]["test"]) & set(m["split"]["train"])


def test_write_image_domains_val_split_is_labelled_and_not_trained_on(tmp_path):
    skin = np.full((40, 50, 3), 180, np.uint8)
    m = np.zeros((40, 50), np.uint8)
    m[10:30, 10:40] = 255
    (tmp_path / "masks").mkdir()
    for i in range(10):
        _png(tmp_path / "images" / f"ISIC_{i}.png", skin)
        if i < 5:  # training images: unreadable masks, never opened
            (tmp_path / "masks" / f"ISIC_{i}_segmentation.png").write_bytes(b"not a png")
        else:
            _png(tmp_path / "masks" / f"ISIC_{i}_segmentation.png", m)
    man = write_image_domains(tmp_path / "images", tmp_path / "out", masks_dir=tmp_path / "masks", test_fraction=0.3,
                              val_fraction=0.2, size=32)  # fmt: skip
    assert man["train_ids"] == [f"ISIC_{i}" for i in range(5)]
    assert man["val_ids"] == ["ISIC_5", "ISIC_6"] and man["test_ids"] == ["ISIC_7", "ISIC_8", "ISIC_9"]
    assert man["counts"] == {"trainA": 5, "trainB": 20, "testA": 3, "val": 2}
    assert not any(p.name.startswith(("ISIC_5", "ISIC_6")) for p in (tmp_path / "out" / "trainB").iterdir())
    folders = WeakDomainFolders(tmp_path / "out")
    assert [r["name"] for r in folders.val] == ["ISIC_5", "ISIC_6"] and len(folders.train_a) == 5
    label = np.asarray(Image.open(folders.val[0]["label"]))
    assert label.shape == (32, 32) and set(np.unique(label)) == {0, 255}


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"val_fraction": 0.2}, "needs masks_dir"),
        ({"val_fraction": -0.1, "masks_dir": "masks"}, "val_fraction must be in"),
        ({"val_fraction": 0.9, "masks_dir": "masks"}, "leaves no training image"),
    ],
)
def test_write_image_domains_val_fraction_errors(tmp_path, kwargs, needle):
    for i in range(4):
        _png(tmp_path / "images" / f"ISIC_{i}.png", np.full((20, 20, 3), 180, np.uint8))
        _png(tmp_path / "masks" / f"ISIC_{i}_segmentation.png", np.zeros((20, 20), np.uint8))
    if "masks_dir" in kwargs:
        kwargs = {**kwargs, "masks_dir": tmp_path / kwargs["masks_dir"]}
    with pytest.raises(ConfigError, match=needle):
        write_image_domains(tmp_path / "images", tmp_path / "out", test_fraction=0.25, size=16, **kwargs)
    assert not (tmp_path / "out").exists()


def test_corner_slices_cover_the_four_corners():
    from labelless.weak import corner_slices

    sl = corner_slices((10, 20, 3), 0.3)
    assert set(sl) == {"tl", "tr", "bl", "br"}
    a = np.zeros((10, 20))
    for r, c in sl.values():
        a[r, c] += 1
    assert a[:3, :3].all() and a[:3, -3:].all() and a[-3:, :3].all() and a[-3:, -3:].all() and a.sum() == 36


def test_grid_crops_and_lesion_crops_domains(tmp_path):
    """lesion_crops (not in the spec): trainA holds an n x n grid of crops of each training image at the corner
    patches' magnification; the corner crops are among them; test images stay whole."""
    from labelless.weak.domains import _resize, grid_crops

    rng = np.random.default_rng(0)
    rgb = rng.random((60, 80, 3)).astype(np.float32)
    crops = grid_crops(rgb, 3, side_fraction=0.3, size=24)
    assert [n for n, _ in crops] == [f"r{i}c{j}" for i in range(3) for j in range(3)]
    assert all(c.shape == (24, 24, 3) and c.dtype == np.uint8 for _, c in crops)
    corner = dict(lesion_free_patches(rgb, size=24, min_mean=0.0, max_std=1.0))
    assert np.array_equal(dict(crops)["r0c0"], corner["tl"]) and np.array_equal(dict(crops)["r2c2"], corner["br"])
    (name, centre), = grid_crops(rgb, 1, side_fraction=0.5, size=24)  # fmt: skip
    expected = np.round(np.clip(_resize(rgb[15:45, 25:55], 24, "bilinear"), 0, 1) * 255)
    assert name == "r0c0" and np.abs(centre.astype(float) - expected).max() <= 1
    from labelless.weak import grid_crop_slices  # the crops' pixels in the source image (the purity diagnostic)

    sl = grid_crop_slices(rgb.shape, 3, 0.3)
    assert list(sl) == [n for n, _ in crops] and sl["r1c2"] == (slice(21, 39), slice(62, 80))
    assert np.array_equal(dict(crops)["r1c2"], grid_crops(rgb[21:39, 62:80], 1, side_fraction=1.0, size=24)[0][1])
    for kwargs in (dict(n=0), dict(n=2, side_fraction=0.0)):
        with pytest.raises(ConfigError):
            grid_crops(rgb, **kwargs)
    for i in range(4):
        lesion, _ = _skin_with_disc(seed=i)
        _png(tmp_path / "images" / f"ISIC_{i}.png", np.round(lesion * 255).astype(np.uint8))
    man = write_image_domains(tmp_path / "images", tmp_path / "crops", test_fraction=0.25, size=32, lesion_crops=2,
                              a_crops="all")  # fmt: skip
    assert man["counts"]["trainA"] == 3 * 4 and man["options"]["lesion_crops"] == 2
    assert sorted(p.name for p in (tmp_path / "crops" / "trainA").iterdir())[:4] == [
        "ISIC_0_r0c0.png", "ISIC_0_r0c1.png", "ISIC_0_r1c0.png", "ISIC_0_r1c1.png"]  # fmt: skip
    assert len(list((tmp_path / "crops" / "testA" / "images").iterdir())) == 1
    with pytest.raises(ConfigError, match="lesion_crops"):
        write_image_domains(tmp_path / "images", tmp_path / "neg", lesion_crops=-1)
    grid = write_image_domains(tmp_path / "images", tmp_path / "grid", test_fraction=0.25, size=32, lesion_crops=3,
                               normals="grid", min_mean=0.5)  # fmt: skip
    b_names = sorted(p.name for p in (tmp_path / "grid" / "trainB").iterdir())
    a_names = sorted(p.name for p in (tmp_path / "grid" / "trainA").iterdir())
    assert grid["counts"]["trainB"] == len(b_names) > 0 and grid["options"]["a_crops"] == "lesion"
    # a_crops="lesion" (default): the grid is split between A (crops that may show the lesion) and B (the rest)
    assert not set(a_names) & set(b_names) and len(a_names) + len(b_names) == 3 * 9
    assert {f"ISIC_{i}_r1c1.png" for i in range(3)} <= set(a_names)  # the disc in the middle is always an A crop
    everything = write_image_domains(tmp_path / "images", tmp_path / "grid_all", test_fraction=0.25, size=32,
                                     lesion_crops=3, normals="grid", min_mean=0.5, a_crops="all")  # fmt: skip
    assert everything["counts"]["trainA"] == 3 * 9 and everything["counts"]["trainB"] == len(b_names)
    for name in b_names:  # every B crop is a grid crop that passed the rules: the disc in the middle never does
        a = np.asarray(Image.open(tmp_path / "grid_all" / "trainA" / name), dtype=np.float32) / 255.0
        assert a.mean() >= 0.5 and a.reshape(-1, 3).std(0).mean() <= 0.05 and not name.endswith("r1c1.png")
    with pytest.raises(ConfigError, match="a_crops must be one of"):
        write_image_domains(tmp_path / "images", tmp_path / "bad_a", lesion_crops=2, a_crops="some")
    # benchmarks/cltnet_patch_purity.py (a diagnostic that reads the masks): the lesion share of each A and B crop
    for i in range(4):
        _png(tmp_path / "masks" / f"ISIC_{i}_segmentation.png", _skin_with_disc(seed=i)[1].astype(np.uint8) * 255)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cltnet_patch_purity.py"
    shares = {}
    for folder, names in (("trainA", a_names), ("trainB", b_names)):
        out = subprocess.run([sys.executable, str(script), str(tmp_path / "grid"), "--masks_dir",
                              str(tmp_path / "masks"), "--folder", folder],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"{len(names)} crops of 3 images" in out, out
        shares[folder] = float(out.split("mean lesion fraction ")[1].split(";")[0])
    disc = _skin_with_disc(seed=0)[1]
    rows, cols = grid_crop_slices(disc.shape, 3, 0.3)["r1c1"]
    # only the middle crops show the disc (the same in every image), and no B crop holds any of it
    assert a_names == [f"ISIC_{i}_r1c1.png" for i in range(3)]
    assert shares["trainA"] == round(float(disc[rows, cols].mean()), 3) > 0.5 and shares["trainB"] == 0.0
    for i in range(4):  # plain skin everywhere: no crop is left as a lesion view
        _png(tmp_path / "plain" / f"ISIC_{i}.png", np.full((40, 40, 3), 200, np.uint8))
    with pytest.raises(DataError, match="none is left as a lesion view"):
        write_image_domains(tmp_path / "plain", tmp_path / "plain_out", test_fraction=0.25, size=16, lesion_crops=2)
    assert not (tmp_path / "plain_out").exists()
    with pytest.raises(ConfigError, match="lesion_crops >= 2"):
        write_image_domains(tmp_path / "images", tmp_path / "nogrid", normals="grid")


def test_write_image_domains_color_constancy_changes_pixels_not_the_split(tmp_path):
    """color_constancy (not in the spec): the training views are cut from the colour-corrected image, the lesion-free
    rules still read the original colours (the same A/B split), and the val/test images are written unchanged."""
    from labelless.transforms.translation import shades_of_grey
    from labelless.weak.domains import grid_crops, read_rgb

    tint = np.array([1.0, 0.8, 0.7], np.float32)
    for i in range(5):
        lesion, mask = _skin_with_disc(seed=i)
        _png(tmp_path / "images" / f"ISIC_{i}.png", np.round(lesion * tint * 255).astype(np.uint8))
        _png(tmp_path / "masks" / f"ISIC_{i}_segmentation.png", mask.astype(np.uint8) * 255)
    common = dict(masks_dir=tmp_path / "masks", test_fraction=0.2, val_fraction=0.2, size=32, lesion_crops=3,
                  normals="grid", min_mean=0.4)  # fmt: skip
    plain = write_image_domains(tmp_path / "images", tmp_path / "plain", **common)
    cc = write_image_domains(tmp_path / "images", tmp_path / "cc", color_constancy=6, **common)
    assert cc["counts"] == plain["counts"] and cc["options"]["color_constancy"] == 6.0
    assert plain["options"]["color_constancy"] == 0.0 and plain["counts"]["trainB"] > 0
    for folder in ("trainA", "trainB", "val/images", "testA/images", "val/labels", "testA/labels"):
        names = sorted(p.name for p in (tmp_path / "plain" / folder).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "cc" / folder).iterdir()) and names
        for name in names:
            a = np.asarray(Image.open(tmp_path / "plain" / folder / name))
            b = np.asarray(Image.open(tmp_path / "cc" / folder / name))
            assert np.array_equal(a, b) == (not folder.startswith("train")), (folder, name)
    src = read_rgb(tmp_path / "images" / "ISIC_0.png")
    expected = dict(grid_crops(shades_of_grey(src, 6, channel_last=True), 3, 0.3, 32))
    for folder in ("trainA", "trainB"):
        for f in (tmp_path / "cc" / folder).glob("ISIC_0_*.png"):
            assert np.array_equal(np.asarray(Image.open(f)), expected[f.stem.split("_")[-1]])
    # the corner patches (spec §1.2 normals): the same corners are kept, cut from the corrected image
    corners = dict(masks_dir=tmp_path / "masks", test_fraction=0.2, size=32, min_mean=0.4)
    p_corner = write_image_domains(tmp_path / "images", tmp_path / "p_corner", **corners)
    c_corner = write_image_domains(tmp_path / "images", tmp_path / "c_corner", color_constancy=6, **corners)
    assert p_corner["counts"] == c_corner["counts"] and p_corner["counts"]["trainB"] > 0
    assert sorted(p.name for p in (tmp_path / "c_corner" / "trainB").iterdir()) == sorted(
        p.name for p in (tmp_path / "p_corner" / "trainB").iterdir())  # fmt: skip
    with pytest.raises(ConfigError, match="color_constancy"):
        write_image_domains(tmp_path / "images", tmp_path / "bad", color_constancy=-1)
    assert not (tmp_path / "bad").exists()
