# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the preparation commands (fewshot_protocol §2) on small synthetic raw layouts written here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from parameterized import parameterized
from PIL import Image

from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import DataError
from labelless.io import read_volume
from labelless.io.volume import Volume
from labelless.prepare import prepare_chaos, prepare_cmr, prepare_synapse
from labelless.prepare.common import crop_border, crop_or_pad_center, resample_labels, resampled_size

# ---------------------------------------------------------------------------------------------- helpers


def _snapshot(folder: Path) -> dict[str, str]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def write_dicom_series(folder: Path, vol: np.ndarray, spacing=(2.0, 2.0, 8.0), origin=(-60.0, -70.0, 10.0)) -> list:
    """Axial MR series (IOP 1\\0\\0\\0\\1\\0) written slice by slice with SimpleITK; LPS origin of slice 0.

    File names and InstanceNumbers run against the slice position (as in many real series) so that only sorting
    by position gives the right order. Returns the file names in position order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    names = []
    n = vol.shape[0]
    for k in range(n):
        sl = sitk.GetImageFromArray(vol[k].astype(np.int16))
        z = origin[2] + k * spacing[2]
        name = f"IMG-0002-{n - k:05d}"  # reversed: name order != position order
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.7",
            "0020|000e": series_uid,
            "0020|0013": str(n - k),
            "0020|0032": f"{origin[0]}\\{origin[1]}\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(spacing[2]),
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"{name}.dcm"))
        writer.Execute(sl)
        names.append(name)
    return names


def make_chaos_raw(root: Path, pids=("10", "2"), shape=(6, 64, 64), png_value_override=None) -> dict:
    """Raw CHAOS layout; the liver (63) is a bright block in the top rows (DICOM order), the spleen (252) a
    dimmer block in the bottom-right. Returns per pid the image and the class-id mask in DICOM order."""
    out = {}
    rng = np.random.default_rng(0)
    for pid in pids:
        z, h, w = shape
        img = rng.integers(10, 30, size=shape).astype(np.int16)
        lab = np.zeros(shape, np.uint8)
        lab[1:5, 6:22, 10:40] = 1
        lab[2:6, 40:56, 40:58] = 4
        img[lab == 1] = 800
        img[lab == 4] = 400
        img[0, 0, 0] = 5000  # outlier removed by the 99.5th percentile clip
        case = root / pid / "T2SPIR"
        names = write_dicom_series(case / "DICOM_anon", img)
        (case / "Ground").mkdir(parents=True)
        png_vals = np.array([0, 63, 126, 189, 252], np.uint8)
        for k, name in enumerate(names):
            sl = png_vals[lab[k]]
            if png_value_override is not None and k == 2:
                sl = sl.copy()
                sl[0, 0] = png_value_override
            Image.fromarray(sl).save(case / "Ground" / f"{name}.png")
        out[pid] = (img, lab)
    return out


def write_nifti(path: Path, arr_zyx: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr_zyx.transpose(2, 1, 0), aff), str(path))
    return aff


def world_centroid(vol: Volume, mask: np.ndarray) -> np.ndarray:
    zyx = np.argwhere(mask).mean(axis=0)
    return (vol.affine @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]


# ---------------------------------------------------------------------------------------------- CHAOS


def test_prepare_chaos_synthetic(tmp_path):
    raw = tmp_path / "raw"
    truth = make_chaos_raw(raw)
    before = _snapshot(raw)
    out = tmp_path / "prepared"
    res = prepare_chaos(raw, out, spacing=(4.0, 4.0, 8.0), size=24, progress=False)
    assert res["pids"] == ["2", "10"] and res["n_cases"] == 2
    assert _snapshot(raw) == before  # raw folder untouched
    ds = PreparedVolumeDataset(out, preset="chaos")
    assert ds.pids == ["2", "10"]
    img, lab = ds.load_image("2"), ds.load_label("2")
    # size rule "reference": x/y int(64 * 2 / 4 + 1) = 33 -> cropped to 24; z int(6 * 8 / 8 + 1) = 7
    assert img.shape == (7, 24, 24) and lab.shape == (7, 24, 24)
    np.testing.assert_allclose(img.spacing, (4.0, 4.0, 8.0), atol=1e-5)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")  # the distributed CHAOS data's orientation
    assert set(np.unique(lab.array)) == {0, 1, 4}
    assert not lab.array[-1].any() and not img.array[-1].any()  # extra "reference" slice lies outside: zeros
    # masks stay aligned with the image: the liver is bright, the spleen dimmer, background dark
    a = img.array
    assert a[lab.array == 1].mean() > 600 and 250 < a[lab.array == 4].mean() < 500
    assert a[:-1][lab.array[:-1] == 0].mean() < 100
    # the row flip moved the liver (top rows in DICOM order) to the bottom half of the array ...
    assert np.argwhere(lab.array == 1)[:, 1].mean() > 12
    # ... while its world position is unchanged (geometry kept through flip, resampling and crop)
    raw_img = read_volume(raw / "2" / "T2SPIR" / "DICOM_anon")
    raw_liver = world_centroid(raw_img, truth["2"][1] == 1)
    np.testing.assert_allclose(world_centroid(lab, lab.array == 1), raw_liver, atol=2.5)
    # 99.5th percentile clip removed the 5000 outlier
    assert img.array.max() < 1000
    cm = json.loads((out / "classmap_1.json").read_text())
    assert cm == ds.compute_classmap()
    assert cm["LIVER"]["2"] == [z for z in range(7) if (lab.array[z] == 1).any()]


def test_prepare_chaos_errors(tmp_path):
    raw = tmp_path / "raw"
    make_chaos_raw(raw, pids=("1",), png_value_override=100)
    with pytest.raises(DataError, match=r"IMG-0002-\d+\.png.*\[100\]"):
        prepare_chaos(raw, tmp_path / "out", spacing=(4.0, 4.0, 8.0), size=24, progress=False)
    with pytest.raises(DataError, match="outside the raw data folder"):
        prepare_chaos(raw, raw / "prepared", progress=False)
    with pytest.raises(DataError, match="no CHAOS cases"):
        prepare_chaos(tmp_path / "out", tmp_path / "out2", progress=False)


def test_prepare_chaos_refuses_existing_output(tmp_path):
    raw = tmp_path / "raw"
    make_chaos_raw(raw, pids=("1",), shape=(3, 32, 32))
    out = tmp_path / "out"
    prepare_chaos(raw, out, spacing=(4.0, 4.0, 8.0), size=16, progress=False)
    with pytest.raises(DataError, match="overwrite"):
        prepare_chaos(raw, out, spacing=(4.0, 4.0, 8.0), size=16, progress=False)
    res = prepare_chaos(raw, out, spacing=(4.0, 4.0, 8.0), size=16, overwrite=True, progress=False, pids=[1])
    assert res["pids"] == ["1"]
    assert sorted(p.name for p in out.iterdir()) == ["classmap_1.json", "image_1.nii.gz", "label_1.nii.gz"]


# ---------------------------------------------------------------------------------------------- Synapse


def make_synapse_raw(root: Path, keys=("0002", "0001"), shape=(4, 64, 64), bad_label=False):
    rng = np.random.default_rng(1)
    for i, key in enumerate(keys):
        img = rng.uniform(-1000, 1000, size=shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[:, 10:30, 10:30] = 6  # liver
        lab[:, 40:50, 36:50] = 1  # spleen
        img[lab == 6] = 100.0 + 10 * i
        if bad_label:
            lab[0, 0, 0] = 14
        write_nifti(root / "img" / f"img{key}.nii.gz", img, spacing=(0.8, 0.8, 3.0), origin=(10.0, -20.0, 5.0))
        write_nifti(root / "label" / f"label{key}.nii.gz", lab, spacing=(0.8, 0.8, 3.0), origin=(10.0, -20.0, 5.0))


def test_prepare_synapse_synthetic(tmp_path):
    raw = tmp_path / "raw"
    make_synapse_raw(raw)
    before = _snapshot(raw)
    out = tmp_path / "out"
    res = prepare_synapse(raw, out, border=4, size=32, progress=False)
    assert _snapshot(raw) == before
    assert res["pids"] == ["0", "1"]
    sources = json.loads((out / "pid_sources.json").read_text())
    assert sources["0"]["image"] == "img0001.nii.gz" and sources["1"]["label"] == "label0002.nii.gz"
    ds = PreparedVolumeDataset(out, preset="synapse")
    img, lab = ds.load_image(0), ds.load_label(0)
    assert img.shape == (5, 32, 32)  # z: reference rule n + 1
    # in-plane spacing x (64 - 8) / 32 = 1.75, z unchanged; origin moved by the 4 px border crop
    np.testing.assert_allclose(img.spacing, (0.8 * 1.75, 0.8 * 1.75, 3.0), atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, 3], (10.0 + 4 * 0.8, -20.0 + 4 * 0.8, 5.0), atol=1e-4)
    assert img.array.min() >= 0 and img.array.max() <= 255 and img.array[:4].max() > 250
    # window [-125, 275] -> [0, 255]: pid 0 is img0001 (liver HU 110) -> 255 * 235 / 400
    assert abs(np.median(img.array[:4][lab.array[:4] == 6]) - 255 * 235 / 400) < 0.01
    assert set(np.unique(lab.array)) == {0, 1, 6}
    # liver block x 10..29 (cropped: 6..25) -> about 6 / 1.75 .. 25 / 1.75
    cols = np.argwhere(lab.array[0] == 6)[:, 1]
    assert 2 <= cols.min() <= 4 and 13 <= cols.max() <= 15
    cm = json.loads((out / "classmap_1.json").read_text())
    assert cm["LIVER"]["0"] == [0, 1, 2, 3] and "KID_L" in cm


def test_prepare_synapse_errors(tmp_path):
    raw = tmp_path / "raw"
    make_synapse_raw(raw, keys=("0001",), bad_label=True)
    with pytest.raises(DataError, match=r"label0001\.nii\.gz.*\[14\]"):
        prepare_synapse(raw, tmp_path / "out", border=4, size=32, progress=False)
    (raw / "label" / "label0001.nii.gz").unlink()
    with pytest.raises(DataError, match="no label file"):
        prepare_synapse(raw, tmp_path / "out2", border=4, size=32, progress=False)


# ---------------------------------------------------------------------------------------------- MS-CMRSeg


def make_cmr_raw(root: Path, n=(1, 3), shape=(5, 48, 40)):
    for p in n:
        img = np.full(shape, 20.0, np.float32)
        lab = np.zeros(shape, np.float64)  # float labels as distributed
        lab[:, 14:34, 10:30] = 200
        lab[:, 18:30, 14:26] = 500
        lab[:, 20:28, 30:38] = 600
        img[lab == 500] = 300
        img[lab == 200] = 120
        write_nifti(root / f"patient{p}_C0.nii.gz", img, spacing=(1.0, 1.0, 10.0))
        write_nifti(root / f"patient{p}_C0_manual.nii.gz", lab, spacing=(1.0, 1.0, 10.0))


@parameterized.expand([("crop", 16, (16, 16)), ("pad", 40, (40, 40))])
def test_prepare_cmr_synthetic(_, size, hw):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_cmr_raw(tmp / "raw")
        res = prepare_cmr(tmp / "raw", tmp / "out", spacing=(2.0, 2.0, 10.0), size=size, progress=False)
        assert res["pids"] == ["1", "3"]
        raw_lab = read_volume(tmp / "out" / "label_1.nii.gz", is_label=True)
        assert set(np.unique(raw_lab.array)) == {0, 200, 500, 600}  # raw coding kept on disk
        ds = PreparedVolumeDataset(tmp / "out", preset="cmr")
        lab, img = ds.load_label("1"), ds.load_image("1")
        assert lab.shape == (int(5 * 10 / 10 + 1), *hw) and img.shape == lab.shape
        assert set(np.unique(lab.array)) == {0, 1, 2, 3}  # remapped at load time
        assert img.array[lab.array == 2].mean() > 250
        if size == 40:  # padded with the image minimum
            assert img.array[0, 0, 0] == img.array.min()
        cm = json.loads((tmp / "out" / "classmap_1.json").read_text())
        assert cm["LV-BP"]["3"] == [0, 1, 2, 3, 4]


def test_prepare_cmr_missing_label(tmp_path):
    make_cmr_raw(tmp_path / "raw", n=(2,))
    (tmp_path / "raw" / "patient2_C0_manual.nii.gz").unlink()
    with pytest.raises(DataError, match="patient2_C0.nii.gz"):
        prepare_cmr(tmp_path / "raw", tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------- steps

SIZE_CASES = [
    # CHAOS case 1 of the reference log: 36 slices, 7.700005 -> 7.7 mm gives 37 (the distributed data has 37)
    (36, 7.700004577636719, 7.7, "reference", 37),
    # CHAOS case 10: 36 slices at 7.6999969 -> 36
    (36, 7.6999969482421875, 7.7, "reference", 36),
    (30, 9.0, 7.7, "reference", 36),
    (30, 9.0, 7.7, "round", 35),
    (256, 1.54296875, 1.25, "reference", 317),  # 316.0 + 1
]


@parameterized.expand(SIZE_CASES)
def test_resampled_size(n, old, new, rule, expected):
    assert resampled_size(n, old, new, rule) == expected


CROP_CASES = [(10, 6, 2), (11, 6, 2), (6, 10, -2), (5, 10, -3), (8, 8, 0)]


@parameterized.expand(CROP_CASES)
def test_crop_or_pad_center(n_in, n_out, offset):
    arr = np.arange(n_in * n_in, dtype=np.float32).reshape(1, n_in, n_in) + 1
    vol = Volume(arr, np.diag([2.0, 3.0, 4.0, 1.0]))
    out = crop_or_pad_center(vol, n_out, pad_value=-1)
    assert out.shape == (1, n_out, n_out)
    for r in range(n_out):
        src = r + offset
        expected = arr[0, src, src] if 0 <= src < n_in else -1
        assert out.array[0, r, r] == expected
    np.testing.assert_allclose(out.affine[:3, 3], (2.0 * offset, 3.0 * offset, 0.0))


def test_crop_border_and_errors():
    vol = Volume(np.zeros((2, 10, 12), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    out = crop_border(vol, 2)
    assert out.shape == (2, 6, 8)
    np.testing.assert_allclose(out.affine[:3, 3], (2.0, 4.0, 0.0))
    with pytest.raises(DataError, match="cannot crop"):
        crop_border(vol, 5)


def test_resample_labels_argmax_and_ties():
    lab = np.zeros((1, 4, 4), np.uint8)
    lab[0, :, 2:] = 3
    vol = Volume(lab, np.eye(4))
    # halfway samples between columns 1 (class 0) and 2 (class 3) are ties -> the lower value (0)
    # (sample 7 at x = 3.5 lies outside the input and gets background)
    out = resample_labels(vol, (0.5, 1.0, 1.0), size=(8, 4, 1))
    np.testing.assert_array_equal(out.array[0, 0], [0, 0, 0, 0, 3, 3, 3, 0])
    assert out.array.dtype == np.uint8
    # an identity resampling keeps every label
    same = resample_labels(vol, (1.0, 1.0, 1.0), size=(4, 4, 1))
    np.testing.assert_array_equal(same.array, lab)
