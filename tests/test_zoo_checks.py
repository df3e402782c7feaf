# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI Model Zoo's own bundle checks (``labelless.zoo``, after the Zoo's ``ci/verify_bundle.py``) on every
bundle of the repository, so that a new bundle cannot slip: required files, version and changelog, metadata schema,
``large_files.yml`` md5s, inference properties, side-effect-free loading, ``verify_net_in_out`` and TorchScript
export. Each check is also shown to fail on a broken copy (a check that cannot fail proves nothing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _bundles import BUNDLES
from labelless.errors import ConfigError
from labelless.zoo import ZOO_CHECKS, format_check_table, large_file_entries, run_zoo_checks, write_large_files

ALL = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())


@pytest.mark.parametrize("bundle", ALL)
def test_zoo_checks_pass(bundle: str):
    results = run_zoo_checks(BUNDLES / bundle)
    print(format_check_table({bundle: results}))
    assert list(results) == list(ZOO_CHECKS)
    failed = {k: v["detail"] for k, v in results.items() if not v["ok"]}
    assert not failed, failed


def _copy(bundle: str, tmp_path: Path) -> Path:
    dst = tmp_path / bundle
    shutil.copytree(BUNDLES / bundle, dst, ignore=shutil.ignore_patterns("eval", "predictions", "__pycache__"))
    return dst


def test_checks_fail_on_broken_bundles(tmp_path: Path):
    b = _copy("sabrnet_semisupervised_ultrasound_segmentation", tmp_path)
    assert all(r["ok"] for r in run_zoo_checks(b, ["files", "version", "large_files", "load"]).values())
    # a weight file changed after large_files.yml was written
    with open(b / "models" / "model.pt", "ab") as f:
        f.write(b"\0")
    res = run_zoo_checks(b, ["large_files"])["large_files"]
    assert not res["ok"] and "md5" in res["detail"]
    write_large_files(b)
    assert run_zoo_checks(b, ["large_files"])["large_files"]["ok"]
    # an unlisted weight file
    shutil.copy(b / "models" / "model.pt", b / "models" / "extra.pt")
    assert "extra.pt" in run_zoo_checks(b, ["large_files"])["large_files"]["detail"]
    # version not in the changelog
    meta_path = b / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = "9.9.9"
    meta_path.write_text(json.dumps(meta))
    res = run_zoo_checks(b, ["version", "metadata"])
    assert not res["version"]["ok"] and "9.9.9" in res["version"]["detail"]
    # a checkpoint saver attached at initialize writes on load
    train = json.loads((b / "configs" / "train.json").read_text())
    train["initialize"].append("$@checkpoint_saver.attach(@train#trainer)")
    train["train"]["handlers"] = [h for h in train["train"]["handlers"] if "use" not in h]
    for h in train["train"]["handlers"]:
        if h.get("_target_") == "TensorBoardStatsHandler":
            h.pop("summary_writer", None)
            h["log_dir"] = "$@output_dir + '/tensorboard'"
    (b / "configs" / "train.json").write_text(json.dumps(train))
    res = run_zoo_checks(b, ["load"])["load"]
    assert not res["ok"] and "wrote" in res["detail"], res
    # a missing LICENSE
    (b / "LICENSE").unlink()
    assert "LICENSE" in run_zoo_checks(b, ["files"])["files"]["detail"]
    table = format_check_table({"broken": run_zoo_checks(b, ["files", "version"])})
    assert "FAIL" in table and "| broken |" in table


def test_large_files_match_the_shipped_weights():
    for bundle in ALL:
        entries = large_file_entries(BUNDLES / bundle)
        extra = ["models/model_lesion_crops.pt"] if bundle == "fsms_fewshot_skin_segmentation" else []
        assert [e["path"] for e in entries] == ["models/model.pt", *extra], bundle


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a bundle folder"):
        run_zoo_checks(tmp_path)
    with pytest.raises(ConfigError, match="unknown check"):
        run_zoo_checks(BUNDLES / ALL[0], ["nope"])


def test_bundle_check_command(tmp_path: Path, capsys):
    from labelless.bundle_tools import BundleCommands
    from labelless.errors import DataError

    b = _copy("cltnet_weakly_supervised_segmentation", tmp_path)
    table = BundleCommands().check(str(b), checks="files,version,readme")
    assert "| cltnet_weakly_supervised_segmentation | pass | pass | pass |" in table
    (b / "docs" / "README.md").write_text("# nothing\n\n## Data\n")
    with pytest.raises(DataError, match="Model Zoo checks failed"):
        BundleCommands().check(str(b), checks=("readme",))
    assert "Model overview" in capsys.readouterr().out
