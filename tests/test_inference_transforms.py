# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The inference runners' pre/post-processing transforms (loading, in-plane resizing, z-scores, binarisation, slice
clean-up, soft-mask post-processing), the helpers around them, and a runner driven by them from a config-like
pipeline (MONAI ``Compose``, ``Dataset``/``DataLoader``, handlers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.data.utils import no_collation
from monai.transforms import Compose
from PIL import Image

from labelless.data.images import load_rgb, resize_image
from labelless.errors import ConfigError, DataError
from labelless.io.loading import LoadFile, LoadFileD, LoadFiled, loaded_meta
from labelless.io.readers import read_volume
from labelless.io.volume import Volume
from labelless.io.writers import write_volume
from labelless.transforms.intensity import ZScoreNormalize, ZScoreNormalized, zscore, zscore_options
from labelless.transforms.postprocess import Binarize, Binarized, SoftMaskPostprocess, SoftMaskPostprocessd
from labelless.transforms.spatial import ResizeInPlane, ResizeInPlaned, ZeroSlices, ZeroSlicesd
from labelless.transforms.utility import LogItemd, iterate_items, run_transform


def _volume_resize(arr: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """The few-shot volume runner's resize before the transforms (the reference for bit-identity)."""
    if tuple(arr.shape[-2:]) == tuple(size):
        return arr
    t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)[:, None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=size, mode=mode, **kw)[:, 0].numpy()


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arr = rng.normal(100.0, 20.0, (5, 24, 20)).astype(np.float32)
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    return write_volume(arr, tmp_path / "vol.nii.gz", affine=affine)


@pytest.fixture
def rgb_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------------------ loading
def test_load_volume_records_its_source(volume_file):
    d = LoadFiled("image", reader=read_volume, ndim=None)({"image": str(volume_file)})
    meta = loaded_meta(d, "image")
    assert isinstance(meta["original"], Volume) and meta["filename_or_obj"] == str(volume_file)
    assert meta["spatial_shape"] == (5, 24, 20) and d["image"].shape == (5, 24, 20)
    np.testing.assert_array_equal(d["image"], read_volume(volume_file).array)
    assert LoadFileD is LoadFiled


def test_load_rgb_and_channel_first(rgb_file):
    d = LoadFiled("image", reader=load_rgb, size=None)({"image": rgb_file})
    assert tuple(d["image"].shape) == (3, 30, 41) and loaded_meta(d, "image")["spatial_shape"] == (30, 41)
    grey, original = LoadFile(lambda p: np.zeros((7, 9), np.float32), ensure_channel_first=True)(rgb_file)
    assert grey.shape == (1, 7, 9) and original.shape == (7, 9)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.nii.gz"):
        LoadFiled("image", reader=read_volume)({"image": str(tmp_path / "missing.nii.gz")})
    with pytest.raises(ConfigError, match="file path"):
        LoadFile(read_volume)(np.zeros(3))
    with pytest.raises(ConfigError, match="callable"):
        LoadFile("read_volume")
    with pytest.raises(ConfigError, match="image_meta_dict"):
        loaded_meta({"image": np.zeros(3)}, "image")


# ----------------------------------------------------------------------------------------------------- resizing
RESIZE_2D = [((3, 300, 200), 112), ((3, 50, 70), 112), ((3, 113, 111), 112), ((1, 97, 123), 128), ((3, 64, 64), 64)]


@pytest.mark.parametrize("shape,size", RESIZE_2D)
def test_resize_matches_resize_image_bitwise(shape, size):
    img = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    expected = resize_image(img.clone(), size)
    out = ResizeInPlane(size, antialias=True, clip=(0.0, 1.0))(img)
    assert isinstance(out, torch.Tensor) and torch.equal(out, expected)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize(
    "shape,size", [((12, 200, 180), (256, 256)), ((4, 256, 256), (256, 256)), ((6, 40, 30), (17, 23))]
)
def test_slice_wise_resize_matches_the_volume_runner_bitwise(mode, shape, size):
    arr = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    out = ResizeInPlane(size, mode=mode, slice_wise=True)(arr)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, _volume_resize(arr, size, mode))


def test_resize_keeps_size_and_checks_divisibility(volume_file):
    arr = np.ones((2, 16, 24), np.float32)
    np.testing.assert_array_equal(ResizeInPlane(None, divisible_by=8)(arr), arr)
    item = LoadFiled("image", reader=read_volume)({"image": volume_file})  # slices of 24 x 20
    with pytest.raises(DataError, match=r"vol.nii.gz.*not a multiple of 8"):
        ResizeInPlaned("image", spatial_size=None, divisible_by=8)(item)
    with pytest.raises(ConfigError, match="mode"):
        ResizeInPlane(8, mode="bogus")
    with pytest.raises(ConfigError, match="spatial_size"):
        ResizeInPlane("big")


def test_resize_back_to_the_loaded_size(volume_file):
    item = Compose([LoadFiled("image", reader=read_volume), ResizeInPlaned("image", spatial_size=32, slice_wise=True)])(
        {"image": volume_file}
    )
    assert item["image"].shape == (5, 32, 32)
    item["pred"] = (item["image"] > 0).astype(np.uint8)
    back = ResizeInPlaned("pred", size_of="image", mode="nearest", slice_wise=True)(item)
    assert back["pred"].shape == (5, 24, 20) and item["pred"].shape == (5, 32, 32)  # the input item is not changed


# ------------------------------------------------------------------------------------------------------ z-scores
def test_zscore_transforms(volume_file):
    vol = read_volume(volume_file).array
    np.testing.assert_array_equal(ZScoreNormalize()(vol), zscore(vol))
    np.testing.assert_array_equal(ZScoreNormalize("fixed", [90.0, 10.0])(vol), zscore(vol, 90.0, 10.0))
    assert zscore_options("volume_zscore", [1.0, 2.0]) is None and zscore_options("fixed", (1, 2)) == (1.0, 2.0)
    item = LoadFiled("image", reader=read_volume)({"image": volume_file})
    np.testing.assert_array_equal(ZScoreNormalized("image")(item)["image"], zscore(vol))


@pytest.mark.parametrize(
    "normalization,stats,needle",
    [("bogus", None, "normalization must be 'volume_zscore' or 'fixed', got 'bogus'"),
     ("fixed", None, "needs norm_stats"), ("fixed", [0, 0], "norm_stats std"), ("fixed", "ab", "norm_stats must")],
)  # fmt: skip
def test_zscore_option_errors(normalization, stats, needle):
    with pytest.raises(ConfigError, match=needle):
        ZScoreNormalized("image", normalization, stats)


def test_zscore_names_the_file(tmp_path):
    arr = np.ones((2, 8, 8), np.float32)
    path = write_volume(arr, tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match=r"flat.nii.gz.*constant"):
        run_transform(Compose([LoadFiled("image", reader=read_volume), ZScoreNormalized("image")]), {"image": path})


# ------------------------------------------------------------------------------------------ binarising, clean-up
def test_binarize():
    p = np.array([0.2, 0.5, 0.7], np.float32)
    np.testing.assert_array_equal(Binarize(0.5)(p), [False, False, True])
    np.testing.assert_array_equal(Binarize(0.5, inclusive=True)(p), [False, True, True])
    out = Binarize(0.5, dtype="uint8")(torch.as_tensor(p))
    assert out.dtype == torch.uint8 and out.tolist() == [0, 0, 1]
    assert Binarized("pred", 0.5, dtype="uint8")({"pred": p})["pred"].dtype == np.uint8
    with pytest.raises(ConfigError, match="threshold"):
        Binarize("x")


def test_zero_slices():
    pred = np.ones((4, 2, 2), np.uint8)
    np.testing.assert_array_equal(ZeroSlices()(pred, [0, 3]).sum(axis=(1, 2)), [0, 4, 4, 0])
    np.testing.assert_array_equal(ZeroSlices()(pred, np.array([0, 1, 0, 0], bool)).sum(axis=(1, 2)), [4, 0, 4, 4])
    assert ZeroSlices()(pred, None) is pred and pred.sum() == 16  # the input is not modified
    d = ZeroSlicesd("pred")({"pred": torch.ones(3, 2, 2), "empty_slices": torch.tensor([True, False, False])})
    assert d["pred"].sum(dim=(1, 2)).tolist() == [0, 4, 4]
    with pytest.raises(DataError, match="slice mask"):
        ZeroSlices()(pred, np.array([True, False]))


def test_soft_mask_postprocess_dict_matches_the_array_version(rgb_file):
    item = LoadFiled("image", reader=load_rgb, size=None)({"image": rgb_file})
    image = loaded_meta(item, "image")["original"]
    soft = torch.rand(1, 30, 41, generator=torch.Generator().manual_seed(5))
    item["prob"] = soft
    out = SoftMaskPostprocessd("prob", zero_corners=True)(item)
    ref_soft, ref_bin = SoftMaskPostprocess(zero_corners=True)(soft, image * 2.0 - 1.0)
    np.testing.assert_array_equal(out["prob"], ref_soft)
    np.testing.assert_array_equal(out["pred"], ref_bin)


# ------------------------------------------------------------------------------------------ helpers and handlers
def test_run_transform_raises_the_labelless_error_itself(tmp_path):
    pipeline = Compose([LoadFiled("image", reader=read_volume)])
    with pytest.raises(DataError, match="nope.nii.gz") as info:
        run_transform(pipeline, {"image": tmp_path / "nope.nii.gz"})
    chain, e = [], info.value
    while e is not None:  # no cycle: MONAI's wrapper is kept as (hidden) context only, without its link back
        assert len(chain) < 10, "cyclic exception chain"
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert isinstance(chain[1], RuntimeError) and info.value.__suppress_context__
    assert run_transform(None, {"a": 1}) == {"a": 1}


def test_iterate_items(volume_file, tmp_path):
    data = [{"image": str(volume_file)}, {"image": str(volume_file)}]
    loader = DataLoader(Dataset(data, LoadFiled("image", reader=read_volume)), batch_size=2, collate_fn=no_collation)
    items = list(iterate_items(loader))
    assert len(items) == 2 and all(i["image"].shape == (5, 24, 20) for i in items)
    bad = DataLoader(Dataset([{"image": str(tmp_path / "gone.nii.gz")}], LoadFiled("image", reader=read_volume)),
                     collate_fn=no_collation)  # fmt: skip
    with pytest.raises(DataError, match="gone.nii.gz"):
        list(iterate_items(bad))
    with pytest.raises(ConfigError, match="no_collation"):
        list(iterate_items([np.zeros(2)]))


def test_log_item(caplog):
    handler = LogItemd("[{index}/{total}] {input} -> {mask}", logger_name="labelless.test")
    with caplog.at_level(logging.INFO, logger="labelless.test"):
        record = {"input": "a.png", "mask": "out/a_mask.png", "index": 1, "total": 3}
        assert handler(record) is record
    assert "[1/3] a.png -> out/a_mask.png" in caplog.text
    with pytest.raises(ConfigError, match="'mask'"):
        LogItemd("{mask}")({"input": "a"})
    with pytest.raises(ConfigError, match="level"):
        LogItemd("x", level="LOUD")


# ------------------------------------------------------------------------------------- a runner driven by them
@pytest.fixture
def weak_inputs(tmp_path: Path) -> tuple[torch.nn.Module, list[Path]]:
    from labelless.networks.cltnet import CLTGenerator

    rng = np.random.default_rng(2)
    folder = tmp_path / "images"
    folder.mkdir()
    files = []
    for i, (h, w) in enumerate([(40, 52), (64, 64), (33, 47)]):
        files.append(folder / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    torch.manual_seed(0)
    return CLTGenerator(spatial_dims=2, in_channels=3, out_channels=3, ngf=4, n_res_blocks=1).eval(), files


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "inference_summary.json" and not p.name.startswith(".")}  # fmt: skip


def test_weak_runner_config_pipeline_equals_its_defaults(weak_inputs, tmp_path):
    from labelless.weak.inference import WeakSegmentationInferenceRunner as Runner

    net, files = weak_inputs
    Runner(net, files, tmp_path / "default", image_size=32).run()
    pre, post = Runner.default_preprocessing(32), Runner.default_postprocessing()
    loader = DataLoader(Dataset([{"image": str(f)} for f in files], pre), batch_size=1, collate_fn=no_collation)
    seen = []
    summary = Runner(net, files, tmp_path / "config", image_size=32, preprocessing=pre, postprocessing=post,
                     dataloader=loader, handlers=[seen.append]).run()  # fmt: skip
    assert _tree(tmp_path / "default") == _tree(tmp_path / "config") and len(_tree(tmp_path / "config")) == 9
    assert [(r["index"], r["total"], r["input"]) for r in seen] == [(i + 1, 3, str(f)) for i, f in enumerate(files)]
    assert json.loads((tmp_path / "config" / "inference_summary.json").read_text())["images"] == summary["images"]
    with pytest.raises(ConfigError, match="not one of the runner's images"):
        Runner(net, files[:1], tmp_path / "subset", image_size=32, dataloader=loader).run()
    with pytest.raises(ConfigError, match="handlers"):
        Runner(net, files, tmp_path / "h", handlers=["log"])
