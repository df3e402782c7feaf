# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""One CHAOS fold evaluation of the shipped SSL-ALPNet model: wall time against the time spent in its encoder, and
support encodings against the distinct supports.

Runs the bundle's ``evaluate.json`` (protocol mode, fold ``--fold``, the shipped ``models/model.pt``) in this process
on ``--dataset_dir`` (default ``../shared/data/chaos_t2spir``) and prints, in one run:

- the fold evaluation's wall time (after the imports) and the time spent inside the encoder's ``forward``
  (support and query slices): the ratio wall / encoder-only (target ≤ 1.25: everything else — reading, resampling,
  prototypes, metrics, reports — costs at most a quarter of the encoder);
- how many times a support was encoded (``FewShotSegmentor.support_encodings``) against the number of distinct
  supports (target: equal; each scan of the fold cycles through the chunks of the same supports);
- the import time of the package and MONAI before the run (``python -X importtime`` gives the details);
- the per-slice ratio of batched inference (support encoded once) against the reference's slice loop (support
  re-encoded for every slice), with the same model on a 32-slice 256² volume
  (:func:`bench_fewshot_inference.time_inference`).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_fold_eval.py [--dataset_dir ../shared/data/chaos_t2spir] [--fold 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()

import torch  # noqa: E402
from monai.bundle import ConfigWorkflow  # noqa: E402

from labelless.networks.fewshot import FewShotSegmentor  # noqa: E402

T_IMPORTS = time.perf_counter() - T_START

__all__ = ["main"]


class _EncoderTimer:
    """Forward pre/post hooks on the encoder that add up the wall time of its calls (the state dict is unchanged)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.seconds, self.images, self._t0 = 0.0, 0, 0.0
        encoder.register_forward_pre_hook(self._pre)
        encoder.register_forward_hook(self._post)

    def _pre(self, module: torch.nn.Module, inputs: tuple) -> None:
        self._t0 = time.perf_counter()
        self.images += int(inputs[0].shape[0])

    def _post(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.seconds += time.perf_counter() - self._t0


def main(argv: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", default=str(root.parent / "shared" / "data" / "chaos_t2spir"))
    parser.add_argument("--bundle", default="ssl_alpnet_fewshot_segmentation")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = root / "bundles" / args.bundle
    with tempfile.TemporaryDirectory() as tmp:
        wf = ConfigWorkflow(
            config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")],
            meta_file=str(bundle / "configs" / "metadata.json"),
            workflow_type="train",
            bundle_root=str(bundle),
            dataset_dir=args.dataset_dir,
            derived_dir=str(Path(tmp) / "derived"),
            output_dir=str(Path(tmp) / "eval"),
            eval_ckpt_path=str(bundle / "models" / "model.pt"),
            folds=[args.fold],
            modes=["protocol"],
            n_overlays=0,
        )
        wf.initialize()
        runner = wf.parser.get_parsed_content("validate#evaluator")
        model: FewShotSegmentor = runner.network
        timed = _EncoderTimer(model.encoder)
        seen: set = set()
        cached = model._cached_encoding

        def counting(images: torch.Tensor, masks: torch.Tensor):  # records every distinct support passed
            seen.add(model._fingerprint(images, masks))
            return cached(images, masks)

        model._cached_encoding = counting
        t0 = time.perf_counter()
        summary = runner.run()
        wall = time.perf_counter() - t0
    distinct = len(seen)
    print(f"imports (torch, MONAI, labelless): {T_IMPORTS:.2f} s")
    ratio = wall / max(timed.seconds, 1e-9)
    print(f"fold {args.fold} evaluation: wall {wall:.2f} s, encoder {timed.seconds:.2f} s ({timed.images} images): "
          f"ratio wall / encoder-only = {ratio:.2f} (target <= 1.25)")  # fmt: skip
    print(f"support encodings: {model.support_encodings}, distinct supports: {distinct} (target: equal)")
    print(f"mean Dice {summary.get('mean_dice')}")
    # the same model on one 32-slice 256² "volume": batched (support encoded once) vs the reference's slice loop
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_fewshot_inference import time_inference

    t = time_inference(model, 256, 32, 8, torch.device("cpu"), repeats=2)
    print(f"per-slice inference, 32 slices: batched {t['batched_s']:.2f} s, protocol path {t['protocol_s']:.2f} s, "
          f"slice loop {t['slice_by_slice_s']:.2f} s: ratio {t['ratio']:.3f} (protocol {t['protocol_ratio']:.3f}); "
          f"max |difference| {t['max_abs_diff']:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
