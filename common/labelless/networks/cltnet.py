# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""CLTNet networks: CAM-guided, mask-gated cycle-translation generator and CAM discriminators (cltnet.md §2, §3).

CLTNet learns lesion segmentation from image-level labels only: an unpaired A (lesion) ↔ B (normal) translation GAN
in the style of U-GAT-IT whose A→B generator predicts a soft mask ``M`` of the pixels it changes. ``M`` gates a
translation branch (inside ``M``) and a reconstruction branch (outside ``M``); ``M`` is the segmentation.

- :class:`LIN` / :class:`AdaLIN`: layer-instance normalisation with a learnable mixing weight ``rho`` (U-GAT-IT's
  ILN / adaILN); :func:`clip_rho_` clamps every ``rho`` to [0, 1] (call it after every generator step, §5).
- :class:`CLTGenerator` (§2): down-sampling encoder → split → CAM → mask → two gated residual branches → image and
  reconstruction decoders. Returns :class:`CLTGeneratorOutput`.
- :class:`CAMDiscriminator` (§3): spectral-normalised patch discriminator with a CAM head; ``n_layers=7`` is the
  "global" and ``n_layers=5`` the "local" discriminator.
- :class:`CLTNet` / :func:`build_cltnet`: the two generators and four discriminators in one module; its ``forward``
  is the A→B generator (inference: lesion image → :class:`CLTGeneratorOutput`, ``.mask`` is the segmentation).

All modules are parameterised by ``spatial_dims`` (2 or 3; 2 is the paper's setting). Every size comes from the
configuration or the input and nothing is created on a fixed device in ``forward`` (the reference's fixed-shape CUDA
constants are not copied, §9.1); its dead code (a second γ/β pair, unused mask layers) is not ported.

Shapes (2D, defaults ``ngf = ndf = 54``, 256×256 input in [−1, 1]):

- generator: ``y``, ``y_comp``, ``x_rec`` ``[B, 3, 256, 256]``; ``cam_logit`` ``[B, 2]``; ``heatmap``
  ``[B, 1, 64, 64]``; ``mask`` ``[B, 1, 256, 256]`` in [0, 1].
- global discriminator: ``[B, 1, 6, 6]``; local: ``[B, 1, 30, 30]``; ``cam_logit`` ``[B, 2]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from labelless.errors import ConfigError, DataError

__all__ = [
    "LIN",
    "AdaLIN",
    "clip_rho_",
    "CLTGeneratorOutput",
    "CLTGenerator",
    "CLTMaskHead",
    "CLTGeneratorEnsemble",
    "CAMDiscriminator",
    "CLTNet",
    "build_cltnet",
]

#: number of stride-2 convolutions of the generator (its input sizes must be multiples of 2 ** this)
_GEN_DOWNSAMPLING = 2
_REFLECTION_PADS: dict[int, type[nn.Module]] = {2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d}
_INTERP_MODES = {2: "bilinear", 3: "trilinear"}


# ---------------------------------------------------------------------------------------------------- helpers
def _check_spatial_dims(spatial_dims: int) -> int:
    if int(spatial_dims) not in _REFLECTION_PADS:
        raise ConfigError(f"CLTNet supports spatial_dims 2 or 3, got {spatial_dims}")
    return int(spatial_dims)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ConfigError(f"CLTNet: {name} must be a positive integer, got {value}")


def _pad(spatial_dims: int, padding: int) -> nn.Module:
    return _REFLECTION_PADS[spatial_dims](padding)


def _conv(
    spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, bias: bool = False
) -> nn.Module:
    """A convolution without implicit padding (padding is an explicit reflection pad in front of it)."""
    return Conv[Conv.CONV, spatial_dims](in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=0, bias=bias)


def _instance_norm(spatial_dims: int, channels: int) -> nn.Module:
    """Instance norm without affine parameters (MONAI's factory default, as in U-GAT-IT)."""
    return Norm[Norm.INSTANCE, spatial_dims](channels)


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[C]`` or ``[B, C]`` → broadcastable against a ``[B, C, *spatial]`` tensor of ``ndim`` dimensions."""
    if v.dim() == 1:
        v = v.unsqueeze(0)
    return v.reshape(list(v.shape) + [1] * (ndim - 2))


def _instance_layer_mix(x: torch.Tensor, rho: torch.Tensor, eps: float) -> torch.Tensor:
    """``rho · IN(x) + (1 − rho) · LN(x)`` with IN over the spatial axes and LN over (C, spatial); biased variance."""
    in_dims = list(range(2, x.dim()))
    ln_dims = list(range(1, x.dim()))
    in_var, in_mean = torch.var_mean(x, dim=in_dims, correction=0, keepdim=True)
    ln_var, ln_mean = torch.var_mean(x, dim=ln_dims, correction=0, keepdim=True)
    out_in = (x - in_mean) * torch.rsqrt(in_var + eps)
    out_ln = (x - ln_mean) * torch.rsqrt(ln_var + eps)
    r = _per_channel(rho, x.dim())
    return r * out_in + (1.0 - r) * out_ln


def _check_features(x: torch.Tensor, channels: int, what: str) -> None:
    if x.dim() < 3 or x.shape[1] != channels:
        raise DataError("input", f"{what} expects [B, {channels}, *spatial] features, got shape {tuple(x.shape)}")


def _check_image_input(x: torch.Tensor, spatial_dims: int, channels: int, what: str) -> None:
    """Raise a one-line DataError if ``x`` is not ``[B, channels, *spatial]`` with ``spatial_dims`` spatial axes."""
    if not isinstance(x, torch.Tensor) or x.dim() != spatial_dims + 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError("input", f"{what} expects a [B, C, {', '.join(['...'] * spatial_dims)}] tensor, got {shape}")
    if x.shape[1] != channels:
        raise DataError("input", f"{what} expects {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")


# ---------------------------------------------------------------------------------------------------- norms
class LIN(nn.Module):
    """Layer-instance normalisation with learnable ``rho``, ``gamma``, ``beta`` (U-GAT-IT's ILN; cltnet.md §2).

    ``LIN(x) = gamma · (rho · IN(x) + (1 − rho) · LN(x)) + beta`` with IN over the spatial axes and LN over
    (C, spatial), both with the biased variance. ``rho`` starts at 0 (pure layer norm), ``gamma`` at 1, ``beta``
    at 0; all three are per-channel vectors ``[C]``. Works for any number of spatial dimensions.

    Args:
        num_features: channels C.
        eps: added to the variances.

    Examples::

        norm = LIN(64)
        y = norm(torch.randn(2, 64, 32, 32))
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        _check_positive(num_features=num_features)
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.rho = nn.Parameter(torch.zeros(self.num_features))
        self.gamma = nn.Parameter(torch.ones(self.num_features))
        self.beta = nn.Parameter(torch.zeros(self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x``.

        Args:
            x: ``[B, C, *spatial]``.

        Returns:
            Tensor of the shape of ``x``.
        """
        if not torch.jit.is_scripting():
            _check_features(x, self.num_features, "LIN")
        out = _instance_layer_mix(x, self.rho, self.eps)
        return out * _per_channel(self.gamma, x.dim()) + _per_channel(self.beta, x.dim())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class AdaLIN(nn.Module):
    """Adaptive layer-instance normalisation: :class:`LIN` whose ``gamma`` and ``beta`` are given per sample.

    ``AdaLIN(x; gamma, beta) = gamma · (rho · IN(x) + (1 − rho) · LN(x)) + beta`` with ``gamma``, ``beta`` of shape
    ``[B, C]`` (computed from the image by the generator's MLP). ``rho`` ``[C]`` is learnable and starts at 0.9.

    Args:
        num_features: channels C.
        eps: added to the variances.

    Examples::

        norm = AdaLIN(64)
        y = norm(torch.randn(2, 64, 32, 32), torch.ones(2, 64), torch.zeros(2, 64))
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        _check_positive(num_features=num_features)
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.rho = nn.Parameter(torch.full((self.num_features,), 0.9))

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` with per-sample affine parameters.

        Args:
            x: ``[B, C, *spatial]``.
            gamma: ``[B, C]`` scale.
            beta: ``[B, C]`` shift.

        Returns:
            Tensor of the shape of ``x``.
        """
        if not torch.jit.is_scripting():
            _check_features(x, self.num_features, "AdaLIN")
            expected = (x.shape[0], self.num_features)
            for name, t in (("gamma", gamma), ("beta", beta)):
                if tuple(t.shape) != expected:
                    raise DataError("input", f"AdaLIN {name} must have shape {expected}, got {tuple(t.shape)}")
        out = _instance_layer_mix(x, self.rho, self.eps)
        return out * _per_channel(gamma, x.dim()) + _per_channel(beta, x.dim())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def clip_rho_(module: nn.Module, min_value: float = 0.0, max_value: float = 1.0) -> int:
    """Clamp, in place, the ``rho`` of every :class:`LIN` and :class:`AdaLIN` inside ``module`` (§2, §5).

    The trainer calls this after every generator step so that ``rho`` stays a convex mixing weight.

    Args:
        module: any module (searched recursively, ``module`` itself included).
        min_value: lower bound.
        max_value: upper bound.

    Returns:
        The number of ``rho`` tensors clamped.

    Examples::

        g_optimizer.step()
        clip_rho_(net.gen_ab)
        clip_rho_(net.gen_ba)
    """
    if min_value > max_value:
        raise ConfigError(f"clip_rho_: min_value {min_value} is above max_value {max_value}")
    n = 0
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (LIN, AdaLIN)):
                m.rho.clamp_(min_value, max_value)
                n += 1
    return n


# ---------------------------------------------------------------------------------------------------- blocks
class _ResBlock(nn.Module):
    """``x + [pad1, conv3×3, IN, ReLU, pad1, conv3×3, IN](x)`` (encoder bottleneck)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _pad(spatial_dims, 1),
            _conv(spatial_dims, channels, channels, 3),
            _instance_norm(spatial_dims, channels),
            nn.ReLU(inplace=True),
            _pad(spatial_dims, 1),
            _conv(spatial_dims, channels, channels, 3),
            _instance_norm(spatial_dims, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _LINResBlock(nn.Module):
    """``x + [pad1, conv3×3, LIN, ReLU, pad1, conv3×3, LIN](x)`` (reconstruction branch)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _pad(spatial_dims, 1),
            _conv(spatial_dims, channels, channels, 3),
            LIN(channels),
            nn.ReLU(inplace=True),
            _pad(spatial_dims, 1),
            _conv(spatial_dims, channels, channels, 3),
            LIN(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _AdaLINResBlock(nn.Module):
    """``x + [pad1, conv3×3, AdaLIN, ReLU, pad1, conv3×3, AdaLIN](x)`` (transfer branch)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.pad1 = _pad(spatial_dims, 1)
        self.conv1 = _conv(spatial_dims, channels, channels, 3)
        self.norm1 = AdaLIN(channels)
        self.pad2 = _pad(spatial_dims, 1)
        self.conv2 = _conv(spatial_dims, channels, channels, 3)
        self.norm2 = AdaLIN(channels)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        out = self.norm2(self.conv2(self.pad2(out)), gamma, beta)
        return x + out


def _decoder(spatial_dims: int, in_ch: int, out_ch: int, n_up: int, final_kernel: int) -> nn.Sequential:
    """``n_up × [upsample ×2 nearest, pad1, conv3×3 (C→C/2), LIN, ReLU]``, then ``pad, conv k×k → out_ch, tanh``."""
    layers: list[nn.Module] = []
    ch = in_ch
    for _ in range(n_up):
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),
            _pad(spatial_dims, 1),
            _conv(spatial_dims, ch, ch // 2, 3),
            LIN(ch // 2),
            nn.ReLU(inplace=True),
        ]
        ch //= 2
    layers += [_pad(spatial_dims, final_kernel // 2), _conv(spatial_dims, ch, out_ch, final_kernel), nn.Tanh()]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------------- §2 generator
class CLTGeneratorOutput(NamedTuple):
    """Outputs of :class:`CLTGenerator` (cltnet.md §2), in the reference's order.

    Attributes:
        y: translated image ``[B, out_channels, *spatial]`` in [−1, 1] (decoded from the fused features).
        cam_logit: generator CAM logits ``[B, 2]`` (GAP, GMP) — "is this the source domain".
        heatmap: channel sum of the CAM features ``[B, 1, *spatial / 4]`` (visualisation only).
        mask: the soft mask ``M`` upsampled to the input size, ``[B, 1, *spatial]`` in [0, 1]: the segmentation.
        y_comp: composite ``y · mask + x · (1 − mask)`` ``[B, out_channels, *spatial]``.
        x_rec: reconstruction of the input from the complementary branch, ``[B, out_channels, *spatial]`` in [−1, 1].

    ``shape`` and ``dtype`` are those of ``mask``, the segmentation output, so that MONAI's ``verify_net_in_out``
    checks it against the metadata's ``pred``.
    """

    y: torch.Tensor
    cam_logit: torch.Tensor
    heatmap: torch.Tensor
    mask: torch.Tensor
    y_comp: torch.Tensor
    x_rec: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """The shape of ``mask``, the segmentation output (what MONAI's ``verify_net_in_out`` reads)."""
        return self.mask.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of ``mask``."""
        return self.mask.dtype


class CLTGenerator(nn.Module):
    """CLTNet generator (cltnet.md §2): CAM attention, soft mask, mask-gated transfer/reconstruction branches.

    With ``C = 4 · ngf`` bottleneck channels and input ``x`` ``[B, in_channels, *S]`` (each size of ``S`` a multiple
    of 4, at least 8)::

        F0 = encoder(x)                              # 7×7 conv, 2 stride-2 convs (IN, ReLU), n_res_blocks res blocks
        F  = split(F0)                               # 2 × (conv1×1, LIN, ReLU)
        cam_logit = [w_gap · GAP(F), w_gmp · GMP(F)] # bias-free C→1 linear layers
        Fc = ReLU(conv1×1(cat[F · w_gap, F · w_gmp]))
        heatmap = Σ_c Fc
        M  = sigmoid(conv3×3(reflect-pad1(Fc)))      # [B, 1, *S/4]
        γ, β = FC(MLP(GAP(Fc)))                      # light variant, [B, C] each
        Z_0 = Fc, R_0 = F0; for i = 1..n_res_blocks:
            T_i = AdaLINBlock_i(Z_{i−1}; γ, β);  R_i = LINBlock_i(R_{i−1});  Z_i = T_i · M + R_i · (1 − M)
        y = image_decoder(Z_n)                       # final reflect-pad1, conv3×3, tanh
        x_rec = recon_decoder(R_n)                   # final reflect-pad3, conv7×7, tanh
        mask = interpolate(M, size=S, (bi|tri)linear, align_corners=True)
        y_comp = y · mask + x · (1 − mask)

    Bias flags follow the reference (bias only on the CAM 1×1 convolution). Only the "light" variant (γ, β from the
    globally pooled CAM features) is implemented.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        out_channels: output image channels (must equal ``in_channels`` because of the composite ``y_comp``).
        ngf: channels of the first convolution (bottleneck channels ``4 · ngf``).
        n_res_blocks: residual blocks of the encoder bottleneck and of each of the two gated branches.
        light: must be ``True`` (the non-light variant is not implemented).

    Raises:
        ConfigError: invalid sizes, ``out_channels != in_channels``, or ``light=False``.

    Export: ``torch.jit.script(gen)`` scripts :meth:`export_module`, the mask head image → M
    (:class:`CLTMaskHead`); the translation branches are not exported.

    Examples::

        gen = CLTGenerator(spatial_dims=2, in_channels=3, out_channels=3, ngf=54, n_res_blocks=4)
        out = gen(torch.rand(1, 3, 256, 256) * 2 - 1)
        out.mask.shape  # torch.Size([1, 1, 256, 256])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 54,
        n_res_blocks: int = 4,
        light: bool = True,
    ) -> None:
        super().__init__()
        sd = _check_spatial_dims(spatial_dims)
        _check_positive(in_channels=in_channels, out_channels=out_channels, ngf=ngf, n_res_blocks=n_res_blocks)
        if int(out_channels) != int(in_channels):
            raise ConfigError(
                f"CLTGenerator: out_channels ({out_channels}) must equal in_channels ({in_channels}): the composite "
                "y_comp mixes the output with the input"
            )
        if not light:
            raise ConfigError(
                "CLTGenerator: only the light variant (light=True, AdaLIN parameters from the pooled CAM features) "
                "is implemented"
            )
        self.spatial_dims = sd
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.ngf = int(ngf)
        self.n_res_blocks = int(n_res_blocks)
        self.light = True
        ch = self.ngf * 2**_GEN_DOWNSAMPLING
        self.bottleneck_channels = ch

        down: list[nn.Module] = [
            _pad(sd, 3),
            _conv(sd, self.in_channels, self.ngf, 7),
            _instance_norm(sd, self.ngf),
            nn.ReLU(inplace=True),
        ]
        for i in range(_GEN_DOWNSAMPLING):
            c = self.ngf * 2**i
            down += [_pad(sd, 1), _conv(sd, c, 2 * c, 3, stride=2), _instance_norm(sd, 2 * c), nn.ReLU(inplace=True)]
        down += [_ResBlock(sd, ch) for _ in range(self.n_res_blocks)]
        self.encoder = nn.Sequential(*down)

        self.split = nn.Sequential(
            _conv(sd, ch, ch, 1),
            LIN(ch),
            nn.ReLU(inplace=True),
            _conv(sd, ch, ch, 1),
            LIN(ch),
            nn.ReLU(inplace=True),
        )

        # CAM (bias-free C→1 logits whose weights re-weight the channels)
        self.gap_fc = nn.Linear(ch, 1, bias=False)
        self.gmp_fc = nn.Linear(ch, 1, bias=False)
        self.cam_conv = _conv(sd, 2 * ch, ch, 1, bias=True)

        # soft mask M
        self.mask_head = nn.Sequential(_pad(sd, 1), _conv(sd, ch, 1, 3))

        # AdaLIN parameters (light): MLP on GAP(Fc)
        self.mlp = nn.Sequential(
            nn.Linear(ch, ch, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(ch, ch, bias=False),
            nn.ReLU(inplace=True),
        )
        self.gamma_fc = nn.Linear(ch, ch, bias=False)
        self.beta_fc = nn.Linear(ch, ch, bias=False)

        self.transfer_blocks = nn.ModuleList(_AdaLINResBlock(sd, ch) for _ in range(self.n_res_blocks))
        self.recon_blocks = nn.ModuleList(_LINResBlock(sd, ch) for _ in range(self.n_res_blocks))

        self.image_decoder = _decoder(sd, ch, self.out_channels, _GEN_DOWNSAMPLING, final_kernel=3)
        self.recon_decoder = _decoder(sd, ch, self.out_channels, _GEN_DOWNSAMPLING, final_kernel=7)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line :class:`~labelless.errors.DataError` when ``x`` cannot be processed.

        Args:
            x: candidate input.

        Raises:
            DataError: wrong number of dimensions or channels, or spatial sizes not multiples of 4 (or below 8).
        """
        _check_image_input(x, self.spatial_dims, self.in_channels, "CLTGenerator")
        factor = 2**_GEN_DOWNSAMPLING
        spatial = tuple(x.shape[2:])
        if any(s % factor or s < 2 * factor for s in spatial):
            raise DataError(
                "input",
                f"CLTGenerator needs spatial sizes that are multiples of {factor} and at least {2 * factor}, "
                f"got {spatial} (resize or crop, e.g. to 256)",
            )

    def export_module(self) -> CLTMaskHead:
        """The mask head image → M (:class:`CLTMaskHead`, shared layers) for TorchScript and ONNX."""
        return CLTMaskHead(self).train(self.training)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(generator)`` (MONAI's ``ckpt_export``) scripts :meth:`export_module`: image → M."""
        return self.export_module()

    def cam(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CAM attention on the split features.

        Args:
            f: ``[B, C, *S']`` split features ``F``.

        Returns:
            ``(cam_logit [B, 2], Fc [B, C, *S'])``.
        """
        flat = f.flatten(2)
        w_gap, w_gmp = self.gap_fc.weight, self.gmp_fc.weight  # [1, C]
        gap_logit = F.linear(flat.mean(-1), w_gap)
        gmp_logit = F.linear(flat.amax(-1), w_gmp)
        f_gap = f * _per_channel(w_gap[0], f.dim())
        f_gmp = f * _per_channel(w_gmp[0], f.dim())
        fc = F.relu(self.cam_conv(torch.cat([f_gap, f_gmp], dim=1)))
        return torch.cat([gap_logit, gmp_logit], dim=1), fc

    def forward(self, x: torch.Tensor) -> CLTGeneratorOutput:
        """Translate ``x`` and predict its mask.

        Args:
            x: ``[B, in_channels, *S]`` image in [−1, 1]; every size of ``S`` a multiple of 4 and at least 8.

        Returns:
            :class:`CLTGeneratorOutput`.

        Raises:
            DataError: see :meth:`check_input`.
        """
        self.check_input(x)
        f0 = self.encoder(x)
        f = self.split(f0)
        cam_logit, fc = self.cam(f)
        heatmap = fc.sum(dim=1, keepdim=True)
        m = torch.sigmoid(self.mask_head(fc))

        h = self.mlp(fc.flatten(2).mean(-1))
        gamma, beta = self.gamma_fc(h), self.beta_fc(h)

        z, r = fc, f0
        for t_block, r_block in zip(self.transfer_blocks, self.recon_blocks):
            t = t_block(z, gamma, beta)
            r = r_block(r)
            z = t * m + r * (1.0 - m)

        y = self.image_decoder(z)
        x_rec = self.recon_decoder(r)
        mask = F.interpolate(m, size=x.shape[2:], mode=_INTERP_MODES[self.spatial_dims], align_corners=True)
        y_comp = y * mask + x * (1.0 - mask)
        return CLTGeneratorOutput(y=y, cam_logit=cam_logit, heatmap=heatmap, mask=mask, y_comp=y_comp, x_rec=x_rec)


class CLTMaskHead(nn.Module):
    """The segmentation part of a :class:`CLTGenerator`: image → soft mask M (what inference uses), for export.

    Encoder, split, CAM and mask convolution of the generator (shared, not copied), so the state dict has the
    generator's keys of these layers; ``forward(x)`` equals ``generator(x).mask``. TorchScript-compatible (MONAI's
    ``ckpt_export`` of the generator scripts it) and traceable to ONNX.

    Args:
        generator: the A→B generator.

    Examples::

        mask = torch.jit.script(CLTMaskHead(gen))(torch.rand(1, 3, 128, 128) * 2 - 1)  # [1, 1, 128, 128] in [0, 1]
    """

    def __init__(self, generator: CLTGenerator) -> None:
        super().__init__()
        self.spatial_dims = int(generator.spatial_dims)
        self.in_channels = int(generator.in_channels)
        self.mode = _INTERP_MODES[self.spatial_dims]
        self.encoder = generator.encoder
        self.split = generator.split
        self.gap_fc = generator.gap_fc
        self.gmp_fc = generator.gmp_fc
        self.cam_conv = generator.cam_conv
        self.mask_head = generator.mask_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, *S]`` in [−1, 1] (sizes multiples of 4, at least 8) → ``[B, 1, *S]`` in [0, 1].

        Raises:
            ValueError: wrong rank, channels or sizes (TorchScript).
        """
        if not torch.jit.is_tracing():
            if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
                raise ValueError(
                    "CLTGenerator expects [B, " + str(self.in_channels) + ", ...] images, got shape " + str(x.shape)
                )
            for v in x.shape[2:]:
                if v % 4 != 0 or v < 8:
                    raise ValueError(
                        "CLTGenerator needs sizes that are multiples of 4 and at least 8, got " + str(x.shape)
                    )
        f = self.split(self.encoder(x))
        w_gap, w_gmp = self.gap_fc.weight, self.gmp_fc.weight
        fc = F.relu(
            self.cam_conv(torch.cat([f * _per_channel(w_gap[0], f.dim()), f * _per_channel(w_gmp[0], f.dim())], dim=1))
        )
        m = torch.sigmoid(self.mask_head(fc))
        return F.interpolate(m, size=x.shape[2:], mode=self.mode, align_corners=True)


class CLTGeneratorEnsemble(nn.Module):
    """The mean of several A→B generators' outputs (not in the spec): an ensemble of independently trained models
    (e.g. training seeds), whose ``.mask`` is the mean of their soft masks M.

    Weights of different training runs cannot be averaged (their units are not aligned), their outputs can. Every
    field of :class:`CLTGeneratorOutput` is the members' mean, so the ensemble is used wherever a generator is (the
    weak workflow's :func:`~labelless.weak.workflow.soft_mask`). Not exportable to TorchScript (export a member).

    Args:
        generators: the members (at least one), each a :class:`CLTGenerator` with the same input channels.

    Raises:
        ConfigError: no member, a member that is not a :class:`CLTGenerator`, or members with different
            ``spatial_dims`` / ``in_channels``.

    Examples::

        ens = CLTGeneratorEnsemble([gen_seed0, gen_seed1])
        ens(torch.rand(1, 3, 64, 64) * 2 - 1).mask  # the mean of the two gates, [1, 1, 64, 64]
    """

    def __init__(self, generators: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(generators)
        if not members:
            raise ConfigError("CLTGeneratorEnsemble needs at least one generator")
        bad = [type(g).__name__ for g in members if not isinstance(g, CLTGenerator)]
        if bad:
            raise ConfigError(f"CLTGeneratorEnsemble members must be CLTGenerator modules, got {bad}")
        kinds = {(g.spatial_dims, g.in_channels) for g in members}
        if len(kinds) > 1:
            raise ConfigError(f"CLTGeneratorEnsemble members differ in (spatial_dims, in_channels): {sorted(kinds)}")
        self.members = nn.ModuleList(members)
        self.spatial_dims, self.in_channels = next(iter(kinds))

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> CLTGeneratorOutput:
        """The members' mean outputs for ``x`` ``[B, in_channels, *S]`` in [−1, 1] (``.mask``: the mean gate)."""
        outs = [g(x) for g in self.members]
        if len(outs) == 1:
            return outs[0]
        return CLTGeneratorOutput(*(torch.stack(field).mean(0) for field in zip(*outs)))


# ---------------------------------------------------------------------------------------------------- §3 discriminator
class CAMDiscriminator(nn.Module):
    """CLTNet / U-GAT-IT discriminator with a CAM head (cltnet.md §3); spectral norm on every conv and linear layer.

    Layers: ``n_layers − 2`` × [reflect-pad 1, conv4×4 stride 2, LeakyReLU 0.2] (channels ``in → ndf → 2·ndf → …``),
    one [reflect-pad 1, conv4×4 stride 1] layer doubling the channels to ``C = ndf · 2^(n_layers−2)``, then the CAM
    head: bias-free linear GAP/GMP logits (C→1) whose weights re-weight the channels, concat, conv1×1 2C→C,
    LeakyReLU 0.2, reflect-pad 1 and a bias-free conv4×4 stride 1 C→1 for the patch logits.

    Output size per axis for input size ``s``: ``floor(s / 2^(n_layers−2)) − 2``; at 256: 6 for ``n_layers=7``
    ("global"), 30 for ``n_layers=5`` ("local").

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        ndf: channels of the first convolution.
        n_layers: 7 (global) or 5 (local) in the paper; any value ≥ 3.

    Raises:
        ConfigError: invalid sizes.

    Examples::

        d = CAMDiscriminator(spatial_dims=2, in_channels=3, ndf=54, n_layers=5)
        logits, cam_logit, heatmap = d(torch.randn(1, 3, 256, 256))  # [1, 1, 30, 30], [1, 2], [1, 1, 31, 31]
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, ndf: int = 54, n_layers: int = 7) -> None:
        super().__init__()
        sd = _check_spatial_dims(spatial_dims)
        _check_positive(in_channels=in_channels, ndf=ndf)
        if int(n_layers) < 3:
            raise ConfigError(f"CAMDiscriminator: n_layers must be at least 3, got {n_layers}")
        self.spatial_dims = sd
        self.in_channels = int(in_channels)
        self.ndf = int(ndf)
        self.n_layers = int(n_layers)
        self.n_strided = self.n_layers - 2

        layers: list[nn.Module] = []
        c_in = self.in_channels
        for i in range(self.n_strided):
            c_out = self.ndf * 2**i
            layers += [
                _pad(sd, 1),
                spectral_norm(_conv(sd, c_in, c_out, 4, stride=2, bias=True)),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in = c_out
        ch = 2 * c_in
        layers += [_pad(sd, 1), spectral_norm(_conv(sd, c_in, ch, 4, stride=1, bias=True)), nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)
        self.cam_channels = ch

        self.gap_fc = spectral_norm(nn.Linear(ch, 1, bias=False))
        self.gmp_fc = spectral_norm(nn.Linear(ch, 1, bias=False))
        self.cam_conv = spectral_norm(_conv(sd, 2 * ch, ch, 1, bias=True))
        self.head = nn.Sequential(_pad(sd, 1), spectral_norm(_conv(sd, ch, 1, 4, stride=1, bias=False)))

    @staticmethod
    def min_input_size(n_layers: int) -> int:
        """The smallest input size along each axis a discriminator of ``n_layers`` layers accepts
        (``3 · 2^(n_layers − 2)``: 96 for the global 7-layer one, 24 for the local 5-layer one)."""
        return 3 * 2 ** (int(n_layers) - 2)

    def output_size(self, size: int) -> int:
        """Patch-logit size along one axis for an input of ``size`` along that axis (≤ 0: input too small)."""
        s = int(size)
        for _ in range(self.n_strided):
            if s < 2:
                return 0
            s //= 2
        return s - 2

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line :class:`~labelless.errors.DataError` when ``x`` cannot be processed.

        Args:
            x: candidate input.

        Raises:
            DataError: wrong number of dimensions or channels, or an input too small for ``n_layers``.
        """
        _check_image_input(x, self.spatial_dims, self.in_channels, "CAMDiscriminator")
        spatial = tuple(x.shape[2:])
        if any(self.output_size(s) < 1 for s in spatial):
            raise DataError(
                "input",
                f"CAMDiscriminator(n_layers={self.n_layers}) needs spatial sizes of at least "
                f"{3 * 2**self.n_strided}, got {spatial}",
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score ``x``.

        Args:
            x: ``[B, in_channels, *S]`` image in [−1, 1].

        Returns:
            ``(patch_logits [B, 1, *S_out], cam_logit [B, 2], heatmap [B, 1, *S_out + 1])``.

        Raises:
            DataError: see :meth:`check_input`.
        """
        self.check_input(x)
        feat = self.features(x)
        flat = feat.flatten(2)
        # read each spectral-normalised weight once (each read runs a power iteration in training mode)
        w_gap, w_gmp = self.gap_fc.weight, self.gmp_fc.weight  # [1, C]
        cam_logit = torch.cat([F.linear(flat.mean(-1), w_gap), F.linear(flat.amax(-1), w_gmp)], dim=1)
        f_gap = feat * _per_channel(w_gap[0], feat.dim())
        f_gmp = feat * _per_channel(w_gmp[0], feat.dim())
        feat = F.leaky_relu(self.cam_conv(torch.cat([f_gap, f_gmp], dim=1)), 0.2)
        heatmap = feat.sum(dim=1, keepdim=True)
        return self.head(feat), cam_logit, heatmap


# ---------------------------------------------------------------------------------------------------- the whole model
class CLTNet(nn.Module):
    """The CLTNet model: generators ``gen_ab`` (lesion→normal), ``gen_ba`` and discriminators (cltnet.md §2–§3).

    ``dis_ga`` / ``dis_la`` (global / local) judge domain A, ``dis_gb`` / ``dis_lb`` domain B. ``forward(x)`` is
    ``gen_ab(x)``, so the module can be a bundle's ``network_def``; :meth:`segment` returns only the mask.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (both domains).
        ngf: generator base channels.
        ndf: discriminator base channels.
        n_res_blocks: residual blocks per generator stage.
        n_layers_global: layers of the global discriminators.
        n_layers_local: layers of the local discriminators.

    Examples::

        net = CLTNet(ngf=8, ndf=8)
        mask = net.segment(torch.rand(1, 3, 64, 64) * 2 - 1)  # [1, 1, 64, 64] in [0, 1]
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        ngf: int = 54,
        ndf: int = 54,
        n_res_blocks: int = 4,
        n_layers_global: int = 7,
        n_layers_local: int = 5,
    ) -> None:
        super().__init__()

        def gen() -> CLTGenerator:
            return CLTGenerator(spatial_dims, in_channels, in_channels, ngf, n_res_blocks, light=True)

        def dis(n_layers: int) -> CAMDiscriminator:
            return CAMDiscriminator(spatial_dims, in_channels, ndf, n_layers)

        self.gen_ab = gen()
        self.gen_ba = gen()
        self.dis_ga = dis(n_layers_global)
        self.dis_la = dis(n_layers_local)
        self.dis_gb = dis(n_layers_global)
        self.dis_lb = dis(n_layers_local)

    @property
    def generators(self) -> tuple[CLTGenerator, CLTGenerator]:
        """``(gen_ab, gen_ba)``."""
        return self.gen_ab, self.gen_ba

    @property
    def discriminators(self) -> tuple[CAMDiscriminator, CAMDiscriminator, CAMDiscriminator, CAMDiscriminator]:
        """``(dis_ga, dis_la, dis_gb, dis_lb)``."""
        return self.dis_ga, self.dis_la, self.dis_gb, self.dis_lb

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of both generators (the G optimiser's parameters)."""
        return itertools.chain.from_iterable(g.parameters() for g in self.generators)

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the four discriminators (the D optimiser's parameters)."""
        return itertools.chain.from_iterable(d.parameters() for d in self.discriminators)

    def forward(self, x: torch.Tensor) -> CLTGeneratorOutput:
        """Inference: the A→B generator's outputs for lesion images ``x`` (``.mask`` is the segmentation).

        Args:
            x: ``[B, in_channels, *S]`` in [−1, 1].

        Returns:
            :class:`CLTGeneratorOutput` of ``gen_ab``.
        """
        return self.gen_ab(x)

    def export_module(self) -> CLTMaskHead:
        """The A→B generator's mask head (:meth:`CLTGenerator.export_module`)."""
        return self.gen_ab.export_module()

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(net)`` scripts the A→B generator's mask head (image → M)."""
        return self.export_module()

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The soft lesion mask ``gen_ab(x).mask`` ``[B, 1, *S]`` in [0, 1].

        Args:
            x: ``[B, in_channels, *S]`` in [−1, 1].

        Returns:
            ``[B, 1, *S]``.
        """
        return self.gen_ab(x).mask


def build_cltnet(
    spatial_dims: int = 2,
    in_channels: int = 3,
    ngf: int = 54,
    ndf: int = 54,
    n_res_blocks: int = 4,
    n_layers_global: int = 7,
    n_layers_local: int = 5,
) -> CLTNet:
    """Build a :class:`CLTNet` (defaults: the paper's 2D setting, cltnet.md §2–§3).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        ngf: generator base channels.
        ndf: discriminator base channels.
        n_res_blocks: residual blocks per generator stage.
        n_layers_global: layers of the global discriminators.
        n_layers_local: layers of the local discriminators.

    Returns:
        The model.

    Raises:
        ConfigError: invalid option values.
    """
    return CLTNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        ngf=ngf,
        ndf=ndf,
        n_res_blocks=n_res_blocks,
        n_layers_global=n_layers_global,
        n_layers_local=n_layers_local,
    )
