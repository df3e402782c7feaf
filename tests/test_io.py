# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Readers and writers on real files shipped by pydicom and nibabel, the shared CHAOS data and small files
written here."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813
from monai.transforms import LoadImage
from parameterized import parameterized
from PIL import Image

from conftest import shared_data_dir
from labelless.errors import DataError
from labelless.io import SimpleITKReader, Volume, read_image2d, read_volume, write_image2d, write_volume

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT5N = PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N"  # a real 5-slice axial CT series, files without suffix
NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def _dicom_hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(str(path))
    return ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


# ---------------------------------------------------------------------------------------------- DICOM


def test_dicom_series_sorted_by_position():
    vol = read_volume(CT5N)
    assert vol.shape == (5, 16, 16) and vol.array.dtype == np.float32
    assert vol.meta["format"] == "dicom_series"
    files = [CT5N / n for n in ("2062", "2392", "2693", "3023", "3353")]
    zs = [float(pydicom.dcmread(str(f)).ImagePositionPatient[2]) for f in files]
    order = np.argsort(zs)  # inferior -> superior along the slice normal (+z for IOP 1\0\0\0\1\0)
    for k, idx in enumerate(order):
        np.testing.assert_array_equal(vol.array[k], _dicom_hu(files[idx]))
    # LPS origin (-72.2, -143, -1.2375), spacing 0.488281 mm, 2.5 mm slices -> RAS affine
    expected = np.array(
        [[-0.488281, 0, 0, 72.199997], [0, -0.488281, 0, 143.0], [0, 0, 2.5, -1.2375], [0, 0, 0, 1]], dtype=np.float64
    )
    np.testing.assert_allclose(vol.affine, expected, atol=1e-5)


def test_dicom_series_names_do_not_matter(tmp_path):
    # copy with names whose alphabetical order is the reverse of the position order
    ref = read_volume(CT5N)
    for i, f in enumerate(sorted(CT5N.iterdir(), key=lambda p: p.name, reverse=True)):
        shutil.copy(f, tmp_path / f"slice_{i:02d}.dcm")
    vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine)


@parameterized.expand([("CT_small.dcm", (1, 128, 128)), ("MR_small.dcm", (1, 64, 64))])
def test_single_dicom_file(name, shape):
    vol = read_volume(PYDICOM_FILES / name)
    assert vol.shape == shape
    np.testing.assert_array_equal(vol.array[0], _dicom_hu(PYDICOM_FILES / name))
    ds = pydicom.dcmread(str(PYDICOM_FILES / name))
    np.testing.assert_allclose(vol.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])], atol=1e-5)


def test_dicom_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no DICOM series"):
        read_volume(tmp_path)
    (tmp_path / "notes.txt").write_text("not a DICOM")
    with pytest.raises(DataError, match=f"{tmp_path.name}.*no DICOM series"):
        read_volume(tmp_path)


# ---------------------------------------------------------------------------------------------- NIfTI


def test_nifti_big_endian_anatomical():
    path = NIB_DATA / "anatomical.nii"  # big-endian int16: MONAI's NibabelReader alone fails on it
    img = nib.load(str(path))
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.float32))
    np.testing.assert_allclose(vol.affine, img.affine)
    assert vol.meta["dtype"] in ("int16", ">i2")


def test_sitk_reader_agrees_with_nibabel():
    path = NIB_DATA / "anatomical.nii"
    nib_vol = read_volume(path)
    mt = LoadImage(image_only=True)(str(path), reader=SimpleITKReader())
    assert tuple(mt.shape) == nib_vol.shape[::-1]  # MONAI order (x, y, z)
    np.testing.assert_array_equal(mt.numpy().transpose(2, 1, 0), nib_vol.array)
    np.testing.assert_allclose(mt.affine.numpy(), nib_vol.affine, atol=1e-5)


def test_nifti_standard_and_4d():
    std = read_volume(NIB_DATA / "standard.nii.gz")
    assert std.shape == (7, 5, 4)
    np.testing.assert_allclose(std.spacing, (1.0, 3.0, 2.0))
    with pytest.raises(DataError, match=r"example4d\.nii\.gz.*4D"):
        read_volume(NIB_DATA / "example4d.nii.gz")


def test_nifti_2d_needs_ndim(tmp_path):
    p = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(12, dtype=np.float32).reshape(4, 3), np.diag([2.0, 3.0, 1.0, 1.0])), str(p))
    with pytest.raises(DataError, match=r"slice\.nii\.gz.*2D image .* where a 3D volume is expected"):
        read_volume(p)
    vol = read_volume(p, ndim=None)
    assert vol.shape == (1, 3, 4)  # (Z, rows = y, cols = x)
    np.testing.assert_array_equal(vol.array[0], np.arange(12, dtype=np.float32).reshape(4, 3).T)
    np.testing.assert_allclose(vol.spacing, (2.0, 3.0, 1.0))


def test_nifti_nan_and_truncated(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(p))
    with pytest.raises(DataError, match=r"nan\.nii\.gz.*NaN"):
        read_volume(p)
    with pytest.raises(DataError, match="NaN"):
        read_volume(p, is_label=True)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 8)).astype(np.float32), np.eye(4)), str(good))
    data = good.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: cannot read file"):
        read_volume(cut)
    raw = tmp_path / "cut.nii"
    raw.write_bytes(gzip.decompress(data)[:1000])
    with pytest.raises(DataError, match=r"cut\.nii: cannot read file"):
        read_volume(raw)


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: file does not exist"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_volume(tmp_path / "table.csv")


def test_shared_chaos_volume(chaos_dir):
    img = read_volume(chaos_dir / "image_1.nii.gz")
    lab = read_volume(chaos_dir / "label_1.nii.gz", is_label=True)
    assert img.shape == lab.shape == (37, 256, 256)
    assert img.array.dtype == np.float32 and lab.array.dtype == np.float64  # distributed as float64
    np.testing.assert_allclose(img.spacing, (1.25, 1.25, 7.7), atol=1e-4)
    assert set(np.unique(lab.array)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert img.same_grid(lab)


# ---------------------------------------------------------------------------------------------- round trips


def _reference(kind: str, tmp: Path) -> Volume:
    if kind == "dicom":
        return read_volume(CT5N)
    if kind == "nifti":
        return read_volume(NIB_DATA / "anatomical.nii")
    # an oblique MHA written with SimpleITK
    img = sitk.GetImageFromArray(np.random.default_rng(1).random((3, 6, 5)).astype(np.float32))
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((10.0, -5.0, 2.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp / "oblique.mha"))
    return read_volume(tmp / "oblique.mha")


ROUND_TRIPS = [(k, s) for k in ("dicom", "nifti", "mha") for s in (".nii.gz", ".nrrd", ".mha")]


@parameterized.expand(ROUND_TRIPS)
def test_geometry_round_trip(kind, suffix):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ref = _reference(kind, tmp)
        pred = (ref.array > np.median(ref.array)).astype(np.uint8)
        out = write_volume(pred, tmp / f"pred{suffix}", reference=ref)
        back = read_volume(out, is_label=True)
        np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
        np.testing.assert_array_equal(back.array, pred)
        assert back.array.dtype == np.uint8
        assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []  # no temp files left
        img = write_volume(ref.array, tmp / f"img{suffix}", reference=ref)
        np.testing.assert_array_equal(read_volume(img).array, ref.array)


def test_write_errors(tmp_path):
    ref = read_volume(CT5N)
    with pytest.raises(DataError, match=r"pred\.nii\.gz.*differs from the reference"):
        write_volume(np.zeros((4, 16, 16)), tmp_path / "pred.nii.gz", reference=ref)
    with pytest.raises(DataError, match="cannot write"):
        write_volume(np.zeros((1, 4, 4)), tmp_path / "pred.jpg2")
    with pytest.raises(DataError, match="one slice"):
        write_volume(np.zeros((2, 4, 4)), tmp_path / "pred.png")
    assert not (tmp_path / "pred.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- 2D images


def test_png_grey_rgb_gif(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    mask = np.zeros((12, 20), np.uint8)
    mask[3:7, 5:15] = 255
    Image.fromarray(mask).convert("P").save(tmp_path / "m.gif")
    g = read_volume(tmp_path / "g.png", ndim=None)
    assert g.shape == (1, 12, 20) and g.channels is None
    np.testing.assert_array_equal(g.array[0], grey)
    c = read_volume(tmp_path / "c.png", ndim=2)
    assert c.shape == (1, 12, 20)
    np.testing.assert_array_equal(c.channels, rgb)
    np.testing.assert_allclose(c.array[0], rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    assert read_image2d(tmp_path / "c.png").shape == (12, 20, 3)
    assert read_image2d(tmp_path / "c.png", mode="L").shape == (12, 20)
    assert read_image2d(tmp_path / "g.png", mode="RGB").shape == (12, 20, 3)
    m = read_image2d(tmp_path / "m.gif", is_label=True)  # grey palette GIF: its grey values, not indices
    np.testing.assert_array_equal(m, mask)
    with pytest.raises(DataError, match=r"g\.png.*2D image"):
        read_volume(tmp_path / "g.png")  # ndim=3 by default
    with pytest.raises(DataError, match="colour label"):
        read_volume(tmp_path / "c.png", ndim=2, is_label=True)


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"b\.png: cannot read file"):
        read_image2d(tmp_path / "b.png")


WRITE_2D = [
    ("binary", np.array([[0, 1], [1, 0]], np.int64), np.uint8),
    ("255", np.array([[0, 255], [255, 0]], np.float64), np.uint8),
    ("16bit", np.array([[0, 300], [4000, 0]], np.int32), np.int32),  # 16-bit PNGs open as PIL mode "I"
]


@parameterized.expand(WRITE_2D)
def test_write_png_round_trip(_, arr, dtype):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = write_volume(arr[None], Path(d) / "mask.png")
        back = read_image2d(p, is_label=True)
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, arr)


def test_write_png_errors(tmp_path):
    with pytest.raises(DataError, match="PNG stores integers"):
        write_image2d(np.array([[0.5, 1.0]]), tmp_path / "x.png")
    with pytest.raises(DataError, match="do not fit"):
        write_image2d(np.array([[-1, 70000]]), tmp_path / "x.png")
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    write_image2d(rgb, tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image2d(tmp_path / "rgb.png"), rgb.astype(np.float32))


def test_shared_2d_datasets():
    isic = shared_data_dir("isic2016")
    img = read_image2d(next(iter(sorted((isic / "images").glob("*.jpg")))))
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.float32
    ddti = shared_data_dir("ddti")
    mask = read_image2d(next(iter(sorted((ddti / "masks").glob("*.gif")))), is_label=True)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}


def test_average_checkpoints_means_floats_keeps_counters_and_names_bad_files(tmp_path):
    import torch
    from torch import nn

    from labelless.errors import ConfigError, DataError
    from labelless.io.checkpoint import average_checkpoints

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)) for _ in range(3)]
    files = []
    for i, n in enumerate(nets):
        n[1].num_batches_tracked.fill_(10 * (i + 1))
        files.append(tmp_path / f"checkpoint_iteration={i}.pt")  # training checkpoints: weights under "model"
        torch.save({"model": {f"gen_ab.{k}": v for k, v in n.state_dict().items()}, "trainer": {"iteration": i}},
                   files[-1])  # fmt: skip
    before = [f.read_bytes() for f in files]
    out = average_checkpoints(files, tmp_path / "avg" / "model.pt", prefix="gen_ab.")
    avg = torch.load(out, weights_only=True)
    assert set(avg) == set(nets[0].state_dict())
    for k in ("0.weight", "0.bias", "1.running_mean"):
        assert torch.allclose(avg[k], sum(n.state_dict()[k] for n in nets) / 3)
    assert avg["1.num_batches_tracked"].item() == 30  # an integer counter: the last file's
    assert [f.read_bytes() for f in files] == before  # inputs untouched
    merged = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    merged.load_state_dict(avg)  # loads strictly into the same network
    # one file: its own weights
    one = torch.load(average_checkpoints(files[:1], tmp_path / "one.pt", prefix="gen_ab."), weights_only=True)
    assert torch.equal(one["0.weight"], nets[0].state_dict()["0.weight"])
    # errors name the file; nothing is written
    other = tmp_path / "other.pt"
    torch.save({**avg, "0.weight": torch.zeros(4, 2)}, other)
    with pytest.raises(DataError, match="other.pt.*shape of 0.weight"):
        average_checkpoints([tmp_path / "one.pt", other], tmp_path / "never.pt")
    torch.save({"0.weight": torch.zeros(3, 2)}, other)
    with pytest.raises(DataError, match="other.pt.*keys differ"):
        average_checkpoints([tmp_path / "one.pt", other], tmp_path / "never.pt")
    bad = {k: v.clone() for k, v in avg.items()}
    bad["0.bias"][0] = float("nan")
    torch.save(bad, other)
    with pytest.raises(DataError, match="other.pt.*NaN"):
        average_checkpoints([tmp_path / "one.pt", other], tmp_path / "never.pt")
    with pytest.raises(DataError, match="no weights with the prefix"):
        average_checkpoints([tmp_path / "one.pt"], tmp_path / "never.pt", prefix="gen_ba.")
    assert not (tmp_path / "never.pt").exists()
    with pytest.raises(ConfigError, match="one of the inputs"):
        average_checkpoints(files, files[1])
    with pytest.raises(ConfigError, match="no checkpoint"):
        average_checkpoints([], tmp_path / "never.pt")
    assert [f.read_bytes() for f in files] == before
