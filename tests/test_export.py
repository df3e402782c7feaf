# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Whole-network export of every bundle (issue 15): ``verify_net_in_out`` with the metadata's
``network_data_format``, TorchScript through MONAI's ``ckpt_export network_def`` on the shipped weights and ONNX
(onnxruntime, an optional test dependency), each compared with the eager network on small inputs; the stored
support of the few-shot networks; the fixed-size prototype heads against the eager ones.

Figures on the embedded default data at the bundles' input sizes: ``python benchmarks/export_check.py``.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

from _bundles import BUNDLES
from labelless.networks.dspnet import DSPNetHead, fixed_fspa_seeds, fspa_seeds
from labelless.networks.export import export_onnx, exportable
from labelless.networks.fewshot import FewShotSegmentor, SegmentorFeatures, build_fewshot_segmentor
from labelless.networks.fsms import EMPTY_LOGIT, FSMSNet
from labelless.networks.prototypes import SCALE, ALPHead
from labelless.networks.psmnet import PSMNetHead

VOLUME = ["ssl_alpnet_fewshot_segmentation", "dspnet_fewshot_segmentation", "psmnet_fewshot_segmentation"]
FSMS = "fsms_fewshot_skin_segmentation"
CLTNET = "cltnet_weakly_supervised_segmentation"
SABRNET = "sabrnet_semisupervised_ultrasound_segmentation"
ALL = [*VOLUME, FSMS, CLTNET, SABRNET]
TS_TOL, ONNX_TOL = 1e-4, 1e-3


def _rect_mask(shape: tuple[int, ...], rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(shape)
    m[..., rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return m


def _volume_inputs(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One 128 px support shot whose mask is large enough for DSPNet's clustering (2 seeds) and two 64 px queries."""
    support = torch.randn(1, 3, 128, 128, generator=g)
    mask = _rect_mask((1, 1, 128, 128), (8, 120), (6, 112))
    return support, mask, torch.randn(2, 3, 64, 64, generator=g)


def _fsms_inputs(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    support = torch.rand(1, 2, 3, 32, 32, generator=g)
    mask = _rect_mask((1, 2, 1, 32, 32), (4, 24), (8, 28))
    return support, mask, torch.rand(1, 3, 32, 32, generator=g)


#: bundle -> (example inputs in the export module's argument order, their ONNX names)
EXAMPLES: dict[str, tuple[Callable[[torch.Generator], tuple[torch.Tensor, ...]], list[str]]] = {
    **{b: (_volume_inputs, ["support_image", "support_mask", "image"]) for b in VOLUME},
    FSMS: (_fsms_inputs, ["support_images", "support_masks", "image"]),
    CLTNET: (lambda g: (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1,), ["image"]),
    SABRNET: (lambda g: (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1,), ["image"]),
}


def _files(bundle: str) -> dict[str, str]:
    root = BUNDLES / bundle
    return {
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.json"),
        "bundle_root": str(root),
    }


def _network(bundle: str) -> torch.nn.Module:
    """``network_def`` of inference.json with the shipped weights loaded strictly, in evaluation mode."""
    files = _files(bundle)
    parser = ConfigParser()
    parser.read_config(files["config_file"])
    parser.read_meta(files["meta_file"])
    parser["bundle_root"] = files["bundle_root"]
    net = parser.get_parsed_content("network_def")
    state = torch.load(BUNDLES / bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # strict: the shipped weights load unchanged
    return net.eval()


def _prediction(out: object) -> torch.Tensor:
    """The segmentation output of an eager network: the tensor, CLTNet's ``mask`` or SABR-Net's ``seg``."""
    for name in ("mask", "seg"):
        if hasattr(out, name):
            return getattr(out, name)
    assert isinstance(out, torch.Tensor)
    return out


def _onnx_session(path: Path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional test dependency (requirements-dev)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(autouse=True)
def _quiet_monai():
    """MONAI's bundle scripts log their arguments at INFO and warn about config evaluation."""
    logging.disable(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("bundle", ALL)
def test_network_def_exports_and_matches_eager(bundle: str, tmp_path: Path):
    """verify_net_in_out passes with the metadata; ckpt_export's TorchScript and the ONNX file give the eager output."""
    files = _files(bundle)
    verify_net_in_out(net_id="network_def", **files)

    ts_file = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_file), ckpt_file=str(BUNDLES / bundle / "models" / "model.pt"),
                **files)  # fmt: skip
    scripted = torch.jit.load(str(ts_file), map_location="cpu")

    net = _network(bundle)
    make_inputs, names = EXAMPLES[bundle]
    inputs = make_inputs(torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = _prediction(net(*inputs))
        ts_diff = float((scripted(*inputs) - eager).abs().max())
    if bundle == "dspnet_fewshot_segmentation":
        assert any(net.head.last_info["fspa_clusters"]), "the example support must exercise FSPA's clustering"
    if bundle == "psmnet_fewshot_segmentation":
        assert max(net.head.last_info["n_fg_psm"]) > 1, "the example support must exercise the PSM splitting"
    print(f"{bundle}: TorchScript max abs diff {ts_diff:.2e}")
    assert ts_diff < TS_TOL

    pytest.importorskip("onnx", reason="onnx is an optional test dependency (requirements-dev)")
    onnx_file = export_onnx(net, inputs, tmp_path / "model.onnx", names)
    session = _onnx_session(onnx_file)
    out = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
    onnx_diff = float((torch.from_numpy(out) - eager).abs().max())
    print(f"{bundle}: ONNX (onnxruntime) max abs diff {onnx_diff:.2e}")
    assert onnx_diff < ONNX_TOL
    if bundle in VOLUME:  # the graph has no data-dependent shapes: another support mask, the same graph
        support, _, query = inputs
        other = _rect_mask((1, 1, 128, 128), (30, 90), (20, 100))
        with torch.no_grad():
            eager = net(support, other, query)
        out = session.run(None, {"support_image": support.numpy(), "support_mask": other.numpy(),
                                 "image": query.numpy()})[0]  # fmt: skip
        assert float((torch.from_numpy(out) - eager).abs().max()) < ONNX_TOL


@pytest.mark.parametrize("bundle", VOLUME)
def test_export_def_loads_the_shipped_weights(bundle: str):
    """export_def (the encoder's features) carries the head's parameters too: the checkpoint loads strictly."""
    files = _files(bundle)
    parser = ConfigParser()
    parser.read_config(files["config_file"])
    parser["bundle_root"] = files["bundle_root"]
    features = parser.get_parsed_content("export_def")
    assert isinstance(features, SegmentorFeatures)
    features.load_state_dict(torch.load(BUNDLES / bundle / "models" / "model.pt", weights_only=True))


def _script_roundtrip(module: torch.nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def test_fewshot_single_input_uses_the_stored_support():
    torch.manual_seed(0)
    net = build_fewshot_segmentor("tiny").eval()
    support, mask, query = _volume_inputs(torch.Generator().manual_seed(1))
    with torch.no_grad():
        empty = net(query)  # no support: every pixel background
        assert empty.shape == (2, 2, 64, 64)
        assert torch.equal(empty[:, 0], torch.full_like(empty[:, 0], SCALE))
        assert torch.equal(empty[:, 1], torch.full_like(empty[:, 1], -SCALE))
        three = net(support, mask, query)
        net.set_support(support, mask)
        assert net.has_support and torch.equal(net(query), three)
        assert set(net.state_dict()) == set(build_fewshot_segmentor("tiny").state_dict())  # buffers not persistent
        scripted = _script_roundtrip(net)  # the stored support travels with the TorchScript file
        assert float((scripted(query) - three).abs().max()) < TS_TOL
        net.clear_support()
        assert torch.equal(net(query), empty)
    with pytest.raises(ValueError, match="empty support mask"):
        net.set_support(support, torch.zeros_like(mask))


def test_fsms_single_input_uses_the_stored_support():
    torch.manual_seed(0)
    net = FSMSNet(width=4, feature_channels=8).eval()
    support, mask, query = _fsms_inputs(torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(query), torch.full((1, 1, 32, 32), EMPTY_LOGIT))
        three = net(support, mask, query)
        net.set_support(support[0], mask[0])
        assert float((net(query) - three).abs().max()) < 1e-5
        scripted = _script_roundtrip(net)
        assert float((scripted(query) - three).abs().max()) < TS_TOL
        assert float((scripted(support, mask, query) - three).abs().max()) < TS_TOL


def _heads_agree(eager: torch.nn.Module, fs: torch.Tensor, mask: torch.Tensor, fq: torch.Tensor) -> None:
    with torch.no_grad():
        ref = eager(fs, mask, fq, window=2)
        out = eager.export_head(2)(fs, mask, fq)
    assert float((ref - out).abs().max()) < 1e-4, eager.last_info


def test_fixed_size_heads_give_the_eager_logits():
    """The export heads on the paths the shipped examples may not reach: BG fallback, FG global mode, every switch."""
    g = torch.Generator().manual_seed(0)
    fs, fq = torch.randn(2, 16, 16, 16, generator=g), torch.randn(3, 16, 12, 12, generator=g)
    full = 1.0 - _rect_mask((2, 1, 128, 128), (0, 6), (0, 6))  # no BG window: the global BG prototype
    small = _rect_mask((2, 1, 128, 128), (40, 60), (50, 66))  # FG global mode
    big = _rect_mask((2, 1, 128, 128), (4, 124), (2, 110))  # FSPA clusters (5 seeds)
    alp = ALPHead()
    for mask in (full, small, big):
        _heads_agree(alp, fs, mask, fq)
    assert alp.bg_fallback_count == 1 and alp.fg_global_count == 1
    for switches in ((True, True, True), (True, False, True), (True, True, False), (False, True, True)):
        head = DSPNetHead(16, *switches, bcma_alpha=0.3, bcma_alpha_bg=0.2)
        for mask in (full, small, big):
            _heads_agree(head, fs, mask, fq)
    for use_psm, with_local, use_mcam in ((True, True, True), (True, False, False), (False, True, True)):
        head = PSMNetHead(16, psm_with_local=with_local, use_psm=use_psm, use_mcam=use_mcam)
        for p in head.parameters():  # MCAM's output convolution starts at zero: make it count
            torch.nn.init.normal_(p, std=0.05, generator=g)
        for mask in (full, small, big):
            _heads_agree(head, fs, mask, fq)


def test_fixed_fspa_seeds_are_fspa_seeds():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        grid = torch.zeros(20, 24)
        for _ in range(1 + trial % 3):
            r, c, h, w = (
                torch.randint(0, 16, (2,), generator=g).tolist() + torch.randint(2, 14, (2,), generator=g).tolist()
            )
            grid[r : r + h, c : c + w] = 1.0
        if trial % 4 == 0:
            grid[5:7, 5:9] = 0.0  # a hole: zeros inside the bounding box
        ref = fspa_seeds(grid, region_area=30.0, max_clusters=5)
        picks, n = fixed_fspa_seeds(grid, 30.0, 5)
        got = picks[: int(n)]
        assert torch.equal(torch.stack([got // 24, got % 24], dim=1), ref), trial


def test_exportable_is_the_export_module():
    net = build_fewshot_segmentor("tiny")
    assert isinstance(net, FewShotSegmentor) and type(exportable(net)).__name__ == "FewShotExport"
    plain = torch.nn.Conv2d(1, 1, 1)
    assert exportable(plain) is plain
