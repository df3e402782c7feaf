# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""FSMS network: truncated VGG16 encoder, 1-way K-shot segmentation branch and denoising surrogate head (fsms.md §2).

- :class:`VGGEncoder` (§2.1): VGG16 blocks 1–4 as coded in the reference (output stride 4, dilated ``conv3_3``, no
  pooling after blocks 3 and 4); ``blocks=5`` appends VGG16 block 5 with dilation 2 (paper-like variant). ``width``
  scales every channel count (64 = VGG16) so that tests can use tiny encoders.
- :func:`load_vgg16_weights`: a local torchvision-style VGG16 state dict (``features.<i>.weight/bias``) mapped onto
  the encoder by convolution order. Nothing is downloaded; there is no torchvision dependency.
- :func:`support_masks_to_grid` and :func:`masked_pool_k_shots` (§2.2): support masks on the feature grid and one
  foreground prototype over all shots.
- :class:`FSMSNet` (§2.2, §2.3): the segmentation branch (``forward``) and the surrogate denoising head (``denoise``)
  sharing the encoder, with :meth:`FSMSNet.segmentation_parameters` / :meth:`FSMSNet.surrogate_parameters` for the
  two optimisers of the alternating loop (§3.3).
- The surrogate-task noise helpers (§3.1) are in :mod:`labelless.transforms.noise`.

Shapes (2D): images float32 RGB in [0, 1], ``[.., 3, H, W]``; masks float32 {0, 1}, ``[.., 1, H, W]``; H and W
multiples of 4 (224 by default).

Single-input call and export: ``net(image)`` segments query images ``[B, 3, H, W]`` with the K-shot support stored
by :meth:`FSMSNet.set_support` (non-persistent buffers: checkpoints do not change); without one the result is the
documented empty one, the logit :data:`EMPTY_LOGIT` everywhere (no class to segment). :meth:`FSMSNet.export_module`
gives :class:`FSMSExport`, the segmentation branch with the same call forms, TorchScript-compatible and traceable to
ONNX; ``torch.jit.script(net)`` (MONAI's ``ckpt_export``) scripts it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

from labelless.errors import ConfigError, DataError
from labelless.io.checkpoint import read_state_dict
from labelless.utils import as_bool

__all__ = [
    "VGGEncoder",
    "load_vgg16_weights",
    "masked_pool_k_shots",
    "support_masks_to_grid",
    "binary_masks_on_grid",
    "FSMSNet",
    "FSMSExport",
    "EMPTY_LOGIT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OUTPUT_STRIDE",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDE = 4
#: the logit of every pixel without a support (sigmoid ≈ 2e-9: nothing is segmented)
EMPTY_LOGIT = -20.0
# Keras BatchNormalization defaults (momentum 0.99 of the running average ⇒ PyTorch momentum 0.01; epsilon 1e-3)
BN_MOMENTUM = 0.01
BN_EPS = 1e-3
# (number of convolutions, channel multiple of ``width``, dilation of each conv, max-pool after the block)
_VGG_BLOCKS: tuple[tuple[int, int, tuple[int, ...], bool], ...] = (
    (2, 1, (1, 1), True),
    (2, 2, (1, 1), True),
    (3, 4, (1, 1, 2), False),
    (3, 8, (1, 1, 1), False),
    (3, 8, (2, 2, 2), False),
)
_GREY_HINT = (
    "expected 3 channels (RGB); convert greyscale images with x.expand(..., 3, H, W) (or x.repeat) along the channel "
    "axis, as the FSMS readers do"
)


def _interp_mode(spatial_dims: int) -> str:
    return "bilinear" if spatial_dims == 2 else "trilinear"


def _check_spatial_dims(spatial_dims: int) -> int:
    if int(spatial_dims) not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def _glorot_(module: nn.Module) -> None:
    """Keras parity initialisation: Glorot-uniform convolution kernels, zero biases; BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv(spatial_dims: int, cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Module:
    """ "same"-padded convolution with bias (MONAI factory)."""
    padding = dilation * (kernel - 1) // 2
    return Conv[Conv.CONV, spatial_dims](cin, cout, kernel_size=kernel, padding=padding, dilation=dilation, bias=True)


def _conv_bn_relu(spatial_dims: int, cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        _conv(spatial_dims, cin, cout),
        Norm[Norm.BATCH, spatial_dims](cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


# ------------------------------------------------------------------------------------------------ §2.1 encoder
class VGGEncoder(nn.Module):
    """Truncated VGG16 of the FSMS reference (fsms.md §2.1), output stride 4.

    ::

        block1: 2 × (conv3×3 → w,  ReLU), maxpool 2
        block2: 2 × (conv3×3 → 2w, ReLU), maxpool 2
        block3: 2 × (conv3×3 → 4w, ReLU), conv3×3 → 4w dilation 2, ReLU      (no pool)
        block4: 3 × (conv3×3 → 8w, ReLU)                                     (no pool)
        block5: 3 × (conv3×3 → 8w, dilation 2, ReLU)    only with blocks=5   (no pool)

    All convolutions are "same"-padded with bias and Glorot-uniform initialised (Keras parity); ``w = width`` (64 is
    VGG16: 64/128/256/512 channels). Blocks are ``self.block1`` … ``self.block<blocks>``; :meth:`convs` lists the
    convolutions in order (the order :func:`load_vgg16_weights` maps torchvision's ``features.<i>`` onto).

    Args:
        spatial_dims: number of spatial dimensions (2; 3 builds the same layers in 3D, without pretrained weights).
        in_channels: input channels (3: RGB).
        blocks: 4 (reference code, default) or 5 (paper-like variant, block 5 dilated).
        width: channels of block 1; every channel count scales with it (64 = VGG16).

    Raises:
        ConfigError: ``blocks`` not 4 or 5, non-positive ``width`` or ``in_channels``, ``spatial_dims`` not 2 or 3.

    Examples::

        enc = VGGEncoder(spatial_dims=2, in_channels=3, blocks=4, width=64)
        enc(torch.rand(2, 3, 224, 224)).shape  # torch.Size([2, 512, 56, 56]); enc.out_channels == 512
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, blocks: int = 4, width: int = 64) -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        if int(blocks) not in (4, 5):
            raise ConfigError(f"VGGEncoder blocks must be 4 (reference) or 5 (paper-like variant), got {blocks!r}")
        if int(width) < 1 or int(in_channels) < 1:
            raise ConfigError(
                f"width and in_channels must be positive, got width={width!r}, in_channels={in_channels!r}"
            )
        self.in_channels = int(in_channels)
        self.blocks = int(blocks)
        self.width = int(width)
        self.output_stride = OUTPUT_STRIDE
        cin = self.in_channels
        for b, (n_conv, mult, dilations, pool) in enumerate(_VGG_BLOCKS[: self.blocks], start=1):
            layers: list[nn.Module] = []
            cout = mult * self.width
            for i in range(n_conv):
                layers += [_conv(self.spatial_dims, cin, cout, 3, dilations[i]), nn.ReLU(inplace=True)]
                cin = cout
            if pool:
                layers.append(Pool[Pool.MAX, self.spatial_dims](kernel_size=2, stride=2))
            self.add_module(f"block{b}", nn.Sequential(*layers))
        self.out_channels = cin
        _glorot_(self)

    def convs(self) -> list[nn.Module]:
        """The convolutions in forward order (10 for 4 blocks, 13 for 5 blocks)."""
        out = []
        for b in range(1, self.blocks + 1):
            out += [m for m in getattr(self, f"block{b}") if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, *S]`` (sizes multiples of 4) -> ``[B, out_channels, *S/4]``."""
        x = self.block4(self.block3(self.block2(self.block1(x))))
        if hasattr(self, "block5"):  # static in TorchScript
            x = self.block5(x)
        return x


_FEATURE_KEY = re.compile(r"^(?P<prefix>.*?)features\.(?P<index>\d+)\.weight$")


def load_vgg16_weights(encoder: VGGEncoder, path: str | os.PathLike) -> dict[str, str]:
    """Load a local torchvision-style VGG16 checkpoint into a width-64 :class:`VGGEncoder`.

    The checkpoint's convolution weights ``[<prefix>]features.<i>.weight`` (4-D tensors) and biases are sorted by
    ``i`` and assigned to :meth:`VGGEncoder.convs` in order (torchvision indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21
    for 4 blocks, plus 24, 26, 28 for block 5); ``classifier.*`` and anything else is ignored. Dicts wrapping the
    state dict under ``"state_dict"``/``"model"`` and any key prefix (``module.``, ``vgg.``) are accepted. Loaded with
    ``weights_only=True`` on the CPU; nothing is downloaded.

    Args:
        encoder: the encoder (``width=64``, ``in_channels=3``, ``spatial_dims=2``).
        path: the checkpoint file (e.g. torchvision's ``vgg16-397923af.pth`` copied locally).

    Returns:
        mapping checkpoint key -> encoder parameter name of every loaded tensor.

    Raises:
        ConfigError: the encoder is not a width-64, 3-channel, 2D encoder (the VGG16 shapes).
        DataError: the file is missing or unreadable, is not a state dict, holds a batch-norm VGG
            (``vgg16_bn``), has fewer convolutions than the encoder, misses a bias, or a tensor shape does not
            match. The message names the file.
    """
    path = os.fspath(path)
    if encoder.width != 64 or encoder.in_channels != 3 or encoder.spatial_dims != 2:
        raise ConfigError(
            f"VGG16 weights need a 2D encoder with width=64 and in_channels=3, got spatial_dims={encoder.spatial_dims}"
            f", width={encoder.width}, in_channels={encoder.in_channels} (file {path})"
        )
    state = read_state_dict(path, "pretrained VGG16 checkpoint")
    if any(str(k).endswith("running_mean") for k in state):
        raise DataError(path, "batch-norm VGG (vgg16_bn) checkpoints are not supported; give plain VGG16 weights")
    found: dict[str, list[tuple[int, str]]] = {}
    for key, value in state.items():
        m = _FEATURE_KEY.match(str(key))
        if m is not None and isinstance(value, torch.Tensor) and value.dim() == 4:
            found.setdefault(m.group("prefix"), []).append((int(m.group("index")), str(key)))
    convs = encoder.convs()
    if not found:
        raise DataError(
            path,
            f"no VGG convolution weights found: expected keys like 'features.0.weight'; first keys {list(state)[:5]}",
        )
    prefix = min(found, key=len)
    keys = [k for _, k in sorted(found[prefix])]
    if len(keys) < len(convs):
        raise DataError(
            path,
            f"missing keys: the checkpoint has {len(keys)} convolutions under '{prefix}features.', the "
            f"{encoder.blocks}-block encoder needs {len(convs)}",
        )
    names = {id(mod): name for name, mod in encoder.named_modules()}
    new_state: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}
    for conv, wkey in zip(convs, keys, strict=False):
        bkey = wkey[: -len("weight")] + "bias"
        bias = state.get(bkey)
        if not isinstance(bias, torch.Tensor):
            raise DataError(path, f"missing key {bkey!r} (bias of {wkey!r})")
        name = names[id(conv)]
        for src, dst, value, own in (
            (wkey, f"{name}.weight", state[wkey], conv.weight),
            (bkey, f"{name}.bias", bias, conv.bias),
        ):
            if tuple(value.shape) != tuple(own.shape):
                raise DataError(
                    path,
                    f"shape mismatch for {src!r}: checkpoint {tuple(value.shape)} vs encoder {dst} {tuple(own.shape)}",
                )
            new_state[dst] = value
            mapping[src] = dst
    encoder.load_state_dict(new_state, strict=False)
    return mapping


# ---------------------------------------------------------------------------------------------- §2.2 prototypes
def _grid_size(size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if isinstance(size, int | np.integer):
        return (int(size),) * spatial_dims
    out = tuple(int(s) for s in size)
    if len(out) != spatial_dims:
        raise ConfigError(f"size {size!r} must have {spatial_dims} entries")
    return out


def support_masks_to_grid(masks: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Support masks on the feature grid (fsms.md §2.2): bilinear resize, threshold 0.5, soft-mask fallback.

    Masks are binarised at 0.5 first. Each mask is resized bilinearly (``align_corners=False``) and thresholded at
    0.5; when that empties a mask that is non-empty at full resolution (a thin or tiny object), the area-downsampled
    soft mask (fraction of foreground pixels per grid cell, in (0, 1]) is used instead, so the prototype is a weighted
    mean of the cells the object touches.

    Args:
        masks: ``[T, K, 1, *S]`` support masks ({0, 1}).
        size: grid size (int or one per spatial dim), e.g. 56 for 224 inputs.

    Returns:
        ``[T, K, 1, *size]`` float masks (binary, or soft where the fallback applied).

    Raises:
        DataError: wrong shape, non-finite values, or a support mask that is empty at full resolution
            ("empty support mask: task t shot k").
    """
    if masks.dim() < 5 or masks.shape[2] != 1:
        raise DataError("support_masks", f"expected [T, K, 1, *spatial], got {tuple(masks.shape)}")
    if not torch.isfinite(masks).all():
        raise DataError("support_masks", "non-finite values (NaN/inf) in the support masks")
    spatial_dims = masks.dim() - 3
    grid = _grid_size(size, spatial_dims)
    T, K = masks.shape[:2]
    binary = (masks > 0.5).to(torch.float32 if not masks.is_floating_point() else masks.dtype)
    flat = binary.reshape(T * K, 1, *masks.shape[3:])
    nonempty = flat.flatten(1).amax(dim=1) > 0
    if not bool(nonempty.all()):
        i = int((~nonempty).nonzero()[0])
        raise DataError("support_masks", f"empty support mask: task {i // K} shot {i % K} (no foreground pixel)")
    return binary_masks_on_grid(flat, list(grid), always_soft=False).reshape(T, K, 1, *grid)


def binary_masks_on_grid(masks: torch.Tensor, grid: list[int], always_soft: bool = True) -> torch.Tensor:
    """The resizing rule of :func:`support_masks_to_grid` for ``[N, 1, *S]`` binary masks (TorchScript, traceable).

    Args:
        masks: ``[N, 1, *S]`` {0, 1} float masks.
        grid: grid size, one entry per spatial dim.
        always_soft: compute the area-downsampled fallback even when no mask needs it (fixed graph for export;
            the result is the same).

    Returns:
        ``[N, 1, *grid]``: bilinear resize thresholded at 0.5, or the area-downsampled soft mask for masks that the
        threshold empties.
    """
    mode = _interp_mode(masks.dim() - 2)
    resized = (F.interpolate(masks, size=grid, mode=mode, align_corners=False) > 0.5).to(masks.dtype)
    emptied = resized.flatten(1).amax(dim=1) <= 0
    if always_soft or bool(emptied.any()):
        soft = F.interpolate(masks, size=grid, mode="area")
        sel = emptied.reshape([-1] + [1] * (masks.dim() - 1))
        resized = torch.where(sel, soft, resized)
    return resized


def _check_pool_inputs(features: torch.Tensor, masks: torch.Tensor) -> None:
    if features.dim() < 4 or masks.dim() != features.dim() or masks.shape[2] != 1:
        raise DataError(
            "support features",
            f"features {tuple(features.shape)} / masks {tuple(masks.shape)} must be [T, K, C, *s] / [T, K, 1, *s]",
        )
    if masks.shape[:2] != features.shape[:2] or masks.shape[3:] != features.shape[3:]:
        raise DataError(
            "support features",
            f"masks {tuple(masks.shape)} do not fit the features {tuple(features.shape)} (same T, K and grid)",
        )


def masked_pool_k_shots(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """One foreground prototype over all shots: ``p = Σ_{k,x} F·M / (Σ_{k,x} M + eps)`` (fsms.md §2.2).

    Args:
        features: ``[T, K, C, *s]`` support features.
        masks: ``[T, K, 1, *s]`` masks on the same grid (binary or soft).
        eps: added to the mask sum (the reference divides by the raw sum: NaN for empty masks).

    Returns:
        ``[T, C]`` prototypes in the features' dtype (accumulated in float32).

    Raises:
        DataError: the shapes do not fit.
    """
    if not torch.jit.is_scripting():
        _check_pool_inputs(features, masks)
    # accumulate in float32: under autocast a float16 sum over K·h·w positions can overflow
    f32, m32 = features.float(), masks.float()
    dims = [1] + list(range(3, features.dim()))
    num = (f32 * m32).sum(dim=dims)
    den = m32.sum(dim=dims) + eps
    return (num / den).to(features.dtype)


# ------------------------------------------------------------------------------------------------- §2 network
class FSMSNet(nn.Module):
    """FSMS network (fsms.md §2): VGG encoder shared by a 1-way K-shot segmentation branch and a denoising head.

    Segmentation (``forward``)::

        E(support), E(query) -> shared conv3×3 → fc + ReLU  ->  F_s [T, K, fc, h, w], F_q [T, fc, h, w]
        p = masked_pool_k_shots(F_s, support masks on the h×w grid)        [T, fc]  (one prototype over all shots)
        R = ReLU(BN(conv3×3 2fc → fc (cat[tile(p), F_q])))                   "relation" block
        decoder: conv+BN+ReLU, (nearest ×2, conv+BN+ReLU) × 2, conv3×3 → fc/2 + ReLU, conv3×3 → 2 + ReLU, conv1×1 → 1

    Surrogate (``denoise``)::

        E(noisy) -> conv3×3 → fc + BN + ReLU -> conv3×3 → fc/2 (linear) -> conv3×3 → 3 (linear)   logits at H/4

    With ``fc = feature_channels = 128`` and ``width = 64`` this is the reference architecture. New layers use Keras
    parity initialisation (Glorot-uniform convolutions, zero biases) and Keras BatchNorm defaults (PyTorch momentum
    0.01, eps 1e-3).

    Input normalisation: images arrive in [0, 1]. When ImageNet VGG16 weights were loaded (``pretrained_path`` or
    :meth:`load_pretrained`) and ``imagenet_normalization`` is true, ``forward`` and ``denoise`` subtract the
    ImageNet mean and divide by the std internally (callers always pass [0, 1] images; surrogate targets stay the
    clean [0, 1] images). Without loaded weights nothing is normalised. The switch is the buffer
    ``input_normalization`` and is saved in the state dict, so a checkpoint restores the behaviour it was trained
    with whatever ``pretrained_path`` the loading network was built with.

    Args:
        spatial_dims: number of spatial dimensions (2 for the FSMS bundle).
        encoder_blocks: 4 (reference code, default) or 5 (VGG16 block 5, dilated; paper-like variant).
        width: encoder width (64 = VGG16; small values for tests).
        feature_channels: channels of the reduction conv, relation block and decoder (128 in the reference).
        pretrained_path: local torchvision VGG16 state dict (needs ``width=64``); ``None``: random encoder.
        imagenet_normalization: normalise inputs with the ImageNet mean/std when weights are loaded.

    Raises:
        ConfigError: bad sizes (``feature_channels`` < 2), see :class:`VGGEncoder`.
        DataError: an unusable ``pretrained_path`` (see :func:`load_vgg16_weights`).

    Examples::

        net = FSMSNet(spatial_dims=2, encoder_blocks=4, width=64, feature_channels=128, pretrained_path=None)
        logits = net(torch.rand(5, 1, 3, 224, 224), masks, torch.rand(5, 3, 224, 224))  # [5, 1, 224, 224]
        recon = net.denoise(torch.rand(6, 3, 224, 224))                                    # [6, 3, 56, 56]
        seg_opt = torch.optim.Adam(net.segmentation_parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-7)
        sur_opt = torch.optim.Adam(net.surrogate_parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-7)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        encoder_blocks: int = 4,
        width: int = 64,
        feature_channels: int = 128,
        pretrained_path: str | os.PathLike | None = None,
        imagenet_normalization: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        fc = int(feature_channels)
        if fc < 2:
            raise ConfigError(f"feature_channels must be at least 2, got {feature_channels!r}")
        self.feature_channels = fc
        self.imagenet_normalization = as_bool(imagenet_normalization, "imagenet_normalization")
        sd = self.spatial_dims
        self.encoder = VGGEncoder(sd, 3, encoder_blocks, width)
        enc_out = self.encoder.out_channels
        self.reduce = nn.Sequential(_conv(sd, enc_out, fc), nn.ReLU(inplace=True))
        self.relation = _conv_bn_relu(sd, 2 * fc, fc)
        self.decoder = nn.Sequential(
            _conv_bn_relu(sd, fc, fc),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv_bn_relu(sd, fc, fc),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv_bn_relu(sd, fc, fc),
            _conv(sd, fc, fc // 2),
            nn.ReLU(inplace=True),
            _conv(sd, fc // 2, 2),
            nn.ReLU(inplace=True),
            _conv(sd, 2, 1, kernel=1),
        )
        self.surrogate_head = nn.Sequential(
            _conv_bn_relu(sd, enc_out, fc),
            _conv(sd, fc, fc // 2),
            _conv(sd, fc // 2, 3),
        )
        for m in (self.reduce, self.relation, self.decoder, self.surrogate_head):
            _glorot_(m)
        shape = (1, 3) + (1,) * sd
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(shape), persistent=False)
        self.register_buffer("input_normalization", torch.tensor(False))
        # the stored K-shot support of the single-input call (set_support); not in the state dict
        self.register_buffer("support_image", torch.zeros(0), persistent=False)
        self.register_buffer("support_mask", torch.zeros(0), persistent=False)
        self.pretrained_mapping: dict[str, str] = {}
        if pretrained_path is not None:
            self.load_pretrained(pretrained_path)

    # ---------------------------------------------------------------------------------------------------- setup
    @torch.jit.unused
    def load_pretrained(self, path: str | os.PathLike) -> dict[str, str]:
        """Load ImageNet VGG16 weights into the encoder (:func:`load_vgg16_weights`) and switch on the input
        normalisation when ``imagenet_normalization`` is true.

        Args:
            path: local torchvision-style VGG16 state dict.

        Returns:
            mapping checkpoint key -> encoder parameter name.

        Raises:
            ConfigError: the encoder width is not 64.
            DataError: the file is missing, unreadable or does not fit.
        """
        self.pretrained_mapping = load_vgg16_weights(self.encoder, path)
        self.input_normalization.fill_(self.imagenet_normalization)
        return self.pretrained_mapping

    @property
    def normalizes_input(self) -> bool:
        """Whether ``forward``/``denoise`` apply the ImageNet mean/std normalisation."""
        return bool(self.input_normalization)

    def segmentation_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder and the segmentation branch (reduction, relation, decoder)."""
        mods = (self.encoder, self.reduce, self.relation, self.decoder)
        return [p for m in mods for p in m.parameters()]

    def surrogate_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder and the surrogate (denoising) head."""
        return [p for m in (self.encoder, self.surrogate_head) for p in m.parameters()]

    # ------------------------------------------------------------------------------------------- stored support
    @property
    def has_support(self) -> bool:
        """Whether a support is stored for the single-input call (:meth:`set_support`)."""
        return self.support_image.numel() > 0

    def set_support(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> None:
        """Store the K-shot support that ``net(image)`` (and the exported network) segments with.

        Args:
            support_images: ``[K, 3, H, W]`` RGB in [0, 1] (queries of ``net(image)`` must have the same H×W).
            support_masks: ``[K, 1, H, W]`` {0, 1}, none empty.

        Raises:
            DataError: wrong shapes or channels, non-finite values, an empty support mask.
        """
        if not isinstance(support_images, torch.Tensor) or not isinstance(support_masks, torch.Tensor):
            raise DataError("support", "support images and masks must be tensors")
        self._check_images("support_images", support_images.unsqueeze(0), 2)
        k = support_images.shape[0]
        spatial = tuple(support_images.shape[2:])
        if tuple(support_masks.shape) != (k, 1, *spatial):
            raise DataError(
                "support_masks",
                f"shape {tuple(support_masks.shape)} does not fit support_images {tuple(support_images.shape)} "
                f"(expected {(k, 1, *spatial)})",
            )
        grid = tuple(v // OUTPUT_STRIDE for v in spatial)
        support_masks_to_grid(support_masks[None].float(), grid)  # the checks: finite, none empty
        device = self.support_image.device
        self.support_image = support_images.detach().float().clone().to(device)
        self.support_mask = (support_masks.detach() > 0.5).float().to(device)

    def clear_support(self) -> None:
        """Forget the stored support (``net(image)`` gives the empty result again)."""
        self.support_image = self.support_image.new_zeros(0)
        self.support_mask = self.support_mask.new_zeros(0)

    def export_module(self) -> FSMSExport:
        """The segmentation branch as :class:`FSMSExport` (shared layers, the stored support), for TorchScript and
        ONNX; in this network's training mode (call it on an ``eval()`` network)."""
        return FSMSExport(self).train(self.training)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(net)`` scripts :meth:`export_module` (the eager forward is not scriptable)."""
        return self.export_module()

    # ------------------------------------------------------------------------------------------------- checks
    def _check_images(self, name: str, x: torch.Tensor, lead: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise DataError(name, f"expected a tensor, got {type(x).__name__}")
        want = lead + 1 + self.spatial_dims
        if x.dim() != want:
            raise DataError(
                name,
                f"expected {want} dims ({lead} leading, channel, {self.spatial_dims} spatial), got "
                f"shape {tuple(x.shape)}",
            )
        if x.shape[lead] != 3:
            hint = _GREY_HINT if x.shape[lead] == 1 else "expected 3 channels (RGB)"
            raise DataError(name, f"{hint}; got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[lead + 1 :])
        if any(s < OUTPUT_STRIDE or s % OUTPUT_STRIDE for s in spatial):
            raise DataError(name, f"spatial size {spatial} must be a positive multiple of {OUTPUT_STRIDE}")
        if not x.is_floating_point():
            raise DataError(name, f"expected float images in [0, 1], got dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise DataError(name, "non-finite values (NaN/inf)")

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.input_normalization):
            return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        support_images: torch.Tensor,
        support_masks: torch.Tensor | None = None,
        query_images: torch.Tensor | None = None,
        task: str = "segment",
    ) -> torch.Tensor:
        """Segment each task's query with the prototype of its K support shots.

        ``task="denoise"`` runs the surrogate branch instead (``forward(noisy, task="denoise")`` ==
        ``denoise(noisy)``), so that a ``DistributedDataParallel`` wrapper, which only forwards ``forward``, can run
        both branches. ``forward(image)`` (one tensor ``[B, 3, H, W]``) segments each query image with the stored
        support (:meth:`set_support`; none: :data:`EMPTY_LOGIT` everywhere).

        Args:
            support_images: ``[T, K, 3, H, W]`` RGB in [0, 1] (the query images when given alone).
            support_masks: ``[T, K, 1, H, W]`` {0, 1}; none may be empty.
            query_images: ``[T, 3, H, W]`` RGB in [0, 1] (same H×W as the supports).
            task: ``"segment"`` (default) or ``"denoise"``.

        Returns:
            ``[T, 1, H, W]`` logits (pre-sigmoid); with ``task="denoise"`` the :meth:`denoise` output.

        Raises:
            DataError: wrong shapes or channels (greyscale input), supports and queries of different sizes,
                non-finite values, an empty support mask.
        """
        if task == "denoise":
            return self.denoise(support_images)
        if task != "segment":
            raise ConfigError(f"task must be 'segment' or 'denoise', got {task!r}")
        if support_masks is None and query_images is None:
            query_images = support_images
            self._check_images("query_images", query_images, 1)
            if not self.has_support:
                return torch.full((query_images.shape[0], 1, *query_images.shape[2:]), EMPTY_LOGIT,
                                  dtype=torch.float32, device=query_images.device)  # fmt: skip
            b = query_images.shape[0]
            support_images = self.support_image[None].expand(b, *self.support_image.shape)
            support_masks = self.support_mask[None].expand(b, *self.support_mask.shape)
        if support_masks is None or query_images is None:
            raise DataError("FSMSNet", "segmentation needs support_images, support_masks and query_images")
        self._check_images("support_images", support_images, 2)
        self._check_images("query_images", query_images, 1)
        T, K = support_images.shape[:2]
        spatial = tuple(support_images.shape[3:])
        if support_masks.dim() != support_images.dim() or tuple(support_masks.shape) != (T, K, 1, *spatial):
            raise DataError(
                "support_masks",
                f"shape {tuple(support_masks.shape)} does not fit support_images {tuple(support_images.shape)} "
                f"(expected {(T, K, 1, *spatial)})",
            )
        if query_images.shape[0] != T or tuple(query_images.shape[2:]) != spatial:
            raise DataError(
                "query_images",
                f"shape {tuple(query_images.shape)} does not fit support_images {tuple(support_images.shape)}: "
                f"expected {T} queries of the supports' size {spatial}",
            )
        grid = tuple(s // OUTPUT_STRIDE for s in spatial)
        masks = support_masks_to_grid(support_masks, grid)
        x = torch.cat([support_images.reshape(T * K, 3, *spatial), query_images], dim=0)
        feats = self.reduce(self.encoder(self._normalize(x)))  # the encoder has no BN: one pass == two passes
        f_s = feats[: T * K].reshape(T, K, self.feature_channels, *grid)
        f_q = feats[T * K :]
        proto = masked_pool_k_shots(f_s, masks)
        tiled = proto.view(T, self.feature_channels, *([1] * self.spatial_dims)).expand_as(f_q)
        rel = self.relation(torch.cat([tiled, f_q], dim=1))
        return self.decoder(rel)

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        """Surrogate branch: reconstruct the clean images at 1/4 resolution from noisy ones.

        Args:
            noisy: ``[N, 3, H, W]`` noisy images (clean [0, 1] images plus Gaussian noise; not clipped).

        Returns:
            ``[N, 3, H/4, W/4]`` logits (pre-sigmoid); train with BCE-with-logits against
            :func:`~labelless.transforms.noise.surrogate_target` of the clean images.

        Raises:
            DataError: wrong shape or channels, non-finite values.
        """
        self._check_images("noisy images", noisy, 1)
        return self.surrogate_head(self.encoder(self._normalize(noisy)))

    @torch.no_grad()
    def predict(
        self, support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        """``sigmoid(forward(...))`` without gradients: the evaluation predictor ``[T, 1, H, W]`` in [0, 1].

        The caller sets the mode (``net.eval()`` for evaluation: BN running statistics).
        """
        return torch.sigmoid(self.forward(support_images, support_masks, query_images))


class FSMSExport(nn.Module):
    """The segmentation branch of an :class:`FSMSNet` for export (TorchScript, ONNX), from
    :meth:`FSMSNet.export_module`.

    ``forward(image)`` segments ``[B, 3, H, W]`` query images with the stored K-shot support (none:
    :data:`EMPTY_LOGIT` everywhere); ``forward(support_images, support_masks, query_images)`` with ``[T, K, 3, H, W]``,
    ``[T, K, 1, H, W]`` and ``[T, 3, H, W]``: the eager call forms. The layers are the network's (shared), so the
    state dict has its keys except the surrogate head's; the stored support is kept in non-persistent buffers,
    which TorchScript saves with the module. Input checks are TorchScript ``ValueError`` (not while tracing).

    Args:
        net: the FSMS network.
    """

    def __init__(self, net: FSMSNet) -> None:
        super().__init__()
        self.spatial_dims = int(net.spatial_dims)
        self.feature_channels = int(net.feature_channels)
        self.encoder = net.encoder
        self.reduce = net.reduce
        self.relation = net.relation
        self.decoder = net.decoder
        self.register_buffer("mean", net.mean, persistent=False)
        self.register_buffer("std", net.std, persistent=False)
        self.register_buffer("input_normalization", net.input_normalization)
        self.register_buffer("support_image", net.support_image, persistent=False)
        self.register_buffer("support_mask", net.support_mask, persistent=False)
        self.empty_logit = float(EMPTY_LOGIT)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.input_normalization):
            return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def _check(self, x: torch.Tensor, lead: int) -> None:
        if torch.jit.is_tracing():
            return
        if x.dim() != lead + 1 + self.spatial_dims or x.shape[lead] != 3:
            raise ValueError("FSMS expects RGB images with 3 channels, got shape " + str(x.shape))
        for v in x.shape[lead + 1 :]:
            if v < 4 or v % 4 != 0:
                raise ValueError("FSMS image sizes must be positive multiples of 4, got shape " + str(x.shape))

    def forward(
        self, x: torch.Tensor, support_masks: torch.Tensor | None = None, query_images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[T, 1, H, W]`` lesion logits (pre-sigmoid) of the query images.

        Args:
            x: the query images ``[B, 3, H, W]`` when given alone, else the support images ``[T, K, 3, H, W]``.
            support_masks: ``[T, K, 1, H, W]``.
            query_images: ``[T, 3, H, W]``.

        Returns:
            ``[T, 1, H, W]`` float logits.

        Raises:
            ValueError: bad shapes, only one of ``support_masks``/``query_images``, an empty support mask
                (TorchScript).
        """
        if support_masks is None and query_images is None:
            query = x
            self._check(query, 1)
            if self.support_image.numel() == 0:
                shape = [query.shape[0], 1] + list(query.shape[2:])
                return torch.full(shape, self.empty_logit, dtype=torch.float32, device=query.device)
            b = query.shape[0]
            support = self.support_image.unsqueeze(0).expand([b] + list(self.support_image.shape))
            masks = self.support_mask.unsqueeze(0).expand([b] + list(self.support_mask.shape))
        elif support_masks is not None and query_images is not None:
            support = x
            masks = support_masks
            query = query_images
        else:
            raise ValueError("give the query images alone (stored support) or support images, masks and query images")
        self._check(support, 2)
        self._check(query, 1)
        t, k = support.shape[0], support.shape[1]
        spatial = list(support.shape[3:])
        grid = [v // 4 for v in spatial]
        flat_masks = (masks.flatten(0, 1) > 0.5).to(support.dtype)
        if not torch.jit.is_tracing():
            if bool((flat_masks.flatten(1).amax(dim=1) <= 0).any()):
                raise ValueError("empty support mask: every support shot must contain the lesion")
        on_grid = binary_masks_on_grid(flat_masks, grid, always_soft=True).reshape([t, k, 1] + grid)
        feats = self.reduce(self.encoder(self._normalize(torch.cat([support.flatten(0, 1), query], dim=0))))
        f_s = feats[: t * k].reshape([t, k, self.feature_channels] + grid)
        f_q = feats[t * k :]
        proto = masked_pool_k_shots(f_s, on_grid)
        tiled = proto.reshape([t, self.feature_channels] + [1] * self.spatial_dims).expand_as(f_q)
        return self.decoder(self.relation(torch.cat([tiled, f_q], dim=1)))
