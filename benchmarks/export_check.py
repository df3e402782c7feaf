# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Exported networks against the eager ones on the embedded default data, per bundle (figures for issue 15).

For each bundle: ``network_def`` of ``configs/inference.json`` with the shipped ``models/model.pt`` (strict), the
TorchScript file of MONAI's ``ckpt_export network_def`` and the ONNX file of
:func:`labelless.networks.export.export_onnx` (run with onnxruntime when installed), on inputs built the way the
bundle's inference prepares them from its embedded default data:

- SSL-ALPNet, DSPNet, PSMNet: the abdominal MR phantoms (``labelless.data.phantoms``), volume z-scores, 256 px;
  support: phantom 1's middle liver slice and its liver mask; queries: the 4 middle liver slices of phantom 2 (the
  phantom liver covers about 125 cells of the 32×32 feature grid, below the 150 that give DSPNet's FSPA two clusters:
  its single-prototype fallback runs here; ``tests/test_export.py`` covers the clustering);
- FSMS: skin phantoms (``make_skin_phantom``) at 112 px: a 1-shot support (seed 0) and 2 queries (seeds 1, 2);
- CLTNet: 2 synthetic lesion images (``make_weak_image``) at 128 px in [−1, 1];
- SABR-Net: 2 synthetic head ultrasound images (``make_ultrasound_phantom``) at 128 px in [−1, 1].

Prints one line per bundle: the largest absolute difference of the TorchScript and ONNX outputs from the eager output
and the fraction of pixels whose predicted label differs (argmax, or sigmoid/probability > 0.5). Nothing is written
outside a temporary folder; ``--json`` writes the figures (atomically).

Usage::

    python benchmarks/export_check.py [--bundles ssl_alpnet_fewshot_segmentation ...] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from labelless.networks.export import export_onnx
from labelless.utils import write_json_atomic

__all__ = ["main", "bundle_inputs"]

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
VOLUME = ("ssl_alpnet_fewshot_segmentation", "dspnet_fewshot_segmentation", "psmnet_fewshot_segmentation")
ALL = (*VOLUME, "fsms_fewshot_skin_segmentation", "cltnet_weakly_supervised_segmentation",
       "sabrnet_semisupervised_ultrasound_segmentation")  # fmt: skip


def _volume_inputs() -> tuple[list[torch.Tensor], list[str]]:
    from labelless.data.phantoms import default_dataset_dir
    from labelless.io.readers import read_volume
    from labelless.transforms.intensity import slices_to_tensor_input, zscore

    data = default_dataset_dir("abdomen")

    def liver(pid: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        image = read_volume(data / f"image_{pid}.nii.gz", ndim=None)
        label = read_volume(data / f"label_{pid}.nii.gz", is_label=True, ndim=None)
        mask = np.isclose(label.array.astype(np.float64), 1.0)
        zs = [int(z) for z in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]]
        return zscore(image.array, source=image.path), mask, zs

    s_img, s_mask, s_zs = liver(1)
    q_img, _, q_zs = liver(2)
    z = s_zs[len(s_zs) // 2]
    mid = len(q_zs) // 2
    qz = q_zs[max(0, mid - 2) : mid + 2]
    support = torch.from_numpy(slices_to_tensor_input(s_img[z]))
    mask = torch.from_numpy(s_mask[z].astype(np.float32))[None, None]
    query = torch.from_numpy(slices_to_tensor_input(q_img[qz]))
    return [support, mask, query], ["support_image", "support_mask", "image"]


def _fsms_inputs(size: int = 112) -> tuple[list[torch.Tensor], list[str]]:
    from labelless.fewshot.image.synthetic import make_skin_phantom

    def rgb(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = make_skin_phantom(seed, size=size)
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return img, torch.from_numpy((mask > 127).astype(np.float32))[None]

    s_img, s_mask = rgb(0)
    queries = torch.stack([rgb(seed)[0] for seed in (1, 2)])
    t = queries.shape[0]
    support = s_img[None, None].expand(t, 1, *s_img.shape).contiguous()
    masks = s_mask[None, None].expand(t, 1, *s_mask.shape).contiguous()
    return [support, masks, queries], ["support_images", "support_masks", "image"]


def _cltnet_inputs(size: int = 128) -> tuple[list[torch.Tensor], list[str]]:
    from labelless.transforms.translation import TranslationInput
    from labelless.weak.synthetic import make_weak_image

    rng = np.random.default_rng(0)
    to_input = TranslationInput(size)
    images = []
    for _ in range(2):
        image, _ = make_weak_image(rng, size=64, lesion=True)
        images.append(to_input(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0))
    return [torch.stack(images)], ["image"]


def _sabrnet_inputs(size: int = 128) -> tuple[list[torch.Tensor], list[str]]:
    from labelless.semisup.synthetic import make_ultrasound_phantom

    grey = [make_ultrasound_phantom(seed, "head", size)[0] for seed in (0, 1)]
    x = torch.from_numpy(np.stack(grey).astype(np.float32) / 127.5 - 1.0)
    return [x[:, None].expand(-1, 3, -1, -1).contiguous()], ["image"]


def bundle_inputs(bundle: str) -> tuple[list[torch.Tensor], list[str]]:
    """The embedded-default inputs of ``bundle`` in its export module's argument order, and their ONNX names."""
    if bundle in VOLUME:
        return _volume_inputs()
    return {
        "fsms_fewshot_skin_segmentation": _fsms_inputs,
        "cltnet_weakly_supervised_segmentation": _cltnet_inputs,
        "sabrnet_semisupervised_ultrasound_segmentation": _sabrnet_inputs,
    }[bundle]()


def _labels(pred: torch.Tensor, bundle: str) -> torch.Tensor:
    """Predicted labels: argmax of several channels; CLTNet's probability > 0.5; FSMS's logit > 0."""
    if pred.shape[1] > 1:
        return pred.argmax(1)
    return pred[:, 0] > (0.5 if bundle.startswith("cltnet") else 0.0)


def _check(bundle: str, tmp: Path) -> dict:
    from monai.bundle import ConfigParser, ckpt_export

    root = BUNDLES / bundle
    files = {"meta_file": str(root / "configs" / "metadata.json"),
             "config_file": str(root / "configs" / "inference.json"), "bundle_root": str(root)}  # fmt: skip
    parser = ConfigParser()
    parser.read_config(files["config_file"])
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    inputs, names = bundle_inputs(bundle)

    with torch.no_grad():
        t0 = time.perf_counter()
        out = net(*inputs)
        t_eager = time.perf_counter() - t0
    eager = next((getattr(out, n) for n in ("mask", "seg") if hasattr(out, n)), out)

    ts_file = tmp / f"{bundle}.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_file), ckpt_file=str(root / "models" / "model.pt"), **files)
    scripted = torch.jit.load(str(ts_file), map_location="cpu")
    with torch.no_grad():
        t0 = time.perf_counter()
        ts_out = scripted(*inputs)
        t_ts = time.perf_counter() - t0
    result = {
        "inputs": {n: list(t.shape) for n, t in zip(names, inputs, strict=True)},
        "torchscript_max_abs_diff": float((ts_out - eager).abs().max()),
        "torchscript_label_mismatch": float((_labels(ts_out, bundle) != _labels(eager, bundle)).float().mean()),
        "seconds": {"eager": round(t_eager, 3), "torchscript": round(t_ts, 3)},
    }
    try:
        import onnxruntime as ort
    except ImportError:
        result["onnx"] = "skipped: onnxruntime is not installed (pip install -r requirements-dev.txt)"
        return result
    onnx_file = export_onnx(net, inputs, tmp / f"{bundle}.onnx", names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    onnx_out = torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0])
    result["seconds"]["onnxruntime"] = round(time.perf_counter() - t0, 3)
    result["onnx_max_abs_diff"] = float((onnx_out - eager).abs().max())
    result["onnx_label_mismatch"] = float((_labels(onnx_out, bundle) != _labels(eager, bundle)).float().mean())
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="*", default=list(ALL), choices=list(ALL))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)  # MONAI's bundle scripts log every argument
    warnings.simplefilter("ignore")
    summary: dict = {"torch": torch.__version__, "bundles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in args.bundles:
            r = _check(bundle, Path(tmp))
            summary["bundles"][bundle] = r
            onnx = (f"ONNX {r['onnx_max_abs_diff']:.2e} (labels differ {r['onnx_label_mismatch']:.2%})"
                    if "onnx_max_abs_diff" in r else r["onnx"])  # fmt: skip
            ts = (
                f"TorchScript {r['torchscript_max_abs_diff']:.2e} (labels differ {r['torchscript_label_mismatch']:.2%})"
            )
            print(f"{bundle}: inputs {r['inputs']}; max abs diff: {ts}; {onnx}; {r['seconds']}", flush=True)
    if args.json:
        write_json_atomic(args.json, summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
