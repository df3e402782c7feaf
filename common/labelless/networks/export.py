# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Export of the bundle networks: TorchScript (MONAI's ``ckpt_export``) and ONNX.

Every bundle's ``network_def`` has an ``export_module()``: the single network an integrator needs, TorchScript-
compatible and traceable to ONNX without data-dependent shapes:

- few-shot segmentors (SSL-ALPNet, DSPNet, PSMNet): :class:`~labelless.networks.fewshot.FewShotExport`, the encoder
  with the fixed-size twin of the prototype head; ``forward(image)`` (stored support) or
  ``forward(support_images, support_masks, query_images)``;
- FSMS: :class:`~labelless.networks.fsms.FSMSExport`, the segmentation branch, same call forms;
- CLTNet: :class:`~labelless.networks.cltnet.CLTMaskHead`, the A→B generator's mask head (image → M);
- SABR-Net: :class:`~labelless.networks.sabrnet.SABRSegmenter`, image → segmentation logits.

``torch.jit.script(network)`` scripts that module (``__prepare_scriptable__``), which is what
``python -m monai.bundle ckpt_export network_def ...`` does. :func:`export_onnx` writes it to ONNX with PyTorch's
TorchScript-based exporter (``dynamo=False``; the ``torch.export`` one needs ``onnxscript`` and fails on
``FewShotExport``'s optional inputs); the graph is traced at the example inputs' sizes (export again for others).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from labelless.errors import ConfigError

__all__ = ["ONNX_OPSET", "exportable", "export_onnx"]

#: ONNX opset of :func:`export_onnx` (Einsum, Round, ArgMax, Resize as used by the networks)
ONNX_OPSET = 17


def exportable(net: nn.Module) -> nn.Module:
    """The module that TorchScript and ONNX export of ``net``: ``net.export_module()`` when it has one, else ``net``.

    Args:
        net: a bundle network (``network_def``), possibly wrapped in ``DistributedDataParallel``.

    Returns:
        the export module, sharing ``net``'s layers and weights.
    """
    if isinstance(net, nn.parallel.DistributedDataParallel | nn.DataParallel):
        net = net.module
    make = getattr(net, "export_module", None)
    return make() if callable(make) else net


def export_onnx(
    net: nn.Module,
    inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    input_names: Sequence[str] | None = None,
    output_name: str = "pred",
    opset: int = ONNX_OPSET,
) -> Path:
    """Write :func:`exportable` of ``net`` to an ONNX file, traced at ``inputs`` (evaluation mode, no gradients).

    Args:
        net: the network (put in evaluation mode).
        inputs: example inputs in the export module's argument order, e.g. ``(image,)`` or
            ``(support_images, support_masks, query_images)`` for the few-shot networks.
        path: the ``.onnx`` file to write (its folder must exist).
        input_names: ONNX input names, one per input (default ``input_0``, ...).
        output_name: the ONNX output name.
        opset: ONNX opset version.

    Returns:
        the written path.

    Raises:
        ConfigError: the number of input names does not match the inputs.
    """
    names = [f"input_{i}" for i in range(len(inputs))] if input_names is None else [str(n) for n in input_names]
    if len(names) != len(inputs):
        raise ConfigError(f"export_onnx: {len(inputs)} inputs but {len(names)} input names ({names})")
    net.eval()
    module = exportable(net).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter is deprecated
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks recorded as constants
        torch.onnx.export(
            module, tuple(inputs), str(path), dynamo=False, input_names=names, output_names=[output_name],
            opset_version=int(opset),
        )  # fmt: skip
    return Path(path)
