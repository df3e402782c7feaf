# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Label-free adaptation (configs/adapt.json, labelless.fewshot.volume.adapt) on small phantom volumes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import labelless.io.readers as readers
from _bundles import TINY, bundle_workflow, root_cause
from labelless.data.layouts import PreparedVolumeDataset
from labelless.errors import ConfigError
from labelless.fewshot.volume.adapt import AdaptationBudget, check_adapt_options, prepare_unlabelled_volumes
from labelless.io.readers import read_volume
from labelless.io.writers import write_volume

BUNDLE = "ssl_alpnet_fewshot_segmentation"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """Two small phantom scans (8 slices each) with their label files beside them (which must never be read)."""
    from labelless.data.phantoms import default_dataset_dir

    src = default_dataset_dir("abdomen")
    out = tmp_path_factory.mktemp("vols")
    for pid in (1, 2):
        img = read_volume(src / f"image_{pid}.nii.gz")
        z0 = img.shape[0] // 2 - 4
        write_volume(img.array[z0 : z0 + 8], out / f"scan{pid}.nii.gz", affine=img.affine)
        shutil.copy(src / f"label_{pid}.nii.gz", out / f"label_scan{pid}.nii.gz")
    return out


@pytest.fixture
def no_label_reads(monkeypatch):
    """Fail on any attempt to read a label file."""
    load = readers._load

    def guarded(path, *args, **kwargs):
        if Path(path).name.startswith("label_"):
            raise AssertionError(f"label file read during adaptation: {path}")
        return load(path, *args, **kwargs)

    def no_label(self, pid):
        raise AssertionError(f"load_label({pid}) called during adaptation")

    monkeypatch.setattr(readers, "_load", guarded)
    monkeypatch.setattr(PreparedVolumeDataset, "load_label", no_label)


def _adapt(cwd: Path, volumes: Path, **overrides):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        wf = bundle_workflow(BUNDLE, ["train.json", "adapt.json"], "train", dataset_dir=str(volumes),
                             **{**TINY, "log_every": 1, "save_interval": 2, **overrides})  # fmt: skip
        wf.initialize()
        wf.run()
        wf.finalize()
    finally:
        os.chdir(old)
    return wf


def test_adapt_a_few_iterations_then_budget_then_inference(tmp_path, volumes, no_label_reads):
    # 1) an iteration budget, from the network's own initial weights (the tiny encoder has no shipped weights)
    wf = _adapt(tmp_path, volumes, init_ckpt=None, n_steps=3)
    out = tmp_path / "adapted" / BUNDLE  # the default output folder: under the working directory, not the bundle
    first = out / "model.pt"
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 3
    assert first.is_file() and (out / "checkpoints" / "fold0_setting1.pt").is_file()
    prepared = sorted(p.name for p in (out / "cache" / "prepared").iterdir())
    assert prepared == ["adapt_sources.json", "image_scan1.nii.gz", "image_scan2.nii.gz"]  # no label written
    assert sorted(p.name for p in volumes.iterdir()) == [
        "label_scan1.nii.gz",
        "label_scan2.nii.gz",
        "scan1.nii.gz",
        "scan2.nii.gz",
    ]  # input folder untouched

    # 2) continue from that model (plain state dict) under a time budget that ends the run after one iteration
    out2 = tmp_path / "second"
    wf = _adapt(
        tmp_path,
        volumes,
        init_ckpt=str(first),
        n_steps=1000,
        time_budget_min=1e-4,
        output_dir=str(out2),
        adapt_cache_dir=str(out / "cache"),
    )
    budget = wf.parser.get_parsed_content("adapt_budget")
    assert budget.stopped_by_budget and wf.parser.get_parsed_content("train#trainer").state.iteration == 1
    state = torch.load(out2 / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    # 3) the adapted model is what inference.json takes as --ckpt_path (a support label outside the input folder)
    sup = read_volume(volumes / "scan1.nii.gz")
    mask = np.zeros(sup.shape, np.uint8)
    mask[:, 100:150, 80:160] = 1
    write_volume(mask, tmp_path / "support" / "mask.nii.gz", reference=sup, dtype=np.uint8)
    inf = bundle_workflow(BUNDLE, ["inference.json"], "inference", **TINY, ckpt_path=str(out2 / "model.pt"),
                          output_dir=str(tmp_path / "pred"), support_image=str(volumes / "scan1.nii.gz"),
                          support_label=str(tmp_path / "support" / "mask.nii.gz"), label_value=1, n_overlays=0,
                          queries=[str(volumes / "scan2.nii.gz")])  # fmt: skip
    inf.initialize()
    inf.run()
    assert (tmp_path / "pred" / "scan2_pred.nii.gz").is_file()


def test_superpixel_min_size_gets_its_own_cache_and_smaller_superpixels(tmp_path, volumes):
    from labelless.io import read_volume as read

    out = tmp_path / "adapted" / BUNDLE
    _adapt(tmp_path, volumes, init_ckpt=None, n_steps=1)
    _adapt(tmp_path, volumes, init_ckpt=None, n_steps=1, superpixel_min_size=20)  # same cache folder, other size
    default, small = out / "cache" / "derived", out / "cache" / "derived_min20"
    maps = sorted(p.name for p in default.glob("superpix*scan1*"))
    assert maps and sorted(p.name for p in small.glob("superpix*scan1*")) == maps
    n_default = len(np.unique(read(default / maps[0]).array))
    n_small = len(np.unique(read(small / maps[0]).array))
    assert n_small > n_default  # a smaller minimum size gives more, smaller pseudo-label classes


def test_strong_augmentation_trains_and_bad_names_fail(tmp_path, volumes):
    from monai.transforms import Compose, RandFlipd

    wf = _adapt(tmp_path, volumes, init_ckpt=None, n_steps=2, augmentation="strong")
    transform = wf.parser.get_parsed_content("train#dataset").transform
    assert isinstance(transform, Compose) and isinstance(transform.transforms[-1], RandFlipd)
    assert (tmp_path / "adapted" / BUNDLE / "model.pt").is_file()
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(Exception) as info:
        _adapt(bad, volumes, init_ckpt=None, n_steps=1, augmentation="wild")
    assert isinstance(root_cause(info.value), ConfigError) and "augmentation must be" in str(root_cause(info.value))
    assert not list(bad.rglob("superpix*"))  # refused before the superpixel precompute


def test_prepare_keeps_outputs_outside_the_input_and_reuses_the_cache(tmp_path, volumes):
    with pytest.raises(ConfigError, match="inside the input folder"):
        prepare_unlabelled_volumes(volumes, volumes / "prepared")
    out = prepare_unlabelled_volumes(volumes, tmp_path / "p", image_size=128)
    vol = read_volume(out / "image_scan1.nii.gz")
    assert vol.shape == (8, 128, 128) and vol.array.min() == 0
    assert abs(float(np.percentile(vol.array, 99.5)) - 800) < 8
    stamp = (out / "image_scan1.nii.gz").stat().st_mtime_ns
    prepare_unlabelled_volumes(volumes, tmp_path / "p", image_size=128)
    assert (out / "image_scan1.nii.gz").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"setting": 2}, "setting must be 1"), ({"time_budget_min": 0}, "time_budget_min"),
     ({"snapshot_minutes": [-1]}, "snapshot_minutes"), ({"body_threshold_rel": 2}, "body_threshold_rel"),
     ({"superpixel_min_size": 0}, "superpixel_min_size")],
)  # fmt: skip
def test_bad_adapt_options_are_one_line_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        check_adapt_options(**kwargs)


def test_adapt_setting2_fails_before_any_work(tmp_path, volumes):
    with pytest.raises(Exception) as err:
        _adapt(tmp_path, volumes, init_ckpt=None, n_steps=2, setting=2)
    assert "setting must be 1" in str(root_cause(err.value))
    assert not (tmp_path / "adapted" / BUNDLE / "cache").exists()


def test_budget_snapshots_need_a_folder():
    with pytest.raises(ConfigError, match="snapshot_minutes"):
        AdaptationBudget(1, [0.5])


def test_adapt_command_needs_a_volume_bundle(tmp_path):
    from labelless.fewshot.volume.adapt import adapt_bundle

    with pytest.raises(ConfigError, match="no configs/adapt.json"):
        adapt_bundle("fsms_fewshot_skin_segmentation", tmp_path, out=tmp_path / "o")
    with pytest.raises(ConfigError, match="not found"):
        adapt_bundle("no_such_bundle", tmp_path)


def test_adapt_command_passes_the_superpixel_size(tmp_path, monkeypatch):
    import labelless.fewshot.volume.adapt as adapt_mod
    from labelless.cli import main

    seen = {}
    monkeypatch.setattr(adapt_mod, "adapt_bundle", lambda *a, **k: seen.update(k) or tmp_path / "model.pt")
    main(["adapt", "ssl_alpnet_fewshot_segmentation", str(tmp_path), "--superpixel_min_size", "100"])
    assert seen["superpixel_min_size"] == 100 and seen["budget_clock"] == "wall"


def test_budget_clock_counts_cpu_minutes_not_waiting():
    """With clock="cpu" a process that sleeps (a machine shared with other jobs) does not use its budget; with the
    wall clock it does."""
    import time

    from ignite.engine import Engine

    def run(clock: str) -> tuple[int, bool]:
        budget = AdaptationBudget(0.1 / 60, clock=clock)  # 0.1 s

        def step(engine, batch):  # noqa: ANN001, ANN202
            time.sleep(0.02)
            return 0

        engine = Engine(step)
        budget.attach(engine)
        engine.run(range(30), max_epochs=1)
        return engine.state.iteration, budget.stopped_by_budget

    wall_iters, wall_stopped = run("wall")
    cpu_iters, cpu_stopped = run("cpu")
    assert wall_stopped and wall_iters < 30
    assert not cpu_stopped and cpu_iters == 30
    with pytest.raises(ConfigError, match="budget_clock"):
        AdaptationBudget(1, clock="gpu")


def test_freeze_bn_stats_keeps_running_statistics_through_train_mode():
    """freeze_bn_stats: a training step in train() mode leaves the batch-norm running statistics unchanged while
    the weights still learn; without it the statistics move."""
    from labelless.fewshot.volume.adapt import freeze_batchnorm_statistics

    def step(freeze: bool) -> tuple[bool, bool]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        n = freeze_batchnorm_statistics(net, freeze)
        assert n == (1 if freeze else 0)
        before = net[1].running_mean.clone()
        weight = net[0].weight.detach().clone()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        net.train()
        net(torch.randn(2, 1, 8, 8) * 3 + 5).mean().backward()
        opt.step()
        return torch.equal(before, net[1].running_mean), not torch.equal(weight, net[0].weight)

    assert step(True) == (True, True)
    assert step(False) == (False, True)


def test_adapt_command_passes_freeze_bn_stats(tmp_path, monkeypatch):
    import labelless.fewshot.volume.adapt as adapt_mod
    from labelless.cli import main

    seen = {}
    monkeypatch.setattr(adapt_mod, "adapt_bundle", lambda *a, **k: seen.update(k) or tmp_path / "model.pt")
    main(["adapt", "ssl_alpnet_fewshot_segmentation", str(tmp_path), "--freeze_bn_stats", "true"])
    assert seen["freeze_bn_stats"] is True
    assert "augmentation" not in seen  # adapt.json's default unless asked
    seen.clear()
    main(["adapt", "ssl_alpnet_fewshot_segmentation", str(tmp_path), "--augmentation", "strong"])
    assert seen["augmentation"] == "strong"
