# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Feature encoders of the few-shot methods (fewshot_protocol.md §8.1).

``DilatedResNet`` is the ResNet body of torchvision's DeepLabV3 (output stride 8: layer3 and layer4 use dilation
instead of stride) followed by a 1×1 reduction convolution without bias. Its parameter names equal torchvision's
ResNet keys (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...), so a locally provided torchvision
ResNet or DeepLabV3 checkpoint loads with :meth:`DilatedResNet.load_pretrained`. Nothing is downloaded.

``TinyEncoder`` has the same interface (``out_channels`` features at stride 8) and is meant for CPU tests.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from labelless.errors import ConfigError, DataError
from labelless.io.checkpoint import read_state_dict

__all__ = ["DilatedResNet", "TinyEncoder", "PretrainedReport", "build_encoder", "ENCODER_NAMES"]

_RESNET_LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
# replace_stride_with_dilation of torchvision for layer2, layer3, layer4
_DILATE: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),
    16: (False, False, True),
    32: (False, False, False),
}
_RANDOM_INIT_WARNING = (
    "{name}: no pretrained_path given, the encoder is randomly initialised; segmentation results will be far below "
    "the published figures (which start from COCO-trained DeepLabV3-ResNet101 weights)."
)
# keys of a checkpoint that are never part of the encoder body (ImageNet classifier of a plain ResNet)
_IGNORED_BODY_PREFIXES = ("fc.",)

ENCODER_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "tiny")


def _conv(spatial_dims: int, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Module:
    padding = dilation * (kernel - 1) // 2
    conv_type = Conv[Conv.CONV, spatial_dims]
    return conv_type(cin, cout, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, bias=False)


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock, extended to dilation > 1 (both 3×3 convolutions are dilated)."""

    expansion = 1

    def __init__(
        self,
        spatial_dims: int,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        dilation: int,
        norm: str | tuple,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(spatial_dims, inplanes, planes, 3, stride, dilation)
        self.bn1 = get_norm_layer(norm, spatial_dims, planes)
        self.relu = get_act_layer(act)
        self.conv2 = _conv(spatial_dims, planes, planes, 3, 1, dilation)
        self.bn2 = get_norm_layer(norm, spatial_dims, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    """torchvision's Bottleneck ("v1.5": the stride is on the 3×3 convolution)."""

    expansion = 4

    def __init__(
        self,
        spatial_dims: int,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        dilation: int,
        norm: str | tuple,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(spatial_dims, inplanes, planes, 1)
        self.bn1 = get_norm_layer(norm, spatial_dims, planes)
        self.conv2 = _conv(spatial_dims, planes, planes, 3, stride, dilation)
        self.bn2 = get_norm_layer(norm, spatial_dims, planes)
        self.conv3 = _conv(spatial_dims, planes, planes * self.expansion, 1)
        self.bn3 = get_norm_layer(norm, spatial_dims, planes * self.expansion)
        self.relu = get_act_layer(act)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


@dataclass
class PretrainedReport:
    """What :meth:`DilatedResNet.load_pretrained` did.

    Attributes:
        path: the checkpoint file.
        prefix: the key prefix of the ResNet body found in the file (``""``, ``"backbone."``, ...).
        loaded: encoder keys loaded from the file.
        missing: encoder body keys absent from the file (only ``num_batches_tracked`` buffers are tolerated in strict
            mode).
        unexpected: keys under the body prefix that the encoder does not have (fatal in strict mode).
        ignored: keys outside the body (classifier, aux_classifier, fc, ...), skipped on purpose.
        reduction_loaded: whether the 1×1 reduction convolution was found in the file too (otherwise it stays random).
    """

    path: str
    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    reduction_loaded: bool = False

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{self.path}: loaded {len(self.loaded)} tensors (body prefix {self.prefix!r}, reduction conv "
            f"{'loaded' if self.reduction_loaded else 'random'}), missing {len(self.missing)}"
            f"{' ' + str(self.missing[:5]) if self.missing else ''}, unexpected {len(self.unexpected)}"
            f"{' ' + str(self.unexpected[:5]) if self.unexpected else ''}, ignored {len(self.ignored)}"
        )


def _check_input(x: torch.Tensor, spatial_dims: int, in_channels: int, stride: int) -> None:
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            "encoder input must have "
            + str(spatial_dims + 2)
            + " dimensions (batch, channel, spatial), got "
            + str(x.dim())
        )
    if x.shape[1] != in_channels:
        raise ValueError("encoder expects " + str(in_channels) + " input channels, got " + str(x.shape[1]))
    for s in x.shape[2:]:
        if s % stride != 0 or s == 0:
            raise ValueError(
                "encoder input spatial size "
                + str(list(x.shape[2:]))
                + " must be a positive multiple of "
                + str(stride)
            )


class DilatedResNet(nn.Module):
    """ResNet body with output stride 8 (dilated layer3/layer4) and a 1×1 reduction convolution (no bias).

    Layer names follow torchvision's ``ResNet`` (``conv1``, ``bn1``, ``layer1`` ... ``layer4``); the reduction conv is
    ``reduction``. There is no ``fc`` layer. With ``output_stride=8`` layer2 has stride 2 and layer3/layer4 replace
    their stride by dilation (layer3: first block dilation 1, others 2; layer4: first block 2, others 4), like
    torchvision's ``replace_stride_with_dilation=[False, True, True]``. For depth 18/34 (basic blocks, which
    torchvision does not dilate) both 3×3 convolutions of a block use the block's dilation.

    Args:
        spatial_dims: number of spatial dimensions (2; 3 works but no pretrained weights exist for it).
        depth: 18, 34 (basic blocks), 50 or 101 (bottleneck blocks, stride on the 3×3 conv).
        in_channels: input channels (3 for the protocol's repeated slice; pretrained weights need 3).
        out_channels: channels after the reduction convolution.
        output_stride: 8 (default), 16 or 32.
        norm: normalisation, a MONAI name or ``(name, kwargs)``; pretrained torchvision weights need ``"batch"``.
        act: activation, a MONAI name or ``(name, kwargs)``.
        pretrained_path: optional local torchvision ResNet / DeepLabV3 checkpoint loaded at construction; ``None``
            initialises randomly (torchvision's scheme) and warns that results will be far below published figures.
        strict: passed to :meth:`load_pretrained`.
        base_width: width of the first stage (64 in torchvision; 32 gives a ResNet about 4× smaller for CPU
            training). Pretrained weights need 64.

    Raises:
        ConfigError: unsupported depth or output stride.
        DataError: ``pretrained_path`` is missing, unreadable or does not fit (see :meth:`load_pretrained`).

    Examples::

        enc = DilatedResNet(spatial_dims=2, depth=101, pretrained_path="deeplabv3_resnet101_coco.pth")
        feats = enc(torch.randn(2, 3, 256, 256))  # [2, 256, 32, 32]
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        depth: int = 101,
        in_channels: int = 3,
        out_channels: int = 256,
        output_stride: int = 8,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        pretrained_path: str | os.PathLike | None = None,
        strict: bool = True,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if int(base_width) < 1:
            raise ConfigError(f"DilatedResNet base_width must be a positive integer, got {base_width}")
        if pretrained_path is not None and int(base_width) != 64:
            raise ConfigError("pretrained torchvision/DeepLabV3 weights need base_width=64")
        if depth not in _RESNET_LAYERS:
            raise ConfigError(f"DilatedResNet depth must be one of {sorted(_RESNET_LAYERS)}, got {depth}")
        if output_stride not in _DILATE:
            raise ConfigError(f"DilatedResNet output_stride must be one of {sorted(_DILATE)}, got {output_stride}")
        kind, layers = _RESNET_LAYERS[depth]
        block = _BasicBlock if kind == "basic" else _Bottleneck
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_stride = output_stride
        bw = int(base_width)
        self.base_width = bw
        self.body_channels = 8 * bw * block.expansion

        self._norm = norm
        self._act = act
        self._inplanes = bw
        self._dilation = 1
        self.conv1 = Conv[Conv.CONV, spatial_dims](in_channels, bw, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm_layer(norm, spatial_dims, bw)
        self.relu = get_act_layer(act)
        self.maxpool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        dilate = _DILATE[output_stride]
        self.layer1 = self._make_layer(block, bw, layers[0])
        self.layer2 = self._make_layer(block, 2 * bw, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 4 * bw, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 8 * bw, layers[3], stride=2, dilate=dilate[2])
        for m in self.modules():  # torchvision's initialisation of the body
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.modules.instancenorm._InstanceNorm):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        # the reference adds the reduction conv with PyTorch's default initialisation
        self.reduction = _conv(spatial_dims, self.body_channels, out_channels, 1)

        self.pretrained_report: PretrainedReport | None = None
        if pretrained_path is None:
            warnings.warn(_RANDOM_INIT_WARNING.format(name=f"DilatedResNet-{depth}"), stacklevel=2)
        else:
            self.load_pretrained(pretrained_path, strict=strict)

    def _make_layer(
        self, block: type, planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        sd, norm, act = self.spatial_dims, self._norm, self._act
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv(sd, self._inplanes, planes * block.expansion, 1, stride),
                get_norm_layer(norm, sd, planes * block.expansion),
            )
        layers = [block(sd, self._inplanes, planes, stride, downsample, previous_dilation, norm, act)]
        self._inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(sd, self._inplanes, planes, 1, None, self._dilation, norm, act))
        return nn.Sequential(*layers)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        """ResNet body only: ``[B, in_channels, *S]`` -> ``[B, body_channels, *S/output_stride]``."""
        _check_input(x, self.spatial_dims, self.in_channels, self.output_stride)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, *S]`` (each size a multiple of ``output_stride``) -> ``[B, out_channels, *S/stride]``."""
        return self.reduction(self.forward_body(x))

    def body_parameter_count(self) -> int:
        """Number of parameters of the ResNet body (without the reduction conv)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("reduction."))

    @torch.jit.unused
    def load_pretrained(self, path: str | os.PathLike, strict: bool = True) -> PretrainedReport:
        """Load a local torchvision ResNet or DeepLabV3 checkpoint (state dict) into the body.

        Accepted layouts: plain ResNet keys (``conv1.weight``; ``fc.*`` ignored), DeepLabV3 keys
        (``backbone.conv1.weight``; ``classifier.*``/``aux_classifier.*`` ignored), any other prefix ending in the
        body (e.g. ``module.``, ``encoder.backbone.`` of the SSL-ALPNet reference, whose ``encoder.localconv.weight``
        then fills the reduction conv), a state dict of this class (``reduction.weight`` included), and dicts wrapping
        the state dict under ``"state_dict"`` or ``"model"``. Loaded with ``weights_only=True`` on the CPU.

        Args:
            path: the checkpoint file.
            strict: raise when body keys are missing (other than ``num_batches_tracked``) or unexpected; with
                ``False`` these are only warned about.

        Returns:
            a :class:`PretrainedReport` (also stored in ``self.pretrained_report``).

        Raises:
            DataError: the file is missing or unreadable, holds no ResNet body, a tensor shape does not match, or
                (strict) keys are missing / unexpected. The message names the file.
        """
        path = os.fspath(path)
        state = read_state_dict(path, "pretrained checkpoint")
        own = self.state_dict()
        body_keys = [k for k in own if not k.startswith("reduction.")]
        prefix = _find_body_prefix(state, path)
        report = PretrainedReport(path=path, prefix=prefix)
        new_state: dict[str, torch.Tensor] = {}
        red_key = _find_reduction_key(state, prefix)
        for key, value in state.items():
            if key == red_key:
                continue
            if not key.startswith(prefix):
                report.ignored.append(key)
                continue
            name = key[len(prefix) :]
            if name.startswith(_IGNORED_BODY_PREFIXES):
                report.ignored.append(key)
            elif name in own and not name.startswith("reduction."):
                new_state[name] = value
            else:
                report.unexpected.append(key)
        if red_key is not None:
            new_state["reduction.weight"] = state[red_key]
            report.reduction_loaded = True
        report.missing = [k for k in body_keys if k not in new_state]
        for name, value in new_state.items():
            if not isinstance(value, torch.Tensor):
                raise DataError(path, f"entry {prefix + name!r} is not a tensor ({type(value).__name__})")
            if tuple(value.shape) != tuple(own[name].shape):
                raise DataError(
                    path,
                    f"shape mismatch for {name!r}: checkpoint {tuple(value.shape)} vs encoder {tuple(own[name].shape)}"
                    f" (is it a ResNet-{self.depth} with in_channels={self.in_channels}, spatial_dims="
                    f"{self.spatial_dims}?)",
                )
        fatal_missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
        if fatal_missing or report.unexpected:
            msg = (
                f"checkpoint does not match DilatedResNet-{self.depth}: {len(fatal_missing)} missing body keys "
                f"{fatal_missing[:8]}{' ...' if len(fatal_missing) > 8 else ''}, {len(report.unexpected)} unexpected "
                f"keys {report.unexpected[:8]}{' ...' if len(report.unexpected) > 8 else ''}"
            )
            if strict:
                raise DataError(path, msg)
            warnings.warn(f"{path}: {msg}", stacklevel=2)
        self.load_state_dict(new_state, strict=False)
        report.loaded = sorted(new_state)
        self.pretrained_report = report
        return report


def _find_body_prefix(state: Mapping[str, object], path: str) -> str:
    candidates = sorted(
        (k[: -len("conv1.weight")] for k in state if k.endswith("conv1.weight")),
        key=len,
    )
    for prefix in candidates:
        if prefix.endswith("downsample.") or ".layer" in f".{prefix}":
            continue
        if f"{prefix}layer1.0.conv1.weight" in state:
            return prefix
    raise DataError(
        path,
        "no ResNet body found: expected keys like 'conv1.weight' + 'layer1.0.conv1.weight' (torchvision ResNet) or "
        f"'backbone.conv1.weight' (DeepLabV3); first keys are {list(state)[:5]}",
    )


def _find_reduction_key(state: Mapping[str, object], prefix: str) -> str | None:
    if f"{prefix}reduction.weight" in state:
        return f"{prefix}reduction.weight"
    if prefix.endswith("backbone."):
        parent = prefix[: -len("backbone.")]
        for name in ("reduction.weight", "localconv.weight"):
            if f"{parent}{name}" in state:
                return f"{parent}{name}"
    return None


class TinyEncoder(nn.Module):
    """Small convolutional encoder with the interface of :class:`DilatedResNet` (stride 8), for CPU tests.

    Each stage is ``conv3×3 (stride 2) - norm - act - conv3×3 - norm - act``; the first three stages halve the size,
    further stages keep it. A 1×1 convolution without bias maps to ``out_channels``.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output feature channels.
        channels: channels of the stages (at least 3).
        norm: normalisation, a MONAI name or ``(name, kwargs)``.
        act: activation, a MONAI name or ``(name, kwargs)``.

    Raises:
        ConfigError: fewer than 3 stages.

    Examples::

        enc = TinyEncoder(spatial_dims=2, in_channels=3, out_channels=256)
        feats = enc(torch.randn(2, 3, 64, 64))  # [2, 256, 8, 8]
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 256,
        channels: Sequence[int] = (16, 32, 64),
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 3:
            raise ConfigError(f"TinyEncoder needs at least 3 stages to reach stride 8, got channels={channels}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_stride = 8
        stages = []
        cin = in_channels
        for i, c in enumerate(channels):
            stages.append(
                nn.Sequential(
                    _conv(spatial_dims, cin, c, 3, stride=2 if i < 3 else 1),
                    get_norm_layer(norm, spatial_dims, c),
                    get_act_layer(act),
                    _conv(spatial_dims, c, c, 3),
                    get_norm_layer(norm, spatial_dims, c),
                    get_act_layer(act),
                )
            )
            cin = c
        self.stages = nn.Sequential(*stages)
        self.reduction = _conv(spatial_dims, cin, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, *S]`` (each size a multiple of 8) -> ``[B, out_channels, *S/8]``."""
        _check_input(x, self.spatial_dims, self.in_channels, self.output_stride)
        return self.reduction(self.stages(x))


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Encoder by name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or ``"tiny"``.

    Args:
        name: encoder name (case-insensitive).
        kwargs: passed to :class:`DilatedResNet` (``depth`` comes from the name) or :class:`TinyEncoder`.

    Returns:
        the encoder module.

    Raises:
        ConfigError: unknown name, or ``depth`` given in ``kwargs`` disagreeing with the name.
    """
    key = str(name).strip().lower()
    if key == "tiny":
        return TinyEncoder(**kwargs)
    if key.startswith("resnet") and key[len("resnet") :].isdigit() and int(key[len("resnet") :]) in _RESNET_LAYERS:
        depth = int(key[len("resnet") :])
        given = kwargs.pop("depth", depth)
        if int(given) != depth:
            raise ConfigError(f"encoder {name!r} conflicts with depth={given} given separately")
        return DilatedResNet(depth=depth, **kwargs)
    raise ConfigError(f"unknown encoder {name!r}; choose one of {list(ENCODER_NAMES)}")
