# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""PSMNet head: prototype splitting (PSM, a reconstruction) and multi-level cross attention (MCAM) (psmnet.md).

Building blocks (each usable on its own; all follow the device and dtype of their inputs):

- :class:`CrossNonLocalBlock` (§2.1): the intended query←guidance attention
  ``Z[:, i] = X[:, i] + W_out(Σ_j f[i, j] V[:, j])`` with ``f[i, j] = <θ(X)_i, φ(Y)_j> / N_y`` (no softmax, as in the
  reference). Four 1×1 convolutions with bias; ``W_out`` is zero-initialised, so the block is the identity at
  initialisation. Because there is no softmax the attention is linear in ``f`` and is evaluated as
  ``(V Kᵀ / N_y) Q`` (a ``C × C`` matrix applied to the query), which equals ``V fᵀ`` exactly in exact arithmetic and
  never materialises the ``N_x × N_y`` affinity.
- :class:`MCAM` (§2): three blocks in sequence with the global, prototype and pixel guidance maps of the support.
- :func:`psm_split` (§3.1, **reconstruction**): the recursive "segmented / unsegmented" splitting of a class mask
  into a depth-first tree of prototypes.
- :class:`PSMNetHead` (§1, §3.3, §4): a drop-in replacement of :class:`~labelless.networks.prototypes.ALPHead` (same
  call signature, so it plugs into :class:`~labelless.networks.fewshot.FewShotSegmentor` and the PAR loss); with
  ``use_psm``, ``use_mcam`` off and ``psm_with_local`` on it computes exactly what ``ALPHead`` computes.
- :func:`build_psmnet_segmentor`.

The PSM algorithm is our reconstruction from the paper's abstract (the public reference model file is truncated);
results obtained with it are not a reproduction of the paper.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.layers import Conv
from torch import nn

from labelless.errors import ConfigError, DataError
from labelless.networks.fewshot import FewShotSegmentor, build_fewshot_segmentor
from labelless.networks.prototypes import (
    FG_MODE_THRESHOLD,
    FG_MODE_WINDOW,
    LOCAL_THRESHOLD,
    SCALE,
    ALPExportHead,
    ALPHead,
    alp_prototype_sets,
    bg_prototypes,
    check_support_mask,
    fg_local_flag,
    fg_prototypes,
    fg_uses_local,
    local_prototypes,
    masked_average_pooling,
    masked_prototype_scores,
    prototype_scores,
    safe_normalize,
    support_masks_on_grid,
    window_prototypes,
)
from labelless.utils import as_bool

__all__ = [
    "CrossNonLocalBlock",
    "MCAM",
    "PSMSplit",
    "psm_split",
    "PSMNetHead",
    "PSMNetExportHead",
    "fixed_psm_split",
    "build_psmnet_segmentor",
]


# ---------------------------------------------------------------------------------------------------- §2 MCAM
class CrossNonLocalBlock(nn.Module):
    """One MCAM block (psmnet.md §2.1): query←guidance non-local attention without softmax.

    ``Q = θ(X)`` ``[C, N_x]``, ``K = φ(Y)``, ``V = g(Y)`` ``[C, N_y]`` (flattened positions);
    ``f[i, j] = <Q[:, i], K[:, j]> / N_y``; ``Z = X + W_out(reshape(V fᵀ))``. X and Y may have different spatial sizes
    (only X's grid is kept). ``W_out``'s weight and bias start at zero: the block is the identity at initialisation.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: feature channels C (θ, φ, g and W_out are C→C 1×1 convolutions with bias).

    Raises:
        ConfigError: non-positive ``channels`` or ``spatial_dims``.

    Examples::

        block = CrossNonLocalBlock(spatial_dims=2, channels=256)
        x, y = torch.randn(4, 256, 32, 32), torch.randn(1, 256, 24, 40)
        z = block(x, y)  # [4, 256, 32, 32]; equal to x at initialisation
    """

    def __init__(self, spatial_dims: int = 2, channels: int = 256) -> None:
        super().__init__()
        if int(spatial_dims) < 1 or int(channels) < 1:
            raise ConfigError(f"spatial_dims and channels must be positive, got {spatial_dims}, {channels}")
        self.spatial_dims = int(spatial_dims)
        self.channels = int(channels)
        conv = Conv[Conv.CONV, self.spatial_dims]
        self.theta = conv(self.channels, self.channels, kernel_size=1, bias=True)
        self.phi = conv(self.channels, self.channels, kernel_size=1, bias=True)
        self.g = conv(self.channels, self.channels, kernel_size=1, bias=True)
        self.w_out = conv(self.channels, self.channels, kernel_size=1, bias=True)
        nn.init.zeros_(self.w_out.weight)
        nn.init.zeros_(self.w_out.bias)

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        n = self.spatial_dims + 2
        for name, t in (("X (query features)", x), ("Y (guidance)", y)):
            if t.dim() != n or t.shape[1] != self.channels:
                raise ValueError(
                    f"{name} must be [B, {self.channels}, {', '.join(['...'] * self.spatial_dims)}] for this block, "
                    f"got shape {tuple(t.shape)}"
                )
        if y.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"Y must have batch 1 or the batch of X ({x.shape[0]}), got {y.shape[0]}")

    def affinity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The affinity ``f = θ(X)ᵀ φ(Y) / N_y`` as ``[B, N_x, N_y]`` (for inspection; forward never builds it).

        Args:
            x: ``[B, C, ...]`` query features.
            y: ``[B or 1, C, ...]`` guidance map.

        Returns:
            ``[B, N_x, N_y]``.
        """
        self._check(x, y)
        q = self.theta(x).flatten(2)
        k = self.phi(y).flatten(2)
        return torch.matmul(q.transpose(1, 2), k) / k.shape[-1]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Refine ``x`` with guidance ``y``.

        Args:
            x: ``[B, C, *spatial]`` query features.
            y: ``[B or 1, C, *spatial']`` guidance map (broadcast over B when its batch is 1).

        Returns:
            ``[B, C, *spatial]``.

        Raises:
            ValueError: wrong ranks, channels or batch sizes.
        """
        if not torch.jit.is_scripting():
            self._check(x, y)
        q = self.theta(x).flatten(2)  # [B, C, Nx]
        k = self.phi(y).flatten(2)  # [By, C, Ny]
        v = self.g(y).flatten(2)  # [By, C, Ny]
        vk = torch.matmul(v, k.transpose(1, 2)) / k.shape[-1]  # [By, C, C] = V Kᵀ / Ny
        out = torch.matmul(vk, q)  # [B, C, Nx] = V fᵀ
        return x + self.w_out(out.reshape(x.shape))


class MCAM(nn.Module):
    """Multi-level cross attention module (psmnet.md §2): three :class:`CrossNonLocalBlock` in sequence.

    Guidance maps, all on the support grid and masked by the support FG mask ``M``:

    - level 1 (global): ``Y1(x) = g_fg · M(x)``, the global FG prototype of the shot broadcast;
    - level 2 (prototype): ``Y2(x) = p*(x) · M(x)`` with ``p*(x) = argmax_{p ∈ Π_fg} cos(F_s(x), p)`` (the index is
      not differentiated; the selected prototype values are);
    - level 3 (pixel): ``Y3 = F_s ⊙ M``.

    ``F_q' = Block_3(Block_2(Block_1(F_q, Y1), Y2), Y3)``.

    **S > 1 shots (decision):** the guidance positions of all shots are concatenated along the position axis
    (``N_y = S · h · w``), the natural generalisation of the sum over guidance positions; implemented by concatenating
    the per-shot guidance maps along the last spatial axis (the 1×1 convolutions are position-wise, so the layout does
    not matter). Each support pixel chooses its ``p*`` among the prototypes of all shots.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: feature channels C.

    Examples::

        mcam = MCAM(spatial_dims=2, channels=256)
        fq, fs = torch.randn(2, 256, 32, 32), torch.randn(1, 256, 32, 32)
        m = torch.zeros(1, 1, 32, 32)
        m[..., 8:24, 8:24] = 1
        g = masked_average_pooling(fs, m)  # [1, 256]
        out = mcam(fq, fs, m, g, g)  # [2, 256, 32, 32]; equal to fq at initialisation
    """

    def __init__(self, spatial_dims: int = 2, channels: int = 256) -> None:
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        self.channels = int(channels)
        self.blocks = nn.ModuleList([CrossNonLocalBlock(self.spatial_dims, self.channels) for _ in range(3)])

    def guidance(
        self,
        support_features: torch.Tensor,
        fg_mask_on_grid: torch.Tensor,
        global_fg: torch.Tensor,
        fg_prototypes: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three guidance maps, shots concatenated along the last spatial axis.

        Args:
            support_features: ``[S, C, *spatial]``.
            fg_mask_on_grid: ``[S, 1, *spatial]`` soft FG mask on the support grid.
            global_fg: ``[S, C]`` per-shot global FG prototypes, or ``[C]`` / ``[1, C]`` shared by all shots.
            fg_prototypes: ``[N, C]`` FG prototype set Π_fg (N >= 1).

        Returns:
            ``(Y1, Y2, Y3)``, each ``[1, C, *spatial[:-1], S · spatial[-1]]``.

        Raises:
            ValueError: mismatched shapes or an empty prototype set.
        """
        fs, m = support_features, fg_mask_on_grid
        n = self.spatial_dims + 2
        if fs.dim() != n or fs.shape[1] != self.channels:
            raise ValueError(f"support features must be [S, {self.channels}, ...] ({n}-D), got {tuple(fs.shape)}")
        s = fs.shape[0]
        if tuple(m.shape) != (s, 1, *fs.shape[2:]):
            raise ValueError(f"FG mask must be {(s, 1, *fs.shape[2:])} (on the support grid), got {tuple(m.shape)}")
        g = global_fg.reshape(1, -1) if global_fg.dim() == 1 else global_fg
        if g.dim() != 2 or g.shape[0] not in (1, s) or g.shape[1] != self.channels:
            raise ValueError(f"global FG prototype must be [{s} or 1, {self.channels}], got {tuple(global_fg.shape)}")
        p = fg_prototypes
        if p.dim() != 2 or p.shape[0] == 0 or p.shape[1] != self.channels:
            raise ValueError(f"FG prototypes must be a non-empty [N, {self.channels}] matrix, got {tuple(p.shape)}")
        m = m.to(fs.dtype)
        extra = (1,) * self.spatial_dims
        y1 = g.to(fs.dtype).reshape(g.shape[0], self.channels, *extra) * m
        with torch.no_grad():
            cos = torch.einsum("sc...,nc->sn...", safe_normalize(fs, dim=1), safe_normalize(p.to(fs.dtype), dim=1))
            idx = cos.argmax(dim=1)  # [S, *spatial]
        y2 = p.to(fs.dtype)[idx].movedim(-1, 1) * m  # [S, C, *spatial]
        y3 = fs * m

        def cat(y: torch.Tensor) -> torch.Tensor:
            return torch.cat(list(y.unbind(0)), dim=-1).unsqueeze(0)

        return cat(y1), cat(y2), cat(y3)

    def forward(
        self,
        query_features: torch.Tensor,
        support_features: torch.Tensor,
        fg_mask_on_grid: torch.Tensor,
        global_fg: torch.Tensor,
        fg_prototypes: torch.Tensor,
    ) -> torch.Tensor:
        """Refine the query features with the support guidance.

        Args:
            query_features: ``[B, C, *spatial_q]``.
            support_features: ``[S, C, *spatial_s]`` (the grids may differ).
            fg_mask_on_grid: ``[S, 1, *spatial_s]`` soft FG mask on the support grid.
            global_fg: ``[S, C]`` per-shot global FG prototypes (or ``[C]`` / ``[1, C]``).
            fg_prototypes: ``[N, C]`` FG prototype set.

        Returns:
            ``[B, C, *spatial_q]`` refined query features.

        Raises:
            ValueError: mismatched shapes.
        """
        x = query_features
        for block, y in zip(self.blocks, self.guidance(support_features, fg_mask_on_grid, global_fg, fg_prototypes)):
            x = block(x, y.to(x.dtype))
        return x


# ---------------------------------------------------------------------------------------------------- §3 PSM
class PSMSplit(NamedTuple):
    """Output of :func:`psm_split` with ``return_masks=True``.

    Attributes:
        prototypes: ``[n, C]`` node prototypes, root first, depth-first order (segmented child before unsegmented).
        masks: the n node masks ``[1, h, w]`` (constants, no gradient); the root's is the input mask.
        parents: index of each node's parent (``-1`` for the root).
    """

    prototypes: torch.Tensor
    masks: list[torch.Tensor]
    parents: list[int]


def _check_psm_config(depth: int, tau: float, min_mass: float) -> tuple[int, float, float]:
    if isinstance(depth, bool) or int(depth) != depth or int(depth) < 0:
        raise ConfigError(f"psm_depth must be a non-negative integer, got {depth!r}")
    if not math.isfinite(float(tau)):
        raise ConfigError(f"psm_tau must be a finite number, got {tau!r}")
    if not math.isfinite(float(min_mass)) or float(min_mass) < 0:
        raise ConfigError(f"psm_min_mass must be a finite number >= 0, got {min_mass!r}")
    return int(depth), float(tau), float(min_mass)


def psm_split(
    features: torch.Tensor,
    mask: torch.Tensor,
    other_global: torch.Tensor,
    depth: int = 2,
    tau: float = 0.0,
    min_mass: float = 2.0,
    return_masks: bool = False,
) -> torch.Tensor | PSMSplit:
    """Prototype splitting of one class mask of one shot (psmnet.md §3.1, **reconstruction**).

    ``SPLIT(M, d)``: ``p = MAP(F, M)``; stop when ``d == depth`` or ``mass(M) < 2·min_mass`` (or ``mass(M) == 0``);
    otherwise ``δ(x) = cos(F(x), p) − cos(F(x), g_other)``, ``M_seg = M ⊙ 1[δ > τ]``, ``M_uns = M ⊙ 1[δ ≤ τ]``; stop
    when either part has mass ``< min_mass`` (or zero); else recurse into ``M_seg`` then ``M_uns``. Sub-masks keep the
    soft values, are disjoint and sum exactly to their parent. Cosines use the scoring normalisation
    (``safe_normalize``, eps 1e-4). The root prototype is ``masked_average_pooling(F, M)`` (the global prototype).
    No MAP of an empty mask happens below the root; an empty root mask gives a zero prototype and no split.
    Gradients flow to ``features`` through every prototype; the masks and the split decisions are constants.

    Args:
        features: ``[C, h, w]`` or ``[1, C, h, w]`` support features of one shot.
        mask: ``[1, h, w]`` (also ``[h, w]`` or ``[1, 1, h, w]``) soft class mask on the feature grid.
        other_global: ``[C]`` (or ``[1, C]``) global prototype of the complementary class.
        depth: maximal recursion depth D (0: the global prototype only); at most ``2^(D+1) − 1`` prototypes.
        tau: threshold τ on δ.
        min_mass: minimum mass (sum of soft mask values, in feature cells) of a sub-mask.
        return_masks: also return the node masks and parents (:class:`PSMSplit`).

    Returns:
        ``[n, C]`` prototypes (root first, depth-first), or a :class:`PSMSplit`.

    Raises:
        ConfigError: negative ``depth`` or ``min_mass``, non-finite ``tau``.
        DataError: mismatched shapes, or mask values that are not finite or outside [0, 1].
    """
    depth, tau, min_mass = _check_psm_config(depth, tau, min_mass)
    feats = features[0] if features.dim() == 4 and features.shape[0] == 1 else features
    if feats.dim() != 3:
        raise DataError("psm_split", f"features must be [C, h, w] or [1, C, h, w], got {tuple(features.shape)}")
    c, h, w = feats.shape
    if mask.dim() not in (2, 3, 4) or tuple(mask.shape) != (1,) * (mask.dim() - 2) + (h, w):
        raise DataError("psm_split", f"mask must be [1, {h}, {w}] to match the features, got {tuple(mask.shape)}")
    other = other_global.reshape(-1)
    if other.numel() != c:
        raise DataError("psm_split", f"other_global must have {c} values, got shape {tuple(other_global.shape)}")
    m = mask.detach().reshape(1, h, w).to(device=feats.device, dtype=feats.dtype)
    if not bool(torch.isfinite(m).all()) or float(m.min()) < 0.0 or float(m.max()) > 1.0:
        raise DataError("psm_split", "mask values must be finite and within [0, 1]")

    f4 = feats.unsqueeze(0)
    with torch.no_grad():
        fn = safe_normalize(feats.detach(), dim=0)  # [C, h, w]
        cos_other = torch.einsum("chw,c->hw", fn, safe_normalize(other.detach().to(feats.dtype), dim=0))
    protos: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    parents: list[int] = []

    def split(mk: torch.Tensor, level: int, parent: int) -> None:
        p = masked_average_pooling(f4, mk.unsqueeze(0))[0]  # [C]
        me = len(protos)
        protos.append(p)
        masks.append(mk)
        parents.append(parent)
        if level >= depth:
            return
        with torch.no_grad():
            delta = torch.einsum("chw,c->hw", fn, safe_normalize(p.detach(), dim=0)) - cos_other
            seg_ind = (delta > tau).unsqueeze(0)
            seg = torch.where(seg_ind, mk, torch.zeros_like(mk))
            uns = torch.where(seg_ind, torch.zeros_like(mk), mk)
            mass, m_seg, m_uns = torch.stack([mk.sum(), seg.sum(), uns.sum()]).tolist()
        if mass <= 0.0 or mass < 2.0 * min_mass:
            return
        if min(m_seg, m_uns) <= 0.0 or min(m_seg, m_uns) < min_mass:
            return
        split(seg, level + 1, me)
        split(uns, level + 1, me)

    split(m, 0, -1)
    out = torch.stack(protos, dim=0)
    return PSMSplit(out, masks, parents) if return_masks else out


# ---------------------------------------------------------------------------------------------------- §1, §3.3, §4
class PSMNetHead(ALPHead):
    """PSMNet prototype head (psmnet.md §1, §3.3, §4): PSM prototype sets, ALP local prototypes and MCAM.

    Per call (one class, S >= 1 shots sharing B >= 1 queries):

    1. support masks on the feature grid (``ALPHead._prepare_masks``; same validation and errors);
    2. per-shot global prototypes ``g_fg[s] = MAP(F_s[s], M_fg[s])``, ``g_bg[s]``;
    3. ``use_psm``: per shot ``Π_fg^PSM = psm_split(F_s[s], M_fg[s], g_bg[s])`` and, with ``psm_on_background``,
       ``Π_bg^PSM = psm_split(F_s[s], M_bg[s], g_fg[s])`` (else ``{g_bg[s]}``), shots concatenated;
       ``psm_with_local`` adds the ALP local prototypes (window k, ``> threshold``) of M_bg, and of M_fg when the FG
       mode test passes (``fg_uses_local``). The sets always contain the root prototypes: no fallback.
       Without ``use_psm`` the sets are exactly ALPHead's (``psm_with_local``) or the shot-averaged global prototypes;
    4. ``use_mcam``: ``F_q' = MCAM(F_q; F_s, M_fg, g_fg, Π_fg)`` (the full FG set for level 2);
    5. ``[BG, FG]`` soft-max ``20·cos`` scores of ``F_q'`` (:func:`prototype_scores`), optional bilinear upsampling.

    With ``use_psm=False``, ``use_mcam=False`` and ``psm_with_local=True`` the logits are exactly ``ALPHead``'s.
    ``last_info`` adds ``n_fg_psm`` / ``n_bg_psm`` (per-shot PSM prototype counts), ``n_bg_local`` and ``mcam`` to
    ALPHead's keys (``bg_fallback`` can only be true without ``use_psm``).

    Args:
        channels: feature channels (size of the MCAM convolutions).
        psm_depth: PSM recursion depth D (0: no splitting).
        psm_tau: PSM split threshold τ.
        psm_min_mass: PSM minimum sub-mask mass (feature cells).
        psm_on_background: split the BG mask too.
        psm_with_local: add the ALP local prototypes.
        use_psm: use the PSM sets (False: global + local prototypes only, the MCAM-only ablation).
        use_mcam: refine the query features with MCAM.
        threshold: strict threshold of local prototypes (BG and FG).
        fg_mode_threshold: non-strict threshold of the FG mode test.
        fg_mode_window: window of the FG mode test.
        scale: cosine scale.
        allow_empty_fg: default of ``allow_empty_fg`` in :meth:`forward`.

    Raises:
        ConfigError: negative depth or min mass, non-finite τ, non-positive channels.

    Examples::

        head = PSMNetHead(256, psm_depth=2)
        fs, fq = torch.randn(1, 256, 32, 32), torch.randn(2, 256, 32, 32)
        mask = torch.zeros(1, 1, 256, 256)
        mask[..., 40:220, 30:200] = 1
        logits = head(fs, mask, fq, window=2, output_size=(256, 256))  # [2, 2, 256, 256]
        head.last_info["n_fg_psm"]  # e.g. [7]
    """

    def __init__(
        self,
        channels: int = 256,
        psm_depth: int = 2,
        psm_tau: float = 0.0,
        psm_min_mass: float = 2.0,
        psm_on_background: bool = True,
        psm_with_local: bool = True,
        use_psm: bool = True,
        use_mcam: bool = True,
        threshold: float = LOCAL_THRESHOLD,
        fg_mode_threshold: float = FG_MODE_THRESHOLD,
        fg_mode_window: int = FG_MODE_WINDOW,
        scale: float = SCALE,
        allow_empty_fg: bool = False,
    ) -> None:
        super().__init__(threshold, fg_mode_threshold, fg_mode_window, scale, allow_empty_fg)
        if isinstance(channels, bool) or int(channels) != channels or int(channels) < 1:
            raise ConfigError(f"channels must be a positive integer, got {channels!r}")
        self.channels = int(channels)
        self.psm_depth, self.psm_tau, self.psm_min_mass = _check_psm_config(psm_depth, psm_tau, psm_min_mass)
        self.psm_on_background = as_bool(psm_on_background, "psm_on_background")
        self.psm_with_local = as_bool(psm_with_local, "psm_with_local")
        self.use_psm = as_bool(use_psm, "use_psm")
        self.use_mcam = as_bool(use_mcam, "use_mcam")
        self.mcam = MCAM(2, self.channels) if self.use_mcam else None

    def export_head(self, window: int) -> PSMNetExportHead:
        """The fixed-size, TorchScript/ONNX-compatible twin of this head for one window (:class:`PSMNetExportHead`;
        it shares the MCAM blocks)."""
        return PSMNetExportHead(self, int(window))

    def _psm_sets(
        self, fs: torch.Tensor, m: torch.Tensor, other: torch.Tensor, split: bool
    ) -> tuple[torch.Tensor, list[int]]:
        parts, counts = [], []
        for s in range(fs.shape[0]):
            if split:
                p = psm_split(fs[s], m[s], other[s], self.psm_depth, self.psm_tau, self.psm_min_mass)
            else:
                p = masked_average_pooling(fs[s : s + 1], m[s : s + 1])
            parts.append(p)
            counts.append(int(p.shape[0]))
        return torch.cat(parts, dim=0), counts

    def forward(
        self,
        support_features: torch.Tensor,
        support_fg_mask: torch.Tensor,
        query_features: torch.Tensor,
        window: int = 4,
        output_size: int | Sequence[int] | None = None,
        support_bg_mask: torch.Tensor | None = None,
        allow_empty_fg: bool | None = None,
    ) -> torch.Tensor:
        """Two-channel [BG, FG] logits of the queries.

        Args:
            support_features: ``[S, C, h, w]``.
            support_fg_mask: ``[S, 1, H, W]`` (or ``[S, H, W]``) FG mask at image resolution, or on the feature grid.
            query_features: ``[B, C, hq, wq]`` (the query grid may differ from the support grid).
            window: local-prototype window (4 training, 2 testing).
            output_size: optional ``(H, W)`` to upsample the logits to (bilinear, ``align_corners=False``).
            support_bg_mask: optional BG mask (default ``1 − support_fg_mask``).
            allow_empty_fg: accept all-zero FG masks (PAR parity); default ``self.allow_empty_fg``.

        Returns:
            ``[B, 2, hq, wq]`` logits, or ``[B, 2, *output_size]``.

        Raises:
            ValueError: mismatched shapes or channels (also with the MCAM ``channels``).
            DataError: mask values outside [0, 1] or not finite, or an empty support FG mask (unless allowed).
        """
        if self.mcam is not None and support_features.dim() == 4 and support_features.shape[1] != self.channels:
            raise ValueError(
                f"PSMNetHead was built for {self.channels} channels (MCAM), the features have "
                f"{support_features.shape[1]}"
            )
        window = int(window)
        _, m_fg, m_bg, empty, vanished = self._prepare_masks(
            support_features, support_fg_mask, query_features, window, support_bg_mask, allow_empty_fg
        )
        fs = support_features
        g_fg = masked_average_pooling(fs, m_fg)  # [S, C]
        g_bg = masked_average_pooling(fs, m_bg)
        fg_local = fg_uses_local(m_fg, self.fg_mode_threshold, self.fg_mode_window)
        n_fg_psm: list[int] = []
        n_bg_psm: list[int] = []
        n_bg_local = n_fg_local = 0
        bg_fallback = False
        if self.use_psm:
            psm_fg, n_fg_psm = self._psm_sets(fs, m_fg, g_bg, self.psm_depth > 0)
            psm_bg, n_bg_psm = self._psm_sets(fs, m_bg, g_fg, self.psm_depth > 0 and self.psm_on_background)
            protos_fg, protos_bg = psm_fg, psm_bg
            if self.psm_with_local:
                local_bg = local_prototypes(fs, m_bg, window, self.threshold)
                n_bg_local = int(local_bg.shape[0])
                protos_bg = torch.cat([local_bg, psm_bg], dim=0)
                if fg_local:
                    local_fg = local_prototypes(fs, m_fg, window, self.threshold)
                    n_fg_local = int(local_fg.shape[0])
                    protos_fg = torch.cat([local_fg, psm_fg], dim=0)
        elif self.psm_with_local:
            protos_bg, bg_fallback = bg_prototypes(fs, m_bg, window, self.threshold)
            n_bg_local = 0 if bg_fallback else int(protos_bg.shape[0])
            protos_fg, fg_local = fg_prototypes(
                fs, m_fg, window, self.threshold, self.fg_mode_threshold, self.fg_mode_window
            )
            n_fg_local = int(protos_fg.shape[0]) - fs.shape[0] if fg_local else 0
        else:
            protos_bg = g_bg.mean(dim=0, keepdim=True)
            protos_fg = g_fg.mean(dim=0, keepdim=True)
        if not self.psm_with_local:
            fg_local = False

        query = query_features
        if self.mcam is not None:
            query = self.mcam(query_features, fs, m_fg, g_fg, protos_fg)
        bg_score = prototype_scores(query, protos_bg, self.scale)
        fg_score = prototype_scores(query, protos_fg, self.scale)
        logits = self._logits(bg_score, fg_score, output_size)

        self.calls += 1
        self.bg_fallback_count += int(bg_fallback)
        self.fg_global_count += int(not fg_local)
        self.last_info = {
            "bg_fallback": bg_fallback,
            "fg_local": fg_local,
            "n_bg_prototypes": int(protos_bg.shape[0]),
            "n_fg_prototypes": int(protos_fg.shape[0]),
            "n_fg_local": n_fg_local,
            "n_bg_local": n_bg_local,
            "n_fg_psm": n_fg_psm,
            "n_bg_psm": n_bg_psm,
            "mcam": self.mcam is not None,
            "empty_fg_shots": empty,
            "vanished_fg_shots": vanished,
        }
        return logits


# ---------------------------------------------------------------------------------------------------- export
def _dfs_order(depth: int) -> list[int]:
    """Breadth-first indices of a complete binary tree of ``depth`` in depth-first (pre-)order."""
    order: list[int] = []

    def visit(i: int, level: int) -> None:
        order.append(i)
        if level < depth:
            visit(2 * i + 1, level + 1)
            visit(2 * i + 2, level + 1)

    visit(0, 0)
    return order


def fixed_psm_split(
    features: torch.Tensor,
    mask: torch.Tensor,
    other_global: torch.Tensor,
    order: torch.Tensor,
    depth: int = 2,
    tau: float = 0.0,
    min_mass: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`psm_split` as the complete tree of ``depth`` with a flag per node (TorchScript-compatible, traceable).

    Every node of the complete binary tree is computed (breadth-first); a node is valid when its parent is and the
    parent's split conditions hold (masses compared in float64, as the eager function does with Python floats). The
    rows are returned in depth-first order (``order``, from the tree shape), so the valid rows are :func:`psm_split`'s
    prototypes in its order.

    Args:
        features: ``[C, h, w]`` support features of one shot.
        mask: ``[1, h, w]`` soft class mask on the feature grid.
        other_global: ``[C]`` global prototype of the complementary class.
        order: ``[2^(depth+1) - 1]`` int64 depth-first permutation of the breadth-first nodes.
        depth: recursion depth D.
        tau: threshold on δ.
        min_mass: minimum mass of a sub-mask.

    Returns:
        ``([2^(depth+1) - 1, C] prototypes, [2^(depth+1) - 1] bool flags)``.
    """
    f4 = features.unsqueeze(0)
    fn = safe_normalize(features, 0, 1e-4)
    cos_other = torch.einsum("chw,c->hw", fn, safe_normalize(other_global.reshape(-1).to(features.dtype), 0, 1e-4))
    level_masks = [mask]
    level_valid = [torch.ones((), dtype=torch.bool, device=features.device)]
    protos: list[torch.Tensor] = []
    valid: list[torch.Tensor] = []
    for level in range(depth + 1):
        next_masks: list[torch.Tensor] = []
        next_valid: list[torch.Tensor] = []
        for i in range(len(level_masks)):
            mk, ok = level_masks[i], level_valid[i]
            p = masked_average_pooling(f4, mk.unsqueeze(0))[0]
            protos.append(p)
            valid.append(ok)
            if level < depth:
                delta = torch.einsum("chw,c->hw", fn, safe_normalize(p, 0, 1e-4)) - cos_other
                seg_ind = (delta > tau).unsqueeze(0)
                seg = torch.where(seg_ind, mk, torch.zeros_like(mk))
                uns = torch.where(seg_ind, torch.zeros_like(mk), mk)
                mass = mk.sum().double()
                low = torch.minimum(seg.sum(), uns.sum()).double()
                split = ok & (mass > 0.0) & (mass >= 2.0 * min_mass) & (low > 0.0) & (low >= min_mass)
                next_masks += [seg, uns]
                next_valid += [split, split]
        level_masks, level_valid = next_masks, next_valid
    order = order.to(features.device)
    return torch.stack(protos, dim=0).index_select(0, order), torch.stack(valid, dim=0).index_select(0, order)


class _MCAMBlocks(nn.Module):
    """Holds MCAM's blocks under ``blocks`` (state-dict keys ``mcam.blocks.*``) without MCAM's eager forward."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks


class PSMNetExportHead(ALPExportHead):
    """Fixed-size :class:`PSMNetHead` for export (TorchScript, ONNX), built by :meth:`PSMNetHead.export_head`.

    Same logits as the eager head in evaluation (one window): the PSM sets are the complete trees of
    :func:`fixed_psm_split` with a flag per node, the ALP local prototypes all windows with their flags, and MCAM's
    prototype guidance takes the arg-max over the valid FG prototypes only. The MCAM blocks are the eager head's
    (keys ``mcam.blocks.*``); the counters and ``last_info`` are not kept.

    Args:
        head: the eager head (its switches, hyperparameters and MCAM blocks).
        window: local-prototype window (``test_window``).
    """

    def __init__(self, head: PSMNetHead, window: int) -> None:
        super().__init__(window, head.threshold, head.fg_mode_threshold, head.fg_mode_window, head.scale)
        self.channels = int(head.channels)
        self.psm_depth = int(head.psm_depth)
        self.psm_tau = float(head.psm_tau)
        self.psm_min_mass = float(head.psm_min_mass)
        self.psm_on_background = bool(head.psm_on_background)
        self.psm_with_local = bool(head.psm_with_local)
        self.use_psm = bool(head.use_psm)
        self.mcam = None if head.mcam is None else _MCAMBlocks(head.mcam.blocks)
        self.register_buffer("order", torch.tensor(_dfs_order(self.psm_depth), dtype=torch.long), persistent=False)

    def _psm_sets(
        self, fs: torch.Tensor, m: torch.Tensor, other: torch.Tensor, split: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts: list[torch.Tensor] = []
        flags: list[torch.Tensor] = []
        for s in range(fs.shape[0]):
            if split:
                p, v = fixed_psm_split(
                    fs[s], m[s], other[s], self.order, self.psm_depth, self.psm_tau, self.psm_min_mass
                )
            else:
                p = masked_average_pooling(fs[s : s + 1], m[s : s + 1])
                v = torch.ones(1, dtype=torch.bool, device=fs.device)
            parts.append(p)
            flags.append(v)
        return torch.cat(parts, dim=0), torch.cat(flags, dim=0)

    def _guided_query(
        self,
        query: torch.Tensor,
        fs: torch.Tensor,
        m_fg: torch.Tensor,
        g_fg: torch.Tensor,
        protos: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """MCAM (:class:`MCAM`) with the arg-max of level 2 over the valid prototypes."""
        mcam = self.mcam
        if mcam is None:
            return query
        s, c, h, w = fs.shape[0], fs.shape[1], fs.shape[2], fs.shape[3]
        m = m_fg.to(fs.dtype)
        p = protos.to(fs.dtype)
        y1 = g_fg.to(fs.dtype).reshape(s, c, 1, 1) * m
        cos = torch.einsum("schw,nc->snhw", safe_normalize(fs, 1, 1e-4), safe_normalize(p, 1, 1e-4))
        idx = cos.masked_fill(~valid.reshape(1, -1, 1, 1), float("-inf")).argmax(dim=1)  # [S, h, w]
        y2 = p.index_select(0, idx.reshape(-1)).reshape(s, h, w, c).permute(0, 3, 1, 2) * m
        y3 = fs * m
        guidance = [
            torch.cat(y1.unbind(0), dim=-1).unsqueeze(0),
            torch.cat(y2.unbind(0), dim=-1).unsqueeze(0),
            torch.cat(y3.unbind(0), dim=-1).unsqueeze(0),
        ]
        x = query
        for i, block in enumerate(mcam.blocks):
            x = block(x, guidance[i].to(x.dtype))
        return x

    def forward(
        self, support_features: torch.Tensor, support_fg_mask: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """``[S, C, h, w]``, ``[S, 1, H, W]`` FG masks, ``[B, C, hq, wq]`` -> ``[B, 2, hq, wq]`` [BG, FG] logits.

        Raises:
            ValueError: features without the MCAM channels, bad support masks (TorchScript).
        """
        fs = support_features
        if self.mcam is not None and fs.shape[1] != self.channels:
            raise ValueError(
                "PSMNetHead was built for " + str(self.channels) + " channels (MCAM), the features have "
                + str(fs.shape[1])
            )  # fmt: skip
        fg, m_fg, m_bg = support_masks_on_grid(fs, support_fg_mask)
        check_support_mask(fg)
        k = self.window
        fits = fs.shape[-2] >= k and fs.shape[-1] >= k
        g_fg = masked_average_pooling(fs, m_fg)
        g_bg = masked_average_pooling(fs, m_bg)
        if self.use_psm:
            fg_p, fg_v = self._psm_sets(fs, m_fg, g_bg, self.psm_depth > 0)
            bg_p, bg_v = self._psm_sets(fs, m_bg, g_fg, self.psm_depth > 0 and self.psm_on_background)
            if self.psm_with_local and fits:
                use_local = fg_local_flag(m_fg, self.fg_mode_threshold, self.fg_mode_window)
                loc_bg, ok_bg = window_prototypes(fs, m_bg, k, self.threshold)
                loc_fg, ok_fg = window_prototypes(fs, m_fg, k, self.threshold)
                bg_p, bg_v = torch.cat([loc_bg, bg_p], dim=0), torch.cat([ok_bg, bg_v], dim=0)
                fg_p, fg_v = torch.cat([loc_fg, fg_p], dim=0), torch.cat([ok_fg & use_local, fg_v], dim=0)
        elif self.psm_with_local:
            bg_p, bg_v, fg_p, fg_v = alp_prototype_sets(
                fs, m_fg, m_bg, k, self.threshold, self.fg_mode_threshold, self.fg_mode_window
            )
        else:
            one = torch.ones(1, dtype=torch.bool, device=fs.device)
            bg_p, bg_v = g_bg.mean(dim=0, keepdim=True), one
            fg_p, fg_v = g_fg.mean(dim=0, keepdim=True), one
        query = self._guided_query(query_features, fs, m_fg, g_fg, fg_p, fg_v)
        bg_score = masked_prototype_scores(query, bg_p, bg_v, self.scale)
        fg_score = masked_prototype_scores(query, fg_p, fg_v, self.scale)
        return torch.cat([bg_score, fg_score], dim=1)


# ---------------------------------------------------------------------------------------------------- builder
def build_psmnet_segmentor(
    encoder: str | nn.Module = "resnet101",
    pretrained_path: str | os.PathLike | None = None,
    train_window: int = 4,
    test_window: int = 2,
    threshold: float = LOCAL_THRESHOLD,
    cache_support: bool = True,
    encoder_options: dict | None = None,
    psm_depth: int = 2,
    psm_tau: float = 0.0,
    psm_min_mass: float = 2.0,
    psm_on_background: bool = True,
    psm_with_local: bool = True,
    use_psm: bool = True,
    use_mcam: bool = True,
    **encoder_kwargs: object,
) -> FewShotSegmentor:
    """Build the PSMNet model: an encoder by name (as :func:`build_fewshot_segmentor`) and a :class:`PSMNetHead`.

    Args:
        encoder: encoder name or module (see :func:`~labelless.networks.fewshot.build_fewshot_segmentor`).
        pretrained_path: optional local checkpoint for ResNet encoders.
        train_window: local-prototype window in training (4).
        test_window: local-prototype window at test (2).
        threshold: local-prototype threshold (strict ``>``).
        cache_support: see :class:`~labelless.networks.fewshot.FewShotSegmentor`.
        encoder_options: dict of encoder keyword arguments, merged with ``encoder_kwargs``.
        psm_depth: PSM recursion depth (0: no splitting).
        psm_tau: PSM split threshold.
        psm_min_mass: PSM minimum sub-mask mass (feature cells).
        psm_on_background: also split the background.
        psm_with_local: add ALP local prototypes.
        use_psm: PSM prototype sets (False: the MCAM-only ablation).
        use_mcam: MCAM refinement of the query features.
        encoder_kwargs: passed to the encoder builder.

    Returns:
        the model (training mode, CPU); its head (``model.head``) holds the MCAM parameters.

    Raises:
        ConfigError: bad encoder options, negative ``psm_depth`` or ``psm_min_mass``, non-finite ``psm_tau``, or an
            encoder without ``out_channels`` while ``use_mcam`` is on.
    """
    _check_psm_config(psm_depth, psm_tau, psm_min_mass)
    base = build_fewshot_segmentor(
        encoder, pretrained_path, train_window, test_window, threshold, cache_support, encoder_options,
        **encoder_kwargs,
    )  # fmt: skip
    channels = getattr(base.encoder, "out_channels", None)
    if channels is None:
        if use_mcam:
            raise ConfigError("the encoder must expose out_channels (the size of the MCAM convolutions)")
        channels = 1
    head = PSMNetHead(
        int(channels),
        psm_depth=psm_depth,
        psm_tau=psm_tau,
        psm_min_mass=psm_min_mass,
        psm_on_background=psm_on_background,
        psm_with_local=psm_with_local,
        use_psm=use_psm,
        use_mcam=use_mcam,
        threshold=threshold,
    )
    return FewShotSegmentor(
        base.encoder, head, train_window=train_window, test_window=test_window, cache_support=cache_support
    )
