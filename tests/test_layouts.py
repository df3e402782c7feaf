# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The prepared-volume layout (image_<pid>.nii.gz, label_<pid>.nii.gz, classmap_1.json)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from parameterized import parameterized

from labelless.data.layouts import PreparedVolumeDataset, compute_classmap
from labelless.data.presets import get_preset
from labelless.errors import DataError

AFF = np.diag([1.25, 1.25, 7.7, 1.0])


def _save(path: Path, arr_zyx: np.ndarray, affine: np.ndarray = AFF) -> None:
    nib.save(nib.Nifti1Image(arr_zyx.transpose(2, 1, 0), affine), str(path))


def make_prepared(root: Path, pids=(10, 2, 1), shape=(4, 8, 8)) -> dict[str, np.ndarray]:
    """float64 images/labels like the distributed data; labels carry tiny float noise."""
    rng = np.random.default_rng(0)
    labels = {}
    for pid in pids:
        lab = np.zeros(shape, np.float64)
        lab[1:3, 2:5, 2:5] = 1
        lab[2, 5:7, 5:7] = 4
        lab[3, 0, 0] = 2 if pid == 2 else 0
        _save(root / f"image_{pid}.nii.gz", rng.random(shape))
        _save(root / f"label_{pid}.nii.gz", lab + 1e-7)
        labels[str(pid)] = lab.astype(np.int16)
    return labels


def test_pids_sorted_as_integers_and_labels_rounded(tmp_path):
    truth = make_prepared(tmp_path)
    (tmp_path / ".image_5.nii.gz.tmp.nii.gz").write_bytes(b"")  # a leftover temp file is not a scan
    ds = PreparedVolumeDataset(tmp_path, preset="chaos")
    assert ds.pids == ["1", "2", "10"] and len(ds) == 3
    lab = ds.load_label(2)
    assert lab.array.dtype == np.int16
    np.testing.assert_array_equal(lab.array, truth["2"])
    assert ds.load_image("10").array.dtype == np.float32
    with pytest.raises(DataError, match="no image for scan id '7'"):
        ds.load_image(7)


def test_unknown_label_value_names_file(tmp_path):
    make_prepared(tmp_path, pids=(1,))
    lab = np.zeros((4, 8, 8))
    lab[0, 0, 0] = 7
    _save(tmp_path / "label_1.nii.gz", lab)
    with pytest.raises(DataError, match=r"label_1\.nii\.gz.*\[7\]"):
        PreparedVolumeDataset(tmp_path, preset="chaos").load_label(1)


GRID_CASES = [
    ("shape", np.zeros((4, 8, 9)), AFF, "does not match image grid"),
    ("affine", np.zeros((4, 8, 8)), np.diag([1.25, 1.25, 5.0, 1.0]), "geometry"),
]


@parameterized.expand(GRID_CASES)
def test_grid_mismatch(_, lab, affine, msg):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        make_prepared(root, pids=(1,))
        _save(root / "label_1.nii.gz", lab, affine)
        with pytest.raises(DataError, match=rf"label_1\.nii\.gz.*{msg}"):
            PreparedVolumeDataset(root, preset="chaos").load_label(1)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        PreparedVolumeDataset(tmp_path / "none")
    with pytest.raises(DataError, match=r"no image_<id>\.nii\.gz"):
        PreparedVolumeDataset(tmp_path)
    make_prepared(tmp_path, pids=(3,))
    (tmp_path / "label_3.nii.gz").unlink()
    ds = PreparedVolumeDataset(tmp_path)
    assert not ds.has_label(3)
    with pytest.raises(DataError, match=r"label_3\.nii\.gz: label file missing"):
        ds.load_label(3)


def test_superpixel_names(tmp_path):
    make_prepared(tmp_path, pids=(1, 2))
    derived = tmp_path / "derived"
    derived.mkdir()
    sp = np.arange(4 * 8 * 8, dtype=np.float64).reshape(4, 8, 8) % 5
    _save(tmp_path / "superpix-MIDDLE_1.nii.gz", sp)  # the reference notebooks' name, next to the images
    _save(derived / "superpix_2.nii.gz", sp[:, :, :7])
    ds = PreparedVolumeDataset(tmp_path, derived_dir=derived)
    assert ds.superpixel_path(1).name == "superpix-MIDDLE_1.nii.gz"
    loaded = ds.load_superpixels(1)
    assert loaded.array.dtype == np.int32
    np.testing.assert_array_equal(loaded.array, sp.astype(np.int32))
    with pytest.raises(DataError, match=r"superpix_2\.nii\.gz.*does not match"):
        ds.load_superpixels(2)
    (derived / "superpix_2.nii.gz").unlink()
    with pytest.raises(DataError, match="no superpixel map for scan 2"):
        ds.load_superpixels(2)


def test_classmap_computed_written_and_read(tmp_path):
    truth = make_prepared(tmp_path)
    ds = PreparedVolumeDataset(tmp_path, preset="chaos")
    cm = ds.compute_classmap()
    assert cm["LIVER"] == {"1": [1, 2], "2": [1, 2], "10": [1, 2]}
    assert cm["SPLEEN"]["10"] == [2] and cm["RK"] == {"1": [], "2": [3], "10": []}
    assert cm == compute_classmap(truth, get_preset("chaos").label_map)
    # T counts pixels equal to the class id (a 2x2 spleen patch has 4 pixels)
    assert ds.compute_classmap(threshold=5)["SPLEEN"]["1"] == []
    assert ds.compute_classmap(threshold=4)["SPLEEN"]["1"] == [2]
    out = ds.write_classmap(tmp_path)
    assert json.loads(out.read_text()) == cm
    assert PreparedVolumeDataset(tmp_path).class_slices(1, 10) == [1, 2]


def test_classmap_alias_and_label_map_override(tmp_path):
    make_prepared(tmp_path, pids=(0,))
    cm = {"BGD": {"0": [0]}, "KID_l": {"0": [3]}}
    (tmp_path / "classmap_1.json").write_text(json.dumps(cm))
    ds = PreparedVolumeDataset(tmp_path, preset="synapse")
    assert ds.classmap()["KID_L"] == {"0": [3]}  # the reference notebooks' spelling is accepted
    assert ds.class_slices(3, 0) == [3]
    with pytest.raises(DataError, match="'SPLEEN' missing"):
        ds.class_slices(1, 0)
    # a scan absent from the index has unknown class slices: an error naming the index, never "no slice"
    make_prepared(tmp_path, pids=(0, 1))
    ds = PreparedVolumeDataset(tmp_path, preset="synapse")
    with pytest.raises(DataError, match=r"classmap_1\.json.*scan 1 is missing.*'KID_L'.*stale"):
        ds.class_slices(3, 1)
    (tmp_path / "label_1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"scan 1 is missing.*no label file"):
        PreparedVolumeDataset(tmp_path, preset="synapse").class_slices(3, "1")
    (tmp_path / "image_1.nii.gz").unlink()
    # a config-style label map (JSON string keys; 0 -> 0 implied)
    lab = np.zeros((4, 8, 8))
    lab[1, 1, 1], lab[2, 2, 2] = 200, 600
    _save(tmp_path / "label_0.nii.gz", lab)
    cmr = PreparedVolumeDataset(tmp_path, preset="chaos", label_map={"200": 1, "500": 2, "600": 3})
    out = cmr.load_label(0).array
    assert out[1, 1, 1] == 1 and out[2, 2, 2] == 3 and out.sum() == 4


def test_shared_chaos_classmap(chaos_dir):
    """classmap_1.json of the distributed CHAOS data equals the computed index for the foreground classes.

    Its BG entry was computed by the reference notebook as slices whose label *values* sum to >= 1, i.e. slices
    with any foreground, not slices containing background pixels (fewshot_protocol §2.4); we check exactly that.
    """
    ds = PreparedVolumeDataset(chaos_dir, preset="chaos", cache=False)
    assert ds.pids == ["1", "2", "3", "5", "8", "10", "13", "15", "19", "20", "21", "22", "31", "32", "33", "34",
                       "36", "37", "38", "39"]  # fmt: skip
    ref = json.loads((chaos_dir / "classmap_1.json").read_text())
    labels = {pid: ds.load_label(pid).array for pid in ds.pids}
    computed = compute_classmap(labels, ds.label_map)
    for name in ("LIVER", "RK", "LK", "SPLEEN"):
        assert {k: sorted(v) for k, v in ref[name].items()} == computed[name], name
    for pid, lab in labels.items():
        any_fg = [int(z) for z in np.nonzero(lab.reshape(lab.shape[0], -1).sum(axis=1) >= 1)[0]]
        assert sorted(ref["BG"][pid]) == any_fg
        assert computed["BG"][pid] == list(range(lab.shape[0]))  # every slice has background pixels
