# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""SABR-Net networks: mask-aware transformer generator, boundary heads and discriminators (sabrnet.md §4, §5, §8).

SABR-Net segments ultrasound images that contain acoustic shadows. Its generator is a MAT-style mask-aware
transformer that inpaints the shadowed (masked) pixels and predicts a segmentation at the same time; boundary heads
(SegFix style) are attached to its decoder for the refinement stage.

- :class:`PartialConv2d` (§4.2): mask-aware convolution that rescales by the valid fraction and updates the mask.
- :class:`MaskedWindowAttention` (§4.3): window attention whose keys in holes get a −100 bias, Swin shift, and the
  adaptive mask update (a window with any valid token becomes valid).
- :class:`MaskedTransformerBlock` / :class:`MaskedStage` (§4.3): MAT blocks (fuse FC + MLP, no residual, no LN) and
  stages of alternating shifted blocks closed by a partial conv with an identity residual.
- :class:`ModulatedConv2d` / :class:`MappingNetwork` (§4.1, §4.5): StyleGAN2-style modulated convolution and the
  optional z → w mapping (own implementations of the published equations).
- :class:`SABRGenerator` (§4.4, §4.5) → :class:`SABRGeneratorOutput` (``rgb``, ``seg``, ``composite``,
  ``features``, ``features_half``); :meth:`SABRGenerator.perceptual_features` is Φ of §6.
- :class:`BoundaryHeads` / :class:`SABRNet` (§8): the generator with boundary (2-class) and direction (8-class)
  heads → :class:`SABRNetOutput`.
- :class:`ImageDiscriminator` (D_img) and :class:`SegDiscriminator` (D_seg, pix2pixHD multi-scale PatchGAN) (§5).
- :func:`build_sabrnet` / :func:`build_discriminators`: the ``"reference"``, ``"cpu"`` and ``"tiny"`` profiles.

Decisions (documented here because the reference code does not settle them):

- ``rgb`` is the raw (linear) output of the accumulated ToRGB heads, as in StyleGAN2/MAT; it is not squashed by a
  ``tanh`` (option ``tanh_rgb=True`` adds one). Targets are images in [−1, 1].
- Input sizes: H and W must be multiples of 16 (four stride-2 steps). The window of each transformer stage is
  ``min(window, max(h, w))`` of that stage's token map; maps whose sides are not multiples of the window are padded
  with zero tokens whose mask is 0 (so they are never attended to) and cropped afterwards. A shifted block whose map
  fits in one window does not shift. Non-square inputs work.
- The style branch is built with ``n_style_convs = log2(image_size / 16)`` stride-2 convs (``image_size`` is an
  optional generator argument); at run time as many of them are applied as are needed to reach 1×1 (fewer when the
  input is smaller than ``image_size``), then an average pool handles any remainder.
- Up-sampling in the encoder-decoder (§4.4) is nearest ×2 of features and mask, then a 3×3 partial conv; in the
  StyleGAN decoder (§4.5) features are up-sampled bilinearly before the modulated conv and the accumulated
  ``rgb``/``seg`` bilinearly as well.
- Each stage's closing partial conv adds the stage input (after the merge) as identity residual (MAT's layout).
- Drop-path (linear 0 → ``drop_path`` over all blocks) drops the attention branch before the fuse layer (there is
  no residual to drop around).
- Activations are leaky ReLU 0.2 without gain, except in the mapping network (gain √2 to keep w at unit scale).

Shapes (reference dims ``C = 180``, 256×256 input): ``rgb`` ``[B, 3, 256, 256]``, ``seg`` ``[B, n_classes, 256,
256]``, ``features`` ``[B, 180, 256, 256]``, ``features_half`` ``[B, 180, 128, 128]``; boundary heads
``[B, 2, 256, 256]`` and ``[B, 8, 256, 256]``; D_img ``[B, 1]``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from labelless.errors import ConfigError, DataError

__all__ = [
    "PartialConv2d",
    "MaskedWindowAttention",
    "MaskedTransformerBlock",
    "MaskedStage",
    "ModulatedConv2d",
    "MappingNetwork",
    "SABRGeneratorOutput",
    "SABRGenerator",
    "BoundaryHeads",
    "SABRNetOutput",
    "SABRNet",
    "SABRSegmenter",
    "ImageDiscriminator",
    "SegDiscriminator",
    "SABRNET_PROFILES",
    "build_sabrnet",
    "build_discriminators",
]

#: stride-2 steps between the input and the bottleneck (inputs must be multiples of 2 ** this)
_DOWNSAMPLING = 4
#: additive attention bias of keys in holes and across shifted-window borders (§4.3)
_HOLE_BIAS = -100.0
_LRELU = 0.2

#: generator options per profile of :func:`build_sabrnet` (overridable by keyword)
SABRNET_PROFILES: dict[str, dict] = {
    "reference": {
        "dim": 180,
        "heads": 6,
        "depths": (2, 3, 4, 3, 2),
        "windows": (8, 16, 16, 16, 8),
        "drop_path": 0.1,
        "use_latent": True,
    },
    "cpu": {
        "dim": 32,
        "heads": 2,
        "depths": (1, 1, 1, 1, 1),
        "windows": (8, 8, 8, 8, 8),
        "drop_path": 0.0,
        "use_latent": False,
    },
    "tiny": {
        "dim": 16,
        "heads": 2,
        "depths": (1, 1, 1, 1, 1),
        "windows": (4, 4, 4, 4, 4),
        "drop_path": 0.0,
        "use_latent": False,
    },
}

#: discriminator options per profile of :func:`build_discriminators`
_DISC_PROFILES: dict[str, dict] = {
    "reference": {"channel_base": 32768, "channel_max": 512, "ndf": 64},
    "cpu": {"channel_base": 2048, "channel_max": 64, "ndf": 16},
    "tiny": {"channel_base": 256, "channel_max": 16, "ndf": 8},
}


# ---------------------------------------------------------------------------------------------------- helpers
def _check_spatial_dims(spatial_dims: int, what: str) -> None:
    if int(spatial_dims) != 2:
        raise ConfigError(f"{what} supports spatial_dims=2 only, got spatial_dims={spatial_dims}")


def _check_positive(what: str, **values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{what}: {name} must be positive, got {value}")


def _lrelu(x: torch.Tensor, slope: float = _LRELU) -> torch.Tensor:
    return F.leaky_relu(x, slope)


def _require_mask(mask: torch.Tensor | None) -> torch.Tensor:
    """The mask a partial conv or stage returns when it is given one (a type refinement for TorchScript)."""
    if mask is None:
        raise RuntimeError("SABR-Net lost the keep-mask")
    return mask


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples with probability ``p`` (rescaled by ``1 / (1 − p)``) in training."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return x * torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep) / keep


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, H·W, C]``."""
    return x.flatten(2).transpose(1, 2)


def _to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``[B, H·W, C]`` → ``[B, C, H, W]``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``[B, H, W, C]`` (H, W multiples of ``ws``) → ``[B · nW, ws², C]`` (windows in row-major order)."""
    b, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_window_partition`: ``[B · nW, ws², C]`` → ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_bias(
    hp: int, wp: int, ws: int, shift: int, device: torch.device, hole_bias: float = _HOLE_BIAS
) -> torch.Tensor:
    """Swin shift mask ``[nW, ws², ws²]``: −100 between tokens of different regions of a cyclically shifted map."""
    labels = torch.zeros(hp, wp, device=device)
    bounds = ((0, hp - ws), (hp - ws, hp - shift), (hp - shift, hp))
    bounds_w = ((0, wp - ws), (wp - ws, wp - shift), (wp - shift, wp))
    region = 0
    for h0, h1 in bounds:
        for w0, w1 in bounds_w:
            labels[h0:h1, w0:w1] = region
            region += 1
    lw = _window_partition(labels[None, :, :, None], ws).squeeze(-1)  # [nW, N]
    diff = lw[:, None, :] != lw[:, :, None]
    return torch.zeros(diff.shape, device=device).masked_fill(diff, hole_bias)


class _EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate (weights scaled at run time, StyleGAN style).

    ``y = act(x · (W · lr_mul / √in)ᵀ + b · lr_mul)`` with ``W ~ N(0, 1/lr_mul²)`` stored, so Adam's effective step
    on the layer is multiplied by ``lr_mul``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        gain: float | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        #: leaky-ReLU gain, or ``None`` for a linear layer
        self.act_gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        gain = self.act_gain
        if gain is not None:
            y = _lrelu(y) * gain
        return y

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, lr_mul={self.lr_mul}"


# ---------------------------------------------------------------------------------------------------- §4.2
class PartialConv2d(nn.Module):
    """Partial (mask-aware) convolution (sabrnet.md §4.2).

    For a k×k conv with stride t and a one-channel mask μ::

        count(p)  = Σ μ over the k×k window at p           (zero padding counts as hole)
        update(p) = min(count(p), 1)
        y         = act(conv(x) + b) · k² / (count + 1e-8) · update

    The layer returns ``(y, update)``. ``x`` is expected to be masked upstream already (it is not multiplied by μ).
    With an all-ones mask the output equals a plain convolution in the interior; at the border it is rescaled by
    ``k² / count``. With ``mask=None`` it is a plain convolution and the returned mask is ``None``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size k (padding k // 2).
        stride: stride t.
        bias: add a learnable bias.
        act: apply leaky ReLU 0.2 (inside the rescaling, as in the equation above).

    Examples::

        conv = PartialConv2d(4, 16, 3, stride=2, act=True)
        y, m = conv(torch.randn(1, 4, 32, 32), torch.ones(1, 1, 32, 32))  # [1, 16, 16, 16], [1, 1, 16, 16]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        act: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("PartialConv2d", in_channels=in_channels, out_channels=out_channels, stride=stride)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"PartialConv2d: kernel_size must be odd and positive, got {kernel_size}")
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.act = bool(act)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias)
        self.register_buffer("mask_kernel", torch.ones(1, 1, kernel_size, kernel_size), persistent=False)

    def update_mask(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(update, ratio)`` for a mask ``[B, 1, H, W]``: the new mask and ``k² / (count + 1e-8) · update``.

        Computed without gradient in float32 (also under autocast: ``1e-8`` vanishes in float16).
        """
        if torch.jit.is_scripting():  # exported networks run in float32 without gradients
            return self._update(mask)
        with torch.no_grad(), torch.autocast(device_type=mask.device.type, enabled=False):
            return self._update(mask)

    def _update(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = F.conv2d(mask.float(), self.mask_kernel.float(), stride=self.stride, padding=self.kernel_size // 2)
        update = count.clamp(0.0, 1.0)
        ratio = self.kernel_size**2 / (count + 1e-8) * update
        return update.to(mask.dtype), ratio

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Convolve ``x`` where ``mask`` is valid.

        Args:
            x: ``[B, in_channels, H, W]`` features (holes already zeroed upstream).
            mask: ``[B, 1, H, W]`` in {0, 1} (1 = valid) or ``None``.

        Returns:
            ``(y [B, out_channels, H', W'], new_mask [B, 1, H', W'] or None)``.
        """
        y = self.conv(x)
        if self.act:
            y = _lrelu(y)
        if mask is None:
            return y, None
        update, ratio = self.update_mask(mask)
        return y * ratio.to(y.dtype), update.to(y.dtype)


# ---------------------------------------------------------------------------------------------------- §4.3
class MaskedWindowAttention(nn.Module):
    """Mask-aware (shadow-masked) window multi-head self-attention (sabrnet.md §4.3).

    Within each window of N = ws² tokens X with token mask μ::

        q = LN2(X) W_q,  k = LN2(X) W_k,  v = X W_v        # LN2: L2-normalisation of each token
        logits = q kᵀ / √d + B_shift + B_hole (+ B_rel),  B_hole[:, j] = −100 where μ_j = 0
        out = proj(softmax(logits) v)
        μ'_i = 1 for every token of the window if Σ_j μ_j > 0 else 0

    The window is ``ws = min(window_size, max(H, W))``; the map is zero-padded (mask 0) to multiples of ``ws`` and
    cropped back. With ``shift_size > 0`` the map is cyclically shifted by ``min(shift_size, ws // 2)`` (Swin) and the
    shift mask is added, unless the (padded) map is a single window. ``rel_pos_bias`` adds a learned relative
    position bias table (Swin; MAT uses none).

    Args:
        dim: token channels C.
        num_heads: heads h (C divisible by h).
        window_size: configured window side.
        shift_size: 0 (regular windows) or the configured shift (``window_size // 2`` in a stage).
        rel_pos_bias: add a learned relative position bias.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.

    Examples::

        attn = MaskedWindowAttention(32, 2, 8)
        out, new_mask = attn(torch.randn(1, 256, 32), torch.ones(1, 256, 1), (16, 16))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        rel_pos_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive("MaskedWindowAttention", dim=dim, num_heads=num_heads, window_size=window_size)
        if dim % num_heads:
            raise ConfigError(f"MaskedWindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        if shift_size < 0:
            raise ConfigError(f"MaskedWindowAttention: shift_size must be >= 0, got {shift_size}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.shift_size = int(shift_size)
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos_bias = bool(rel_pos_bias)
        self.hole_bias = _HOLE_BIAS
        self.rel_pos_table: nn.Parameter | None = None
        if self.rel_pos_bias:
            self.rel_pos_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.rel_pos_table, std=0.02)

    def effective_window(self, hw: tuple[int, int]) -> tuple[int, int]:
        """``(ws, shift)`` used on a map of size ``hw`` (see the class docstring)."""
        h, w = hw
        ws = min(self.window_size, max(h, w))
        hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws  # ceil(h / ws) · ws
        shift = min(self.shift_size, ws // 2) if (hp > ws or wp > ws) else 0
        return ws, shift

    def _relative_bias(self, ws: int, device: torch.device, table: torch.Tensor) -> torch.Tensor:
        """``[h, ws², ws²]`` relative position bias (from ``table``) for an actual window ``ws`` ≤ the configured
        one."""
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # [2, N]
        rel = coords[:, :, None] - coords[:, None, :] + (self.window_size - 1)
        index = (rel[0] * (2 * self.window_size - 1) + rel[1]).to(device)
        n = ws * ws
        return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def attend(
        self, windows: torch.Tensor, mask_windows: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention inside already partitioned windows.

        Args:
            windows: ``[B', N, C]`` tokens of ``B'`` windows.
            mask_windows: ``[B', N, 1]`` token masks.
            bias: optional additive bias broadcastable to ``[B', h, N, N]`` (shift mask, relative position bias).

        Returns:
            ``(out [B', N, C], new_mask [B', N, 1], attention weights [B', h, N, N])``.
        """
        bw, n, c = windows.shape[0], windows.shape[1], windows.shape[2]
        normed = F.normalize(windows.float(), p=2.0, dim=-1).to(windows.dtype)  # float32: zero tokens in holes
        q = self.q(normed).reshape(bw, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(normed).reshape(bw, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(windows).reshape(bw, n, self.num_heads, self.head_dim).transpose(1, 2)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        hole = (mask_windows.reshape(bw, 1, 1, n) <= 0).to(logits.dtype) * self.hole_bias
        logits = logits + hole
        if bias is not None:
            logits = logits + bias
        attn = torch.softmax(logits, dim=-1)
        out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(bw, n, c)
        out = self.proj_drop(self.proj(out))
        valid = (mask_windows.sum(dim=1, keepdim=True) > 0).to(mask_windows.dtype)
        return out, valid.expand(-1, n, -1), attn

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        hw: tuple[int, int],
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend within (shifted) windows of a token map.

        Args:
            x: ``[B, H·W, C]`` tokens in row-major order.
            mask: ``[B, H·W, 1]`` token mask in {0, 1}, or ``None`` (all valid).
            hw: ``(H, W)``.
            return_attention: also return the attention weights.

        Returns:
            ``(out [B, H·W, C], new_mask [B, H·W, 1])``, plus the weights ``[B · nW, h, ws², ws²]`` when
            ``return_attention`` (windows of the padded, shifted map in row-major order per sample).
        """
        out, new_mask, attn = self.attend_tokens(x, mask, hw)
        if return_attention:
            return out, new_mask, attn
        return out, new_mask

    def attend_tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the attention weights always returned (one return type, for TorchScript).

        Returns:
            ``(out [B, H·W, C], new_mask [B, H·W, 1], weights [B · nW, h, ws², ws²])``.
        """
        b, length, c = x.shape[0], x.shape[1], x.shape[2]
        h, w = hw
        if not torch.jit.is_scripting():
            if length != h * w or c != self.dim:
                raise DataError(
                    "input", f"MaskedWindowAttention expects [B, {h}·{w}, {self.dim}] tokens, got {tuple(x.shape)}"
                )
        if mask is None:
            mask = x.new_ones(b, length, 1)
        ws, shift = self.effective_window(hw)
        hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
        xm = x.reshape(b, h, w, c)
        mm = mask.to(x.dtype).reshape(b, h, w, 1)
        if hp != h or wp != w:
            xm = F.pad(xm, [0, 0, 0, wp - w, 0, hp - h])
            mm = F.pad(mm, [0, 0, 0, wp - w, 0, hp - h])
        if shift:
            xm = torch.roll(xm, shifts=[-shift, -shift], dims=[1, 2])
            mm = torch.roll(mm, shifts=[-shift, -shift], dims=[1, 2])
        windows = _window_partition(xm, ws)
        mask_windows = _window_partition(mm, ws)
        n_win = (hp // ws) * (wp // ws)
        n = ws * ws
        bias: torch.Tensor | None = None
        if shift:
            shift_bias = _shift_bias(hp, wp, ws, shift, x.device, self.hole_bias).to(x.dtype)  # [nW, N, N]
            bias = shift_bias[:, None].repeat(b, 1, 1, 1)  # [B·nW, 1, N, N]
        table = self.rel_pos_table
        if table is not None:
            rel = self._relative_bias(ws, x.device, table).to(x.dtype)[None]
            bias = rel if bias is None else bias + rel
        out, new_mask, attn = self.attend(windows, mask_windows, bias)
        out = _window_reverse(out, ws, hp, wp)
        new_mask = _window_reverse(new_mask, ws, hp, wp)
        if shift:
            out = torch.roll(out, shifts=[shift, shift], dims=[1, 2])
            new_mask = torch.roll(new_mask, shifts=[shift, shift], dims=[1, 2])
        out = out[:, :h, :w].reshape(b, length, c)
        new_mask = new_mask[:, :h, :w].reshape(b, length, 1)
        return out, new_mask, attn.reshape(b * n_win, self.num_heads, n, n)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, window={self.window_size}, shift={self.shift_size}"


class MaskedTransformerBlock(nn.Module):
    """MAT transformer block (sabrnet.md §4.3): masked window attention, fuse FC and MLP, no residual, no LN.

    ``a = drop_path(attention(X, μ))``; ``Y = MLP(lrelu(FC_{2C→C}(cat[X, a])))`` with the MLP
    ``FC_{C→rC}``, leaky ReLU, ``FC_{rC→C}`` (r = ``mlp_ratio``). The mask is updated by the attention.

    Args:
        dim: token channels C.
        num_heads: attention heads.
        window_size: configured window side.
        shift_size: 0 or the shift of this block.
        mlp_ratio: hidden ratio r of the MLP.
        drop_path: stochastic-depth probability of the attention branch.
        rel_pos_bias: relative position bias in the attention.

    Examples::

        blk = MaskedTransformerBlock(32, 2, 8, shift_size=4)
        y, m = blk(torch.randn(1, 256, 32), torch.ones(1, 256, 1), (16, 16))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
        rel_pos_bias: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("MaskedTransformerBlock", mlp_ratio=mlp_ratio)
        if not 0.0 <= drop_path < 1.0:
            raise ConfigError(f"MaskedTransformerBlock: drop_path must be in [0, 1), got {drop_path}")
        self.attn = MaskedWindowAttention(dim, num_heads, window_size, shift_size, rel_pos_bias)
        self.drop_path = float(drop_path)
        self.fuse = nn.Linear(2 * dim, dim)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the block.

        Args:
            x: ``[B, H·W, C]`` tokens.
            mask: ``[B, H·W, 1]`` token mask or ``None``.
            hw: ``(H, W)``.

        Returns:
            ``(tokens [B, H·W, C], mask [B, H·W, 1])``.
        """
        a, new_mask, _ = self.attn.attend_tokens(x, mask, hw)
        a = _drop_path(a, self.drop_path, self.training)
        y = _lrelu(self.fuse(torch.cat([x, a], dim=-1)))
        y = self.fc2(_lrelu(self.fc1(y)))
        return y, new_mask


class MaskedStage(nn.Module):
    """A transformer stage (sabrnet.md §4.3): ``depth`` blocks alternating shift 0 / ``window // 2``, then a 3×3
    partial conv (leaky ReLU) plus the stage input as identity residual; the mask propagates through all of them.

    Args:
        dim: channels C.
        depth: number of blocks.
        num_heads: attention heads.
        window_size: configured window side.
        mlp_ratio: MLP hidden ratio.
        drop_path: one probability for all blocks or one per block.
        rel_pos_bias: relative position bias in the attention.

    Examples::

        stage = MaskedStage(32, 2, 2, 8)
        y, m = stage(torch.randn(1, 32, 16, 16), torch.ones(1, 1, 16, 16))
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 2.0,
        drop_path: float | Sequence[float] = 0.0,
        rel_pos_bias: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("MaskedStage", dim=dim, depth=depth)
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else [float(p) for p in drop_path]
        if len(rates) != depth:
            raise ConfigError(f"MaskedStage: {len(rates)} drop_path rates for {depth} blocks")
        self.dim = int(dim)
        self.blocks = nn.ModuleList(
            MaskedTransformerBlock(
                dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, rates[i], rel_pos_bias
            )
            for i in range(depth)
        )
        self.conv = PartialConv2d(dim, dim, 3, act=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply the stage.

        Args:
            x: ``[B, C, H, W]`` feature map.
            mask: ``[B, 1, H, W]`` mask or ``None``.

        Returns:
            ``(features [B, C, H, W], mask [B, 1, H, W] or None)``.
        """
        hw = (x.shape[2], x.shape[3])
        tokens = _to_tokens(x)
        tmask: torch.Tensor | None = None if mask is None else _to_tokens(mask)
        for blk in self.blocks:
            tokens, tmask = blk(tokens, tmask, hw)
        map_mask: torch.Tensor | None = None
        if mask is not None and tmask is not None:
            map_mask = _to_map(tmask, hw)
        y, new_mask = self.conv(_to_map(tokens, hw), map_mask)
        return y + x, new_mask


# ---------------------------------------------------------------------------------------------------- §4.1, §4.5
class MappingNetwork(nn.Module):
    """z → w mapping (sabrnet.md §4.1): RMS normalisation of z, then ``n_layers`` equalised FC layers (leaky ReLU
    0.2 with gain √2, learning-rate multiplier ``lr_mul``).

    Args:
        z_dim: latent size.
        w_dim: output size.
        n_layers: fully connected layers (8 in the reference).
        lr_mul: learning-rate multiplier of every layer (0.01).

    Examples::

        w = MappingNetwork(512, 512)(torch.randn(2, 512))  # [2, 512]
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, n_layers: int = 8, lr_mul: float = 0.01) -> None:
        super().__init__()
        _check_positive("MappingNetwork", z_dim=z_dim, w_dim=w_dim, n_layers=n_layers, lr_mul=lr_mul)
        self.z_dim = int(z_dim)
        self.w_dim = int(w_dim)
        dims = [self.z_dim] + [self.w_dim] * n_layers
        self.layers = nn.ModuleList(
            _EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul, gain=math.sqrt(2.0)) for i in range(n_layers)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Map ``z`` ``[B, z_dim]`` to ``w`` ``[B, w_dim]``."""
        if not torch.jit.is_scripting():
            if z.dim() != 2 or z.shape[1] != self.z_dim:
                raise DataError("input", f"MappingNetwork expects z of shape [B, {self.z_dim}], got {tuple(z.shape)}")
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = layer(x)
        return x


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution (sabrnet.md §4.5; StyleGAN2 equations, own implementation).

    ``s = A(style)`` (equalised affine, bias initialised to 1) gives per-sample input-channel scales;
    ``w'_{o,i,k} = s_i · g · w_{o,i,k}`` (g = 1/√(in·k²), equalised lr); with ``demodulate``
    ``w'' = w' / √(Σ_{i,k} w'² + 1e-8)`` per output channel. Computed as ``conv(x · s, g·w) · d`` (mathematically
    identical to the grouped per-sample convolution). Then, in training mode only, per-pixel Gaussian noise times
    a learned scalar (initialised to 0), a bias and, with ``activation``, leaky ReLU 0.2. ``upsample`` doubles the
    size bilinearly before the convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        style_dim: size of the style vector.
        demodulate: apply the demodulation (False for ToRGB).
        upsample: bilinear ×2 before the convolution.
        activation: leaky ReLU 0.2 at the end.
        noise: add per-pixel noise in training mode.

    Examples::

        conv = ModulatedConv2d(16, 16, 3, style_dim=32, upsample=True)
        y = conv(torch.randn(2, 16, 8, 8), torch.randn(2, 32))  # [2, 16, 16, 16]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        activation: bool = True,
        noise: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("ModulatedConv2d", in_channels=in_channels, out_channels=out_channels, style_dim=style_dim)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"ModulatedConv2d: kernel_size must be odd and positive, got {kernel_size}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.demodulate = bool(demodulate)
        self.upsample = bool(upsample)
        self.activation = bool(activation)
        self.affine = _EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(())) if noise else None

    def effective_weight(self, style: torch.Tensor) -> torch.Tensor:
        """The per-sample weights ``w''`` (or ``w'`` without demodulation) ``[B, out, in, k, k]``."""
        s = self.affine(style)
        w = self.weight[None] * self.weight_gain * s[:, None, :, None, None]
        if self.demodulate:
            w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        return w

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Apply the modulated convolution.

        Args:
            x: ``[B, in_channels, H, W]``.
            style: ``[B, style_dim]``.

        Returns:
            ``[B, out_channels, H', W']`` (H' = 2H with ``upsample``).
        """
        s = self.affine(style)  # [B, in]
        w = self.weight * self.weight_gain
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        y = F.conv2d(x * s[:, :, None, None].to(x.dtype), w.to(x.dtype), padding=self.kernel_size // 2)
        if self.demodulate:
            d = torch.rsqrt((w[None] * s[:, None, :, None, None]).square().sum(dim=(2, 3, 4)) + 1e-8)  # [B, out]
            y = y * d[:, :, None, None].to(y.dtype)
        strength = self.noise_strength
        if strength is not None and self.training:
            y = y + torch.randn(y.shape[0], 1, y.shape[2], y.shape[3], device=y.device, dtype=y.dtype) * (
                strength.to(y.dtype)
            )
        y = y + self.bias[None, :, None, None].to(y.dtype)
        return _lrelu(y) if self.activation else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, demodulate={self.demodulate}, "
            f"upsample={self.upsample}"
        )


class _DecoderBlock(nn.Module):
    """One StyleGAN decoder block (§4.5): up ×2 + modulated conv, + skip, modulated conv, ToRGB, ToSeg."""

    def __init__(self, dim: int, style_dim: int, out_channels: int, n_classes: int) -> None:
        super().__init__()
        self.conv0 = ModulatedConv2d(dim, dim, 3, style_dim, upsample=True)
        self.conv1 = ModulatedConv2d(dim, dim, 3, style_dim)
        self.to_rgb = ModulatedConv2d(dim, out_channels, 1, style_dim, demodulate=False, activation=False, noise=False)
        self.to_seg = nn.Conv2d(dim, n_classes, 1)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, rgb: torch.Tensor, seg: torch.Tensor, style: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv0(x, style) + skip
        x = self.conv1(x, style)
        size = x.shape[2:]
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False) + self.to_rgb(x, style)
        seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False) + self.to_seg(x)
        return x, rgb, seg


# ---------------------------------------------------------------------------------------------------- §4.4 generator
class SABRGeneratorOutput(NamedTuple):
    """Outputs of :class:`SABRGenerator` (sabrnet.md §4.5).

    Attributes:
        rgb: inpainted image ``[B, in_channels, H, W]`` (raw ToRGB output, targets in [−1, 1]; ``tanh`` only with
            ``tanh_rgb=True``).
        seg: segmentation logits ``[B, n_classes, H, W]``.
        composite: ``rgb · (1 − m) + x_in · m`` ``[B, in_channels, H, W]`` (known pixels kept).
        features: decoder feature F_dec ``[B, C, H, W]``.
        features_half: the H/2 decoder feature ``[B, C, H/2, W/2]`` (boundary heads, §8).
    """

    rgb: torch.Tensor
    seg: torch.Tensor
    composite: torch.Tensor
    features: torch.Tensor
    features_half: torch.Tensor


class _Encoded(NamedTuple):
    skip0: torch.Tensor
    skip1: torch.Tensor
    conv64: torch.Tensor
    skip2: torch.Tensor
    skip3: torch.Tensor
    bottleneck: torch.Tensor
    mask: torch.Tensor


class SABRGenerator(nn.Module):
    """SABR-Net generator (sabrnet.md §4): MAT-style mask-aware transformer with image and segmentation heads.

    With C = ``dim``, input ``x_in`` ``[B, in_channels, H, W]`` and keep-mask ``m`` (H, W multiples of 16)::

        conv_first: partial conv3×3 (in+1)→C, lrelu on cat[m − 0.5, x_in]        [H]      skip0
        enc1, enc2: partial conv3×3 s2, lrelu                                    [H/2] skip1, [H/4]
        L0 (H/4) → skip2;  merge (partial conv s2);  L1 (H/8) → skip3;  merge;  L2 (H/16, bottleneck)
        style: n × [conv3×3 s2, lrelu] down to 1×1, avgpool, FC C→2C  (+ FC_{latent→C}(w) with use_latent)
        up (nearest ×2 + partial conv) + skip3, L3 (H/8);  up + skip2, L4 (H/4)
        decoder: rgb = ToRGB(x64), seg = ToSeg(x64); two blocks to H/2 (+ skip1) and H (+ skip0) with modulated
                 convs and accumulated ToRGB / ToSeg
        composite = rgb · (1 − m) + x_in · m

    Args:
        spatial_dims: must be 2.
        in_channels: image channels (3: grey images are converted to RGB, §2.3).
        n_classes: segmentation classes (2 for binary tasks).
        dim: channels C.
        heads: attention heads.
        depths: blocks of L0 … L4.
        windows: window sides of L0 … L4.
        mlp_ratio: MLP hidden ratio.
        drop_path: maximal stochastic depth (linear 0 → ``drop_path`` over all blocks).
        use_latent: use the mapping network and a latent z (§4.1).
        latent_dim: size of z and w.
        n_mapping: layers of the mapping network.
        image_size: nominal input size; sets the number of style convs (``log2(image_size / 16)``).
        rel_pos_bias: relative position bias in the attention.
        tanh_rgb: squash ``rgb`` with ``tanh``.

    Raises:
        ConfigError: invalid options.

    Examples::

        g = SABRGenerator(dim=16, heads=2, depths=(1,) * 5, windows=(4,) * 5, image_size=64).eval()
        out = g(torch.rand(1, 3, 64, 64) * 2 - 1, torch.ones(1, 1, 64, 64))
        out.seg.shape  # [1, 2, 64, 64]
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        n_classes: int = 2,
        dim: int = 180,
        heads: int = 6,
        depths: Sequence[int] = (2, 3, 4, 3, 2),
        windows: Sequence[int] = (8, 16, 16, 16, 8),
        mlp_ratio: float = 2.0,
        drop_path: float = 0.1,
        use_latent: bool = False,
        latent_dim: int = 512,
        n_mapping: int = 8,
        image_size: int = 256,
        rel_pos_bias: bool = False,
        tanh_rgb: bool = False,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims, "SABRGenerator")
        depths, windows = tuple(int(d) for d in depths), tuple(int(w) for w in windows)
        if len(depths) != 5 or len(windows) != 5:
            raise ConfigError(
                f"SABRGenerator: depths and windows need 5 entries (L0 … L4), got {len(depths)} and {len(windows)}"
            )
        _check_positive("SABRGenerator", in_channels=in_channels, n_classes=n_classes, dim=dim, heads=heads)
        _check_positive("SABRGenerator", mlp_ratio=mlp_ratio, latent_dim=latent_dim, n_mapping=n_mapping)
        if min(depths) < 1 or min(windows) < 1:
            raise ConfigError(f"SABRGenerator: depths {depths} and windows {windows} must be positive")
        if dim % heads:
            raise ConfigError(f"SABRGenerator: dim {dim} is not divisible by heads {heads}")
        if not 0.0 <= drop_path < 1.0:
            raise ConfigError(f"SABRGenerator: drop_path must be in [0, 1), got {drop_path}")
        if int(image_size) < 16 or int(image_size) % 16:
            raise ConfigError(f"SABRGenerator: image_size must be a multiple of 16, got {image_size}")
        self.spatial_dims = 2
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.dim = int(dim)
        self.heads = int(heads)
        self.depths = depths
        self.windows = windows
        self.use_latent = bool(use_latent)
        self.latent_dim = int(latent_dim)
        self.image_size = int(image_size)
        self.tanh_rgb = bool(tanh_rgb)
        c = self.dim

        rates = torch.linspace(0.0, float(drop_path), sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(5)]

        def stage(i: int) -> MaskedStage:
            return MaskedStage(c, depths[i], heads, windows[i], mlp_ratio, rates[starts[i] : starts[i] + depths[i]],
                               rel_pos_bias)  # fmt: skip

        self.conv_first = PartialConv2d(self.in_channels + 1, c, 3, act=True)
        self.enc1 = PartialConv2d(c, c, 3, stride=2, act=True)
        self.enc2 = PartialConv2d(c, c, 3, stride=2, act=True)
        self.stage0 = stage(0)
        self.merge1 = PartialConv2d(c, c, 3, stride=2, act=True)
        self.stage1 = stage(1)
        self.merge2 = PartialConv2d(c, c, 3, stride=2, act=True)
        self.stage2 = stage(2)
        self.up3 = PartialConv2d(c, c, 3, act=True)
        self.stage3 = stage(3)
        self.up4 = PartialConv2d(c, c, 3, act=True)
        self.stage4 = stage(4)

        n_style = max(1, math.ceil(math.log2(self.image_size // 16)))
        self.style_convs = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for _ in range(n_style))
        self.style_fc = _EqualLinear(c, 2 * c)
        if self.use_latent:
            self.mapping = MappingNetwork(self.latent_dim, self.latent_dim, n_mapping)
            self.w_fc = _EqualLinear(self.latent_dim, c)
            self.style_dim = 3 * c
        else:
            self.mapping = None
            self.w_fc = None
            self.style_dim = 2 * c

        self.to_rgb0 = ModulatedConv2d(c, self.in_channels, 1, self.style_dim, demodulate=False, activation=False,
                                       noise=False)  # fmt: skip
        self.to_seg0 = nn.Conv2d(c, self.n_classes, 1)
        self.dec_half = _DecoderBlock(c, self.style_dim, self.in_channels, self.n_classes)
        self.dec_full = _DecoderBlock(c, self.style_dim, self.in_channels, self.n_classes)

    # ------------------------------------------------------------------------------------------------ checks
    def check_input(self, x: torch.Tensor, keep_mask: torch.Tensor | None = None) -> None:
        """Raise a one-line error when ``x`` / ``keep_mask`` cannot be processed.

        Raises:
            DataError: wrong number of dimensions or channels, or a mask of another size.
            ConfigError: H or W not a positive multiple of 16.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError("input", f"SABRGenerator expects [B, {self.in_channels}, H, W] images, got {shape}")
        h, w = x.shape[2], x.shape[3]
        factor = 2**_DOWNSAMPLING
        if h % factor or w % factor or h < factor or w < factor:
            raise ConfigError(
                f"SABRGenerator needs H and W to be multiples of {factor}, got an input of size {h}×{w} "
                f"(resize, e.g. to 256×256)"
            )
        if keep_mask is not None and (keep_mask.dim() != 4 or tuple(keep_mask.shape) != (x.shape[0], 1, h, w)):
            raise DataError(
                "input",
                f"SABRGenerator expects a keep-mask of shape {(x.shape[0], 1, h, w)}, got {tuple(keep_mask.shape)}",
            )

    # ------------------------------------------------------------------------------------------------ parts
    def encode(self, x: torch.Tensor, keep_mask: torch.Tensor) -> _Encoded:
        """Conv encoder and L0–L2 (§4.4) on the network input ``x`` and keep-mask ``[B, 1, H, W]``."""
        m = keep_mask.to(x.dtype)
        skip0, mask = self.conv_first(torch.cat([m - 0.5, x], dim=1), m)
        skip1, mask = self.enc1(skip0, mask)
        conv64, mask = self.enc2(skip1, mask)
        skip2, mask = self.stage0(conv64, mask)
        f, mask = self.merge1(skip2, mask)
        skip3, mask = self.stage1(f, mask)
        f, mask = self.merge2(skip3, mask)
        bottleneck, mask = self.stage2(f, mask)
        return _Encoded(skip0, skip1, conv64, skip2, skip3, bottleneck, _require_mask(mask))

    def style(self, bottleneck: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """The style vector ``[B, style_dim]`` from the bottleneck map (and ``w`` with ``use_latent``)."""
        f = bottleneck
        for conv in self.style_convs:
            if f.shape[2] != 1 or f.shape[3] != 1:  # down to 1×1, then the remaining convs are skipped
                f = _lrelu(conv(f))
        gs = self.style_fc(f.mean(dim=(2, 3)))
        w_fc = self.w_fc
        if not self.use_latent or w_fc is None:
            return gs
        if w is None:
            raise ConfigError("SABRGenerator.style: use_latent=True needs w")
        return torch.cat([gs, w_fc(w)], dim=1)

    def latent(self, batch: int, z: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``w`` for a batch: ``mapping(z)``; ``z = 0`` in eval mode and ``z ~ N(0, I)`` in training when ``None``."""
        mapping = self.mapping
        if mapping is None:
            raise ConfigError("SABRGenerator.latent: the generator was built with use_latent=False")
        if z is None:
            if self.training:
                z = torch.randn(batch, self.latent_dim, device=device, dtype=dtype)
            else:
                z = torch.zeros(batch, self.latent_dim, device=device, dtype=dtype)
        return mapping(z.to(device=device, dtype=dtype))

    def forward(
        self,
        x: torch.Tensor,
        keep_mask: torch.Tensor,
        z: torch.Tensor | None = None,
        w: torch.Tensor | None = None,
    ) -> SABRGeneratorOutput:
        """Inpaint and segment.

        Args:
            x: ``[B, in_channels, H, W]`` network input ``x_in`` in [−1, 1] (already ``x · m`` in freeform mode).
            keep_mask: ``[B, 1, H, W]`` in {0, 1} (1 = keep).
            z: ``[B, latent_dim]`` latent (``use_latent`` only); ``None`` → zeros in eval, Gaussian in training.
            w: ``[B, latent_dim]`` mapped latent, bypassing the mapping network (e.g. for path-length regularisation).

        Returns:
            :class:`SABRGeneratorOutput`.

        Raises:
            DataError: wrong input shapes. ConfigError: H or W not a multiple of 16.
        """
        if not torch.jit.is_scripting():
            self.check_input(x, keep_mask)
        enc = self.encode(x, keep_mask)
        if self.use_latent and w is None:
            w = self.latent(x.shape[0], z, x.device, x.dtype)
        style = self.style(enc.bottleneck, w)

        f, mask = F.interpolate(enc.bottleneck, scale_factor=2.0, mode="nearest"), enc.mask
        f, mask = self.up3(f, F.interpolate(mask, scale_factor=2.0, mode="nearest"))
        f, mask = self.stage3(f + enc.skip3, mask)
        f = F.interpolate(f, scale_factor=2.0, mode="nearest")
        f, mask = self.up4(f, F.interpolate(_require_mask(mask), scale_factor=2.0, mode="nearest"))
        x64, _ = self.stage4(f + enc.skip2, mask)

        rgb = self.to_rgb0(x64, style)
        seg = self.to_seg0(x64)
        half, rgb, seg = self.dec_half(x64, enc.skip1, rgb, seg, style)
        full, rgb, seg = self.dec_full(half, enc.skip0, rgb, seg, style)
        if self.tanh_rgb:
            rgb = torch.tanh(rgb)
        m = keep_mask.to(rgb.dtype)
        composite = rgb * (1.0 - m) + x * m
        return SABRGeneratorOutput(rgb=rgb, seg=seg, composite=composite, features=full, features_half=half)

    def perceptual_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Φ of §6: the H/4 conv features and the maps after L0, L1 and L2, computed with an all-ones mask.

        Args:
            x: ``[B, in_channels, H, W]`` image in [−1, 1].

        Returns:
            ``[conv [B, C, H/4, W/4], L0 [B, C, H/4, W/4], L1 [B, C, H/8, W/8], L2 [B, C, H/16, W/16]]``.
        """
        self.check_input(x)
        ones = x.new_ones(x.shape[0], 1, x.shape[2], x.shape[3])
        enc = self.encode(x, ones)
        return [enc.conv64, enc.skip2, enc.skip3, enc.bottleneck]


# ---------------------------------------------------------------------------------------------------- §8
class BoundaryHeads(nn.Module):
    """SegFix-style boundary and direction heads (sabrnet.md §8) on ``F_b = cat[F_dec, up×2(F_half)]``.

    Boundary head: 1×1 conv 2C→``hidden``, BN, ReLU, 1×1 conv → ``n_boundary`` (2); direction head: the same with
    ``n_directions`` (8) outputs. ``F_half`` is up-sampled bilinearly to the size of ``F_dec``.

    Args:
        in_channels: channels of ``F_b`` (2C).
        hidden: hidden channels (128).
        n_boundary: boundary classes.
        n_directions: direction classes.

    Examples::

        heads = BoundaryHeads(32)
        b, d = heads(torch.randn(1, 16, 64, 64), torch.randn(1, 16, 32, 32))  # [1, 2, 64, 64], [1, 8, 64, 64]
    """

    def __init__(self, in_channels: int, hidden: int = 128, n_boundary: int = 2, n_directions: int = 8) -> None:
        super().__init__()
        _check_positive("BoundaryHeads", in_channels=in_channels, hidden=hidden, n_boundary=n_boundary,
                        n_directions=n_directions)  # fmt: skip
        self.in_channels = int(in_channels)

        def head(n_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, n_out, 1),
            )

        self.boundary = head(n_boundary)
        self.direction = head(n_directions)

    def forward(self, features: torch.Tensor, features_half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(boundary logits [B, 2, H, W], direction logits [B, 8, H, W])`` from F_dec and the H/2 feature."""
        up = F.interpolate(features_half, size=features.shape[2:], mode="bilinear", align_corners=False)
        fb = torch.cat([features, up], dim=1)
        if fb.shape[1] != self.in_channels:
            raise DataError("input", f"BoundaryHeads expects {self.in_channels} channels in total, got {fb.shape[1]}")
        return self.boundary(fb), self.direction(fb)


class SABRNetOutput(NamedTuple):
    """Outputs of :class:`SABRNet`.

    Attributes:
        seg: segmentation logits ``[B, n_classes, H, W]``.
        boundary: boundary logits ``[B, 2, H, W]`` (``None`` without heads).
        direction: direction logits ``[B, 8, H, W]`` (``None`` without heads).
        rgb: the generator's image output ``[B, in_channels, H, W]``.

    ``shape`` and ``dtype`` are those of ``seg``, so that MONAI's ``verify_net_in_out`` checks the segmentation output
    against the metadata's ``pred``.
    """

    seg: torch.Tensor
    boundary: torch.Tensor | None
    direction: torch.Tensor | None
    rgb: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """The shape of ``seg``, the segmentation output (what MONAI's ``verify_net_in_out`` reads)."""
        return self.seg.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of ``seg``."""
        return self.seg.dtype


class SABRNet(nn.Module):
    """SABR-Net: the generator with boundary heads (sabrnet.md §8); the bundle's ``network_def``.

    State-dict keys are ``generator.*`` and ``heads.*``, so stage-1/2 generator checkpoints load into
    ``net.generator`` strictly.

    Args:
        generator: the :class:`SABRGenerator`.
        heads: boundary heads; ``None`` builds them with ``2 · generator.dim`` input channels (unless
            ``with_heads=False``).
        with_heads: ``False`` builds no heads (``boundary`` and ``direction`` outputs are ``None``).

    Examples::

        net = build_sabrnet("tiny", image_size=64).eval()
        out = net(torch.rand(1, 3, 64, 64) * 2 - 1)  # all-ones keep-mask
    """

    def __init__(self, generator: SABRGenerator, heads: BoundaryHeads | None = None, with_heads: bool = True) -> None:
        super().__init__()
        self.generator = generator
        if heads is None and with_heads:
            heads = BoundaryHeads(2 * generator.dim)
        self.heads = heads

    def export_module(self) -> SABRSegmenter:
        """The segmentation network image → ``seg`` logits (:class:`SABRSegmenter`, shared generator) for TorchScript
        and ONNX."""
        return SABRSegmenter(self).train(self.training)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(net)`` (MONAI's ``ckpt_export``) scripts :meth:`export_module`: image → ``seg``."""
        return self.export_module()

    def forward(self, x: torch.Tensor, keep_mask: torch.Tensor | None = None) -> SABRNetOutput:
        """Segment ``x``.

        Args:
            x: ``[B, in_channels, H, W]`` in [−1, 1].
            keep_mask: ``[B, 1, H, W]`` or ``None`` (all ones, §3.3).

        Returns:
            :class:`SABRNetOutput`.
        """
        if keep_mask is None:
            self.generator.check_input(x)
            keep_mask = x.new_ones(x.shape[0], 1, x.shape[2], x.shape[3])
        out = self.generator(x, keep_mask)
        if self.heads is None:
            return SABRNetOutput(seg=out.seg, boundary=None, direction=None, rgb=out.rgb)
        boundary, direction = self.heads(out.features, out.features_half)
        return SABRNetOutput(seg=out.seg, boundary=boundary, direction=direction, rgb=out.rgb)


class SABRSegmenter(nn.Module):
    """The segmentation network of a :class:`SABRNet` for export: image → ``seg`` logits, all-ones keep-mask.

    Runs the (shared) generator exactly as ``SABRNet.forward(x).seg``; the boundary and direction heads of the
    refinement stage (SegFix offsets, applied in post-processing) are not part of it. TorchScript-compatible (MONAI's
    ``ckpt_export`` of the network scripts it) and traceable to ONNX at a fixed input size (the windows and paddings
    of the transformer stages depend on it).

    Args:
        net: the SABR-Net.

    Examples::

        seg = torch.jit.script(SABRSegmenter(net.eval()))(torch.rand(1, 3, 128, 128) * 2 - 1)  # [1, 2, 128, 128]
    """

    def __init__(self, net: SABRNet) -> None:
        super().__init__()
        self.generator = net.generator
        self.in_channels = int(net.generator.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` in [−1, 1] (H, W multiples of 16) → ``[B, n_classes, H, W]`` logits.

        Raises:
            ValueError: wrong rank, channels or sizes (TorchScript).
        """
        if not torch.jit.is_tracing():
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(
                    "SABR-Net expects [B, " + str(self.in_channels) + ", H, W] images, got " + str(x.shape)
                )
            if x.shape[2] % 16 != 0 or x.shape[3] % 16 != 0 or x.shape[2] < 16 or x.shape[3] < 16:
                raise ValueError("SABR-Net needs H and W to be multiples of 16, got " + str(x.shape))
        keep = torch.ones(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        return self.generator(x, keep).seg


# ---------------------------------------------------------------------------------------------------- §5
class _DiscBlock(nn.Module):
    """Residual down-sampling block: ``(conv3×3, lrelu, conv3×3 s2, lrelu) + conv1×1(avgpool)`` divided by √2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _lrelu(self.conv1(_lrelu(self.conv0(x))))
        s = self.skip(F.avg_pool2d(x, 2, ceil_mode=True))
        return (y + s) * (1.0 / math.sqrt(2.0))


class ImageDiscriminator(nn.Module):
    """Residual image discriminator D_img (sabrnet.md §5; StyleGAN2-like, own implementation).

    1×1 conv ``in_channels → channels[0]`` at full size, residual down-sampling blocks (halving the size, rounding up)
    until the map is at most 4 pixels per side, minibatch standard deviation (one extra channel), conv3×3, FC
    ``c·h·w → c``, FC ``c → 1``. Default channels: ``min(channel_base / side, channel_max)`` per resolution
    (reference: 128, 256, 512, 512, 512, 512, 512 at 256 px, FC 8192 → 512).

    Args:
        in_channels: image channels.
        img_size: input side (int) or ``(H, W)``; inputs must have this size.
        channels: explicit channels per resolution (one more entry than down-sampling blocks).
        channel_base: see above.
        channel_max: see above.
        mbstd_group: group size of the minibatch standard deviation.
        spatial_dims: must be 2.

    Examples::

        d = ImageDiscriminator(3, 64, channel_base=256, channel_max=16)
        d(torch.randn(2, 3, 64, 64)).shape  # [2, 1]
    """

    def __init__(
        self,
        in_channels: int = 3,
        img_size: int | Sequence[int] = 256,
        channels: Sequence[int] | None = None,
        channel_base: int = 32768,
        channel_max: int = 512,
        mbstd_group: int = 4,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims, "ImageDiscriminator")
        size = (int(img_size), int(img_size)) if isinstance(img_size, (int, float)) else tuple(int(s) for s in img_size)
        if len(size) != 2 or min(size) < 4:
            raise ConfigError(f"ImageDiscriminator: img_size must be at least 4 (or an (H, W) pair), got {img_size}")
        _check_positive("ImageDiscriminator", in_channels=in_channels, channel_base=channel_base,
                        channel_max=channel_max, mbstd_group=mbstd_group)  # fmt: skip
        sides = [size]
        while max(sides[-1]) > 4:
            h, w = sides[-1]
            sides.append((math.ceil(h / 2), math.ceil(w / 2)))
        if channels is None:
            channels = [max(1, min(channel_base // max(s), channel_max)) for s in sides]
        channels = [int(c) for c in channels]
        if len(channels) != len(sides) or min(channels) < 1:
            raise ConfigError(
                f"ImageDiscriminator: {len(sides)} positive channel values needed for img_size {size}, got {channels}"
            )
        self.img_size = size
        self.in_channels = int(in_channels)
        self.mbstd_group = int(mbstd_group)
        self.from_rgb = nn.Conv2d(in_channels, channels[0], 1)
        self.blocks = nn.ModuleList(_DiscBlock(channels[i], channels[i + 1]) for i in range(len(sides) - 1))
        c = channels[-1]
        fh, fw = sides[-1]
        self.conv = nn.Conv2d(c + 1, c, 3, padding=1)
        self.fc = nn.Linear(c * fh * fw, c)
        self.out = nn.Linear(c, 1)

    def _minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        g = next(k for k in range(min(self.mbstd_group, b), 0, -1) if b % k == 0)
        y = x.float().reshape(g, b // g, *x.shape[1:])
        std = torch.sqrt(y.var(dim=0, correction=0) + 1e-8).mean(dim=(1, 2, 3)).to(x.dtype)  # [b // g]
        std = std.reshape(1, -1, 1, 1, 1).expand(g, -1, 1, x.shape[2], x.shape[3]).reshape(b, 1, *x.shape[2:])
        return torch.cat([x, std], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Realness logits ``[B, 1]`` of images ``[B, in_channels, H, W]`` of size ``img_size``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.img_size:
            raise DataError(
                "input", f"ImageDiscriminator expects [B, {self.in_channels}, {self.img_size[0]}, {self.img_size[1]}] "
                f"images, got {tuple(x.shape)}"
            )  # fmt: skip
        f = _lrelu(self.from_rgb(x))
        for blk in self.blocks:
            f = blk(f)
        f = _lrelu(self.conv(self._minibatch_std(f)))
        f = _lrelu(self.fc(f.flatten(1)))
        return self.out(f)


class _PatchDiscriminator(nn.Module):
    """pix2pixHD N-layer PatchGAN returning every layer's output."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int, spectral: bool, norm: bool) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, 4, stride=stride, padding=2)
            return spectral_norm(layer) if spectral else layer

        def norm_layer(c: int) -> nn.Module:
            return nn.InstanceNorm2d(c) if norm else nn.Identity()

        layers: list[nn.Module] = [nn.Sequential(conv(in_channels, ndf, 2), nn.LeakyReLU(_LRELU))]
        c = ndf
        for i in range(1, n_layers):
            c_out = min(ndf * 2**i, 512)
            layers.append(nn.Sequential(conv(c, c_out, 2), norm_layer(c_out), nn.LeakyReLU(_LRELU)))
            c = c_out
        c_out = min(ndf * 2**n_layers, 512)
        layers.append(nn.Sequential(conv(c, c_out, 1), norm_layer(c_out), nn.LeakyReLU(_LRELU)))
        layers.append(conv(c_out, 1, 1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class SegDiscriminator(nn.Module):
    """Segmentation discriminator D_seg (sabrnet.md §5): pix2pixHD multi-scale PatchGAN on ``cat[image, seg]``.

    ``n_scales`` PatchGANs at scales 1, ½, ¼, … (3×3 average pooling, stride 2, between scales). Each: conv4×4 s2 →
    ndf, leaky ReLU; ``n_layers − 1`` × [conv4×4 s2 → ×2 channels, instance norm, leaky ReLU]; conv4×4 s1 → ×2,
    instance norm, leaky ReLU; conv4×4 s1 → 1 (the logit map); spectral norm on every conv; padding 2.

    Args:
        in_channels: ``3 + n_classes``.
        ndf: channels of the first layer (64).
        n_layers: stride-2 layers (3).
        n_scales: number of discriminators (3).
        spectral: spectral normalisation of the convs.
        norm: instance normalisation of the inner layers.
        spatial_dims: must be 2.

    Examples::

        d = SegDiscriminator(5, ndf=8)
        out = d(torch.randn(1, 5, 64, 64))  # 3 scales × 5 feature maps; out[s][-1] is the logit map
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        n_scales: int = 3,
        spectral: bool = True,
        norm: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims, "SegDiscriminator")
        _check_positive("SegDiscriminator", in_channels=in_channels, ndf=ndf, n_layers=n_layers, n_scales=n_scales)
        self.in_channels = int(in_channels)
        self.n_scales = int(n_scales)
        self.discriminators = nn.ModuleList(
            _PatchDiscriminator(in_channels, ndf, n_layers, spectral, norm) for _ in range(n_scales)
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per scale (full size first) the list of intermediate features; the last entry is the logit map."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise DataError("input", f"SegDiscriminator expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        out = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


# ---------------------------------------------------------------------------------------------------- builders
def _profile(profile: str, table: dict[str, dict], what: str) -> dict:
    if profile not in table:
        raise ConfigError(f"{what}: unknown profile {profile!r}; choose one of {sorted(table)}")
    return dict(table[profile])


def build_sabrnet(
    profile: str = "cpu", n_classes: int = 2, image_size: int = 128, with_heads: bool = True, **overrides
) -> SABRNet:
    """Build a :class:`SABRNet` of a size profile (see :data:`SABRNET_PROFILES`).

    - ``"reference"``: dim 180, heads 6, depths 2-3-4-3-2, windows 8-16-16-16-8, drop-path 0.1, mapping network
      (256 px);
    - ``"cpu"``: dim 32, heads 2, depths 1-1-1-1-1, windows 8 (trains at 128 px on CPU);
    - ``"tiny"``: dim 16, heads 2, depths 1-1-1-1-1, windows 4 (tests at 64 px).

    Args:
        profile: ``"reference"``, ``"cpu"`` or ``"tiny"``.
        n_classes: segmentation classes.
        image_size: training input side (sets the style convs).
        with_heads: attach the boundary heads.
        **overrides: any :class:`SABRGenerator` option (``dim``, ``heads``, ``depths``, ``windows``, ``use_latent``,
            ``in_channels`` …).

    Returns:
        The model.

    Raises:
        ConfigError: unknown profile or invalid options.
    """
    options = _profile(profile, SABRNET_PROFILES, "build_sabrnet")
    options.update(n_classes=n_classes, image_size=image_size)
    valid = set(inspect.signature(SABRGenerator).parameters)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"build_sabrnet: unknown options {unknown}; valid: {sorted(valid)}")
    options.update(overrides)
    return SABRNet(SABRGenerator(**options), with_heads=with_heads)


def build_discriminators(
    profile: str, n_classes: int, image_size: int, in_channels: int = 3
) -> tuple[ImageDiscriminator, SegDiscriminator]:
    """Build D_img and D_seg (sabrnet.md §5) for a profile.

    ``"reference"``: D_img channels ``min(32768 / side, 512)`` (128 … 512 at 256 px), D_seg ndf 64; ``"cpu"``:
    ``min(2048 / side, 64)``, ndf 16; ``"tiny"``: ``min(256 / side, 16)``, ndf 8. D_seg: 3 layers, 3 scales.

    Args:
        profile: ``"reference"``, ``"cpu"`` or ``"tiny"``.
        n_classes: segmentation classes (D_seg input is ``in_channels + n_classes``).
        image_size: training input side.
        in_channels: image channels.

    Returns:
        ``(d_img, d_seg)``.

    Raises:
        ConfigError: unknown profile or invalid sizes.
    """
    p = _profile(profile, _DISC_PROFILES, "build_discriminators")
    _check_positive("build_discriminators", n_classes=n_classes, image_size=image_size)
    d_img = ImageDiscriminator(in_channels, image_size, channel_base=p["channel_base"], channel_max=p["channel_max"])
    d_seg = SegDiscriminator(in_channels + n_classes, ndf=p["ndf"], n_layers=3, n_scales=3)
    return d_img, d_seg
