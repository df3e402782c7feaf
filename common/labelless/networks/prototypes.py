# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Prototype layers: masked average pooling, local prototypes and the parameter-free ALP head (ssl_alpnet.md §2-§3).

All functions are plain differentiable torch operations that follow the device and dtype of their inputs. Feature
grids are always read from the tensors. Shapes: support features ``[S, C, h, w]`` (S shots), support masks
``[S, 1, h, w]`` (soft, on the feature grid unless stated otherwise), query features ``[B, C, h, w]``.

Export (TorchScript, ONNX): the eager head selects a data-dependent number of prototypes. The fixed-size functions
(:func:`window_prototypes`, :func:`alp_prototype_sets`, :func:`masked_prototype_scores`) keep every candidate
prototype with a validity flag and give invalid ones zero soft-max weight, which is the same score in exact
arithmetic; :class:`ALPExportHead` (from :meth:`ALPHead.export_head`) uses them. They are TorchScript-compatible and
trace to ONNX without data-dependent shapes or branches.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import DataError
from labelless.utils import as_bool

__all__ = [
    "safe_normalize",
    "masked_average_pooling",
    "downsample_mask",
    "local_prototypes",
    "prototype_scores",
    "fg_uses_local",
    "bg_prototypes",
    "fg_prototypes",
    "ALPHead",
    "window_prototypes",
    "fg_local_flag",
    "alp_prototype_sets",
    "masked_prototype_scores",
    "masked_softmax_score",
    "support_masks_on_grid",
    "check_support_mask",
    "ALPExportHead",
    "LOCAL_THRESHOLD",
    "FG_MODE_THRESHOLD",
    "FG_MODE_WINDOW",
    "SCALE",
]

LOCAL_THRESHOLD = 0.95  # local prototypes: pooled mask fraction > threshold (strict)
FG_MODE_THRESHOLD = 0.95  # FG mode test: max of the 4×4-pooled FG mask >= threshold (non-strict)
FG_MODE_WINDOW = 4  # the FG mode test always uses 4×4 windows, also at test time
SCALE = 20.0  # fixed cosine scale


def _check_feature_mask(features: torch.Tensor, mask: torch.Tensor, what: str = "mask") -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be [S, C, h, w], got shape {tuple(features.shape)}")
    expected = (features.shape[0], 1, features.shape[2], features.shape[3])
    if mask.dim() != 4 or tuple(mask.shape) != expected:
        raise ValueError(
            f"{what} must have shape {expected} to match features {tuple(features.shape)}, got {tuple(mask.shape)}"
        )


def safe_normalize(x: torch.Tensor, dim: int = 1, eps: float = 1e-4) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along ``dim`` (a zero vector stays zero).

    Args:
        x: input tensor.
        dim: axis of the vectors.
        eps: lower bound of the norm.

    Returns:
        the normalised tensor, same shape as ``x``.
    """
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(eps)


def masked_average_pooling(features: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MAP(F, M) = Σ_x F(x) M(x) / (Σ_x M(x) + eps) per shot.

    Args:
        features: ``[S, C, h, w]``.
        mask: ``[S, 1, h, w]`` (soft) on the same grid.
        eps: added to the mask area (an empty mask gives a zero prototype).

    Returns:
        ``[S, C]`` prototypes.

    Raises:
        ValueError: mismatched shapes.
    """
    if not torch.jit.is_scripting():
        _check_feature_mask(features, mask)
    mask = mask.to(features.dtype)
    return (features * mask).sum(dim=(-2, -1)) / (mask.sum(dim=(-2, -1)) + eps)


def downsample_mask(mask: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear interpolation (``align_corners=False``, point sampling, no anti-aliasing) of masks to ``size``.

    Args:
        mask: ``[S, 1, H, W]`` binary or soft mask (bool/integer masks are converted to float32).
        size: target ``(h, w)`` or an int for a square grid.

    Returns:
        ``[S, 1, h, w]`` floating mask (the input itself, as float, when it already has that size).
    """
    if mask.dim() != 4:
        raise ValueError(f"mask must be [S, 1, H, W], got shape {tuple(mask.shape)}")
    if not mask.is_floating_point():
        mask = mask.float()
    size_t = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(mask.shape[-2:]) == size_t:
        return mask
    return F.interpolate(mask, size=size_t, mode="bilinear", align_corners=False)


def local_prototypes(
    features: torch.Tensor, mask: torch.Tensor, window: int, threshold: float = LOCAL_THRESHOLD
) -> torch.Tensor:
    """Average-pooled feature windows (kernel = stride = ``window``) whose mask fraction is ``> threshold``.

    All shots are pooled together (shot-major, then raster order). Windows that do not fit in the grid (remainder
    rows/columns) are dropped, as by ``avg_pool2d``.

    Args:
        features: ``[S, C, h, w]``.
        mask: ``[S, 1, h, w]`` soft mask on the same grid.
        window: pooling window k.
        threshold: strict lower bound of the window's mean mask value.

    Returns:
        ``[N, C]`` local prototypes (N may be 0).
    """
    _check_feature_mask(features, mask)
    if int(window) < 1:
        raise ValueError(f"window must be a positive integer, got {window}")
    window = int(window)
    c = features.shape[1]
    if features.shape[-2] < window or features.shape[-1] < window:
        return features.new_zeros((0, c))
    pooled = F.avg_pool2d(features, window)
    frac = F.avg_pool2d(mask.to(features.dtype), window)
    pooled = pooled.permute(0, 2, 3, 1).reshape(-1, c)
    return pooled[frac.reshape(-1) > threshold]


def prototype_scores(query: torch.Tensor, prototypes: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """Soft-max score of every query position against a prototype set (ssl_alpnet.md §3.2).

    ``a_k(x) = scale · <n(F_q(x)), n(p_k)>``; ``score(x) = Σ_k softmax_k(a(x)) · a_k(x)``. With one prototype this
    is the scaled cosine.

    Args:
        query: ``[B, C, h, w]`` query features.
        prototypes: ``[N, C]`` with N >= 1.
        scale: cosine scale.

    Returns:
        ``[B, 1, h, w]`` scores.

    Raises:
        ValueError: wrong shapes, mismatched channels or an empty prototype set.
    """
    if query.dim() != 4:
        raise ValueError(f"query features must be [B, C, h, w], got shape {tuple(query.shape)}")
    if prototypes.dim() != 2 or prototypes.shape[0] == 0:
        raise ValueError(f"prototypes must be a non-empty [N, C] matrix, got shape {tuple(prototypes.shape)}")
    if prototypes.shape[1] != query.shape[1]:
        raise ValueError(f"prototypes have {prototypes.shape[1]} channels but the query has {query.shape[1]}")
    q = safe_normalize(query, dim=1)
    p = safe_normalize(prototypes.to(query.dtype), dim=1)
    a = F.conv2d(q, p[:, :, None, None]) * scale
    return torch.sum(F.softmax(a, dim=1) * a, dim=1, keepdim=True)


def fg_uses_local(mask_fg: torch.Tensor, threshold: float = FG_MODE_THRESHOLD, window: int = FG_MODE_WINDOW) -> bool:
    """FG mode test: ``max(Pool_window(M_fg)) >= threshold`` over all shots (non-strict).

    Args:
        mask_fg: ``[S, 1, h, w]`` FG mask on the feature grid.
        threshold: non-strict lower bound.
        window: mode-test window (4 in the reference, also at test time).

    Returns:
        whether the FG class uses local + global prototypes (otherwise global only).
    """
    if mask_fg.dim() != 4:
        raise ValueError(f"mask must be [S, 1, h, w], got shape {tuple(mask_fg.shape)}")
    if mask_fg.shape[-2] < window or mask_fg.shape[-1] < window:
        return False
    m = mask_fg if mask_fg.is_floating_point() else mask_fg.float()
    return bool((F.avg_pool2d(m, window).max() >= threshold).item())


def bg_prototypes(
    features: torch.Tensor, mask_bg: torch.Tensor, window: int, threshold: float = LOCAL_THRESHOLD
) -> tuple[torch.Tensor, bool]:
    """Background prototypes: local ones, or the shot-averaged global MAP when no window passes (§3.3).

    Args:
        features: ``[S, C, h, w]`` support features.
        mask_bg: ``[S, 1, h, w]`` BG mask on the feature grid.
        window: local window k.
        threshold: strict local threshold.

    Returns:
        ``([N, C] prototypes, fallback_used)``.
    """
    protos = local_prototypes(features, mask_bg, window, threshold)
    if protos.shape[0] > 0:
        return protos, False
    return masked_average_pooling(features, mask_bg).mean(dim=0, keepdim=True), True


def fg_prototypes(
    features: torch.Tensor,
    mask_fg: torch.Tensor,
    window: int,
    threshold: float = LOCAL_THRESHOLD,
    mode_threshold: float = FG_MODE_THRESHOLD,
    mode_window: int = FG_MODE_WINDOW,
) -> tuple[torch.Tensor, bool]:
    """Foreground prototypes (§3.4).

    Local mode (mode test passes): local prototypes (window k) followed by one global MAP per shot, scored with the
    soft-max rule. Global mode: a single prototype, the mean over shots of the MAPs (its soft-max score is exactly
    the scaled cosine).

    Args:
        features: ``[S, C, h, w]`` support features.
        mask_fg: ``[S, 1, h, w]`` FG mask on the feature grid.
        window: local window k.
        threshold: strict local threshold.
        mode_threshold: non-strict threshold of the mode test.
        mode_window: window of the mode test.

    Returns:
        ``([N, C] prototypes, use_local)``.
    """
    glb = masked_average_pooling(features, mask_fg)
    if fg_uses_local(mask_fg, mode_threshold, mode_window):
        return torch.cat([local_prototypes(features, mask_fg, window, threshold), glb], dim=0), True
    return glb.mean(dim=0, keepdim=True), False


class ALPHead(nn.Module):
    """Parameter-free adaptive local prototype pooling head of SSL-ALPNet (ssl_alpnet.md §3), one class at a time.

    All B query slices share the support (S >= 1 shots); the result for a batch equals B single-query calls.
    Background: local prototypes of M_bg (window k), or the shot-averaged global BG prototype when no window passes
    (counted in ``bg_fallback_count``). Foreground: mode test on the 4×4-pooled M_fg (``>= 0.95``); local mode uses
    local prototypes (window k, ``> 0.95``) plus one global MAP per shot with the soft-max score, global mode the
    scaled cosine with the mean of the per-shot MAPs.

    Masks given at another resolution than the features are bilinearly downsampled (``align_corners=False``); the BG
    mask is ``1 - fg`` at the given resolution (or ``support_bg_mask``), downsampled separately. Masks already on the
    feature grid (PAR) are used as they are.

    Per-call information is stored in ``last_info`` (``bg_fallback``, ``fg_local``, ``n_bg_prototypes``,
    ``n_fg_prototypes``, ``n_fg_local``, ``empty_fg_shots``, ``vanished_fg_shots``); counters ``calls``,
    ``bg_fallback_count`` and ``fg_global_count`` accumulate until :meth:`reset_counters`.

    Args:
        threshold: strict threshold of local prototypes (BG and FG).
        fg_mode_threshold: non-strict threshold of the FG mode test.
        fg_mode_window: window of the FG mode test (always 4 in the reference).
        scale: cosine scale (fixed 20).
        allow_empty_fg: default of the ``allow_empty_fg`` argument of :meth:`forward`.

    Examples::

        head = ALPHead()
        fs, fq = torch.randn(1, 256, 32, 32), torch.randn(4, 256, 32, 32)
        mask = torch.zeros(1, 1, 256, 256)
        mask[..., 64:192, 64:192] = 1
        logits = head(fs, mask, fq, window=2, output_size=(256, 256))  # [4, 2, 256, 256]
    """

    def __init__(
        self,
        threshold: float = LOCAL_THRESHOLD,
        fg_mode_threshold: float = FG_MODE_THRESHOLD,
        fg_mode_window: int = FG_MODE_WINDOW,
        scale: float = SCALE,
        allow_empty_fg: bool = False,
    ) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.fg_mode_threshold = float(fg_mode_threshold)
        self.fg_mode_window = int(fg_mode_window)
        self.scale = float(scale)
        self.allow_empty_fg = as_bool(allow_empty_fg, "allow_empty_fg")
        self.last_info: dict[str, Any] = {}
        self.reset_counters()

    def reset_counters(self) -> None:
        """Set ``calls``, ``bg_fallback_count`` and ``fg_global_count`` to 0."""
        self.calls = 0
        self.bg_fallback_count = 0
        self.fg_global_count = 0

    def _validate(
        self, support_features: torch.Tensor, fg: torch.Tensor, query_features: torch.Tensor, window: int
    ) -> None:
        if support_features.dim() != 4:
            raise ValueError(f"support features must be [S, C, h, w], got shape {tuple(support_features.shape)}")
        if query_features.dim() != 4:
            raise ValueError(f"query features must be [B, C, h, w], got shape {tuple(query_features.shape)}")
        s, c = support_features.shape[:2]
        if s == 0 or query_features.shape[0] == 0:
            raise ValueError("need at least one support shot and one query")
        if query_features.shape[1] != c:
            raise ValueError(
                f"channel mismatch: support features have {c} channels, query features {query_features.shape[1]}"
            )
        if fg.dim() != 4 or fg.shape[0] != s or fg.shape[1] != 1:
            raise ValueError(
                f"support FG mask must be [S={s}, 1, H, W] (one class, one mask per shot), got {tuple(fg.shape)}"
            )
        if int(window) < 1:
            raise ValueError(f"window must be a positive integer, got {window}")

    @staticmethod
    def _logits(
        bg_score: torch.Tensor, fg_score: torch.Tensor, output_size: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """``[B, 2, h, w]`` logits ``cat[BG, FG]``, bilinearly upsampled to ``output_size`` when given (shared by the
        heads built on this one)."""
        logits = torch.cat([bg_score, fg_score], dim=1)
        if output_size is not None:
            size = (int(output_size), int(output_size)) if isinstance(output_size, int) else tuple(output_size)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def _prepare_masks(
        self,
        support_features: torch.Tensor,
        support_fg_mask: torch.Tensor,
        query_features: torch.Tensor,
        window: int,
        support_bg_mask: torch.Tensor | None = None,
        allow_empty_fg: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[int]]:
        """Validate the inputs and bring the support FG/BG masks to the feature grid (shared by the heads built on
        this one).

        Returns:
            ``(fg, m_fg, m_bg, empty_shots, vanished_shots)``: the FG mask ``[S, 1, H, W]`` at its given resolution
            (on the features' device and dtype), FG and BG masks ``[S, 1, h, w]`` on the feature grid, shots whose FG
            mask is empty at full resolution, and shots whose FG mask vanishes on the feature grid.

        Raises:
            ValueError: mismatched shapes or channels.
            DataError: mask values outside [0, 1] or not finite, or an empty support FG mask (unless allowed).
        """
        fg = support_fg_mask
        if fg.dim() == 3:
            fg = fg.unsqueeze(1)
        self._validate(support_features, fg, query_features, window)
        dtype = support_features.dtype
        fg = fg.to(device=support_features.device, dtype=dtype)
        if support_bg_mask is None:
            bg = 1.0 - fg
        else:
            bg = support_bg_mask.unsqueeze(1) if support_bg_mask.dim() == 3 else support_bg_mask
            if tuple(bg.shape) != tuple(fg.shape):
                raise ValueError(f"support BG mask shape {tuple(bg.shape)} differs from the FG mask {tuple(fg.shape)}")
            bg = bg.to(device=support_features.device, dtype=dtype)
        for name, m in (("support FG mask", fg), ("support BG mask", bg)):
            if not bool(torch.isfinite(m).all()) or float(m.min()) < 0.0 or float(m.max()) > 1.0:
                raise DataError(name, "mask values must be finite and within [0, 1]")

        allow = self.allow_empty_fg if allow_empty_fg is None else as_bool(allow_empty_fg, "allow_empty_fg")
        empty = [i for i, v in enumerate(fg.flatten(1).amax(dim=1).tolist()) if v <= 0]
        if empty and not allow:
            raise DataError(
                "support FG mask",
                f"empty support mask: shot(s) {empty} have no foreground pixels; a support slice must contain the "
                "class (pass allow_empty_fg=True only for the PAR parity case)",
            )
        h, w = support_features.shape[-2:]
        m_fg = downsample_mask(fg, (h, w))
        m_bg = downsample_mask(bg, (h, w))
        vanished = [i for i, v in enumerate(m_fg.flatten(1).amax(dim=1).tolist()) if v <= 0 and i not in empty]
        if vanished:
            warnings.warn(
                f"support FG mask of shot(s) {vanished} vanishes on the {h}x{w} feature grid (structure smaller than "
                "the feature stride); its prototype is zero",
                stacklevel=3,
            )

        return fg, m_fg, m_bg, empty, vanished

    def export_head(self, window: int) -> ALPExportHead:
        """The fixed-size, TorchScript/ONNX-compatible twin of this head for one window (see :class:`ALPExportHead`).

        Args:
            window: local-prototype window (the segmentor's ``test_window``).

        Returns:
            an :class:`ALPExportHead` with this head's thresholds and scale.
        """
        return ALPExportHead(int(window), self.threshold, self.fg_mode_threshold, self.fg_mode_window, self.scale)

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
            support_fg_mask: ``[S, 1, H, W]`` (or ``[S, H, W]``) binary/soft FG mask at image resolution (or directly
                on the feature grid).
            query_features: ``[B, C, hq, wq]``.
            window: local-prototype window (4 training, 2 testing).
            output_size: optional ``(H, W)`` to upsample the logits to (bilinear, ``align_corners=False``).
            support_bg_mask: optional BG mask with the shape of ``support_fg_mask``; default ``1 - support_fg_mask``.
            allow_empty_fg: accept shots with an all-zero FG mask (PAR parity, ssl_alpnet.md §4.2: the FG score is
                then 0); default ``self.allow_empty_fg``.

        Returns:
            ``[B, 2, hq, wq]`` logits, or ``[B, 2, *output_size]``.

        Raises:
            ValueError: mismatched shapes or channels.
            DataError: mask values outside [0, 1] or not finite, or an empty support FG mask (unless allowed).
        """
        window = int(window)
        _, m_fg, m_bg, empty, vanished = self._prepare_masks(
            support_features, support_fg_mask, query_features, window, support_bg_mask, allow_empty_fg
        )

        protos_bg, bg_fallback = bg_prototypes(support_features, m_bg, window, self.threshold)
        protos_fg, fg_local = fg_prototypes(
            support_features, m_fg, window, self.threshold, self.fg_mode_threshold, self.fg_mode_window
        )
        bg_score = prototype_scores(query_features, protos_bg, self.scale)
        fg_score = prototype_scores(query_features, protos_fg, self.scale)
        logits = self._logits(bg_score, fg_score, output_size)

        self.calls += 1
        self.bg_fallback_count += int(bg_fallback)
        self.fg_global_count += int(not fg_local)
        self.last_info = {
            "bg_fallback": bg_fallback,
            "fg_local": fg_local,
            "n_bg_prototypes": int(protos_bg.shape[0]),
            "n_fg_prototypes": int(protos_fg.shape[0]),
            "n_fg_local": int(protos_fg.shape[0]) - support_features.shape[0] if fg_local else 0,
            "empty_fg_shots": empty,
            "vanished_fg_shots": vanished,
        }
        return logits


# ---------------------------------------------------------------------------------------------------- export
def support_masks_on_grid(
    support_features: torch.Tensor, support_fg_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support FG mask in the features' dtype and its FG/BG masks on the feature grid (what :meth:`ALPHead.forward`
    prepares, without the checks; TorchScript-compatible).

    Args:
        support_features: ``[S, C, h, w]``.
        support_fg_mask: ``[S, 1, H, W]`` (or ``[S, H, W]``) FG mask at image resolution, or on the feature grid.

    Returns:
        ``(fg [S, 1, H, W], m_fg [S, 1, h, w], m_bg [S, 1, h, w])``; ``m_bg`` is ``1 - fg`` brought to the grid
        separately, as in the eager head.
    """
    fg = support_fg_mask.unsqueeze(1) if support_fg_mask.dim() == 3 else support_fg_mask
    fg = fg.to(device=support_features.device, dtype=support_features.dtype)
    bg = 1.0 - fg
    h, w = support_features.shape[-2], support_features.shape[-1]
    return fg, _on_grid(fg, h, w), _on_grid(bg, h, w)


def _on_grid(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if mask.shape[-2] == h and mask.shape[-1] == w:
        return mask
    return F.interpolate(mask, size=[h, w], mode="bilinear", align_corners=False)


def check_support_mask(fg: torch.Tensor) -> None:
    """The eager head's support-mask checks for the exported networks (TorchScript-compatible; skipped while tracing,
    so an ONNX graph does not check its inputs).

    Args:
        fg: ``[S, 1, H, W]`` support FG masks.

    Raises:
        ValueError: values not finite or outside [0, 1], or a shot without foreground.
    """
    if torch.jit.is_tracing():
        return
    if not bool(torch.isfinite(fg).all()) or bool((fg < 0.0).any()) or bool((fg > 1.0).any()):
        raise ValueError("support mask values must be finite and within [0, 1]")
    if bool((fg.flatten(1).amax(dim=1) <= 0.0).any()):
        raise ValueError("empty support mask: every support shot must contain the class (foreground pixels)")


def window_prototypes(
    features: torch.Tensor, mask: torch.Tensor, window: int, threshold: float = LOCAL_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``window``-pooled feature window with the flag of :func:`local_prototypes` (fixed size).

    Args:
        features: ``[S, C, h, w]`` with ``h, w >= window``.
        mask: ``[S, 1, h, w]`` soft mask on the same grid.
        window: pooling window k.
        threshold: strict lower bound of the window's mean mask value.

    Returns:
        ``([N, C] windows (shot-major, raster order), [N] bool flags)``; the flagged rows are
        :func:`local_prototypes`.
    """
    c = features.shape[1]
    pooled = F.avg_pool2d(features, window).permute(0, 2, 3, 1).reshape(-1, c)
    frac = F.avg_pool2d(mask.to(features.dtype), window).reshape(-1)
    return pooled, frac > threshold


def fg_local_flag(
    mask_fg: torch.Tensor, threshold: float = FG_MODE_THRESHOLD, window: int = FG_MODE_WINDOW
) -> torch.Tensor:
    """:func:`fg_uses_local` as a 0-dim bool tensor (no host synchronisation; TorchScript, traceable).

    Args:
        mask_fg: ``[S, 1, h, w]`` FG mask on the feature grid.
        threshold: non-strict lower bound.
        window: mode-test window.

    Returns:
        0-dim bool tensor.
    """
    if mask_fg.shape[-2] < window or mask_fg.shape[-1] < window:
        return torch.zeros((), dtype=torch.bool, device=mask_fg.device)
    return F.avg_pool2d(mask_fg.float(), window).max() >= threshold


def alp_prototype_sets(
    features: torch.Tensor,
    mask_fg: torch.Tensor,
    mask_bg: torch.Tensor,
    window: int,
    threshold: float = LOCAL_THRESHOLD,
    mode_threshold: float = FG_MODE_THRESHOLD,
    mode_window: int = FG_MODE_WINDOW,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed-size candidates of :func:`bg_prototypes` and :func:`fg_prototypes` with validity flags.

    BG: all windows (flag ``> threshold``) and the shot-averaged global BG prototype (flag: no window passes). FG: all
    windows (flag ``> threshold`` and the mode test), the per-shot global prototypes (flag: mode test) and their mean
    (flag: not the mode test). The flagged rows are the eager sets, in the same order.

    Args:
        features: ``[S, C, h, w]`` support features.
        mask_fg: ``[S, 1, h, w]`` FG mask on the feature grid.
        mask_bg: ``[S, 1, h, w]`` BG mask on the feature grid.
        window: local window k.
        threshold: strict local threshold.
        mode_threshold: non-strict threshold of the FG mode test.
        mode_window: window of the FG mode test.

    Returns:
        ``(bg [Nb, C], bg_valid [Nb], fg [Nf, C], fg_valid [Nf])``.
    """
    s = features.shape[0]
    fits = features.shape[-2] >= window and features.shape[-1] >= window
    glb_bg = masked_average_pooling(features, mask_bg).mean(dim=0, keepdim=True)
    one = torch.ones(1, dtype=torch.bool, device=features.device)
    if fits:
        loc_bg, ok_bg = window_prototypes(features, mask_bg, window, threshold)
        bg = torch.cat([loc_bg, glb_bg], dim=0)
        bg_valid = torch.cat([ok_bg, (~ok_bg.any()).reshape(1)], dim=0)
    else:
        bg, bg_valid = glb_bg, one
    use_local = fg_local_flag(mask_fg, mode_threshold, mode_window)
    glb_fg = masked_average_pooling(features, mask_fg)
    fg = torch.cat([glb_fg, glb_fg.mean(dim=0, keepdim=True)], dim=0)
    fg_valid = torch.cat([use_local.reshape(1).expand(s), (~use_local).reshape(1)], dim=0)
    if fits:
        loc_fg, ok_fg = window_prototypes(features, mask_fg, window, threshold)
        fg = torch.cat([loc_fg, fg], dim=0)
        fg_valid = torch.cat([ok_fg & use_local, fg_valid], dim=0)
    return bg, bg_valid, fg, fg_valid


def masked_softmax_score(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``Σ_k softmax_k(a) · a_k`` over the valid candidates only (dim 1), the rule of :func:`prototype_scores`.

    Args:
        logits: ``[B, N, h, w]`` scaled cosines ``a``.
        valid: bool mask broadcastable to ``logits`` (at least one valid candidate per position).

    Returns:
        ``[B, 1, h, w]``.
    """
    # -1e4 (a literal: TorchScript does not read module-level floats) is far below any cosine logit (|a| <= scale),
    # so an invalid candidate gets exactly zero weight
    weights = torch.softmax(logits.masked_fill(~valid, -1.0e4), dim=1)
    return torch.sum(weights * logits.masked_fill(~valid, 0.0), dim=1, keepdim=True)


def masked_prototype_scores(
    query: torch.Tensor, prototypes: torch.Tensor, valid: torch.Tensor, scale: float = SCALE
) -> torch.Tensor:
    """:func:`prototype_scores` against the valid rows of a fixed-size candidate matrix.

    Args:
        query: ``[B, C, h, w]`` query features.
        prototypes: ``[N, C]`` candidates.
        valid: ``[N]`` bool flags (at least one true).
        scale: cosine scale.

    Returns:
        ``[B, 1, h, w]`` scores, equal (up to rounding) to ``prototype_scores(query, prototypes[valid], scale)``.
    """
    q = safe_normalize(query, 1, 1e-4)
    p = safe_normalize(prototypes.to(query.dtype), 1, 1e-4)
    a = F.conv2d(q, p[:, :, None, None]) * scale
    return masked_softmax_score(a, valid.reshape(1, -1, 1, 1))


class ALPExportHead(nn.Module):
    """Fixed-size :class:`ALPHead` for export: same logits, TorchScript-compatible and traceable to ONNX.

    Built by :meth:`ALPHead.export_head` for one window (evaluation: ``test_window``). Candidates come from
    :func:`alp_prototype_sets` and are scored by :func:`masked_prototype_scores`. It keeps the eager head's input
    checks as ``ValueError`` (:func:`check_support_mask`, not while tracing) but not its counters, ``last_info`` or
    the warning about FG masks that vanish on the grid.

    Args:
        window: local-prototype window.
        threshold: strict threshold of local prototypes.
        fg_mode_threshold: non-strict threshold of the FG mode test.
        fg_mode_window: window of the FG mode test.
        scale: cosine scale.

    Examples::

        head = ALPHead().export_head(window=2)
        low = torch.jit.script(head)(torch.randn(1, 256, 32, 32), mask, torch.randn(4, 256, 32, 32))  # [4, 2, 32, 32]
    """

    def __init__(
        self,
        window: int = 2,
        threshold: float = LOCAL_THRESHOLD,
        fg_mode_threshold: float = FG_MODE_THRESHOLD,
        fg_mode_window: int = FG_MODE_WINDOW,
        scale: float = SCALE,
    ) -> None:
        super().__init__()
        self.window = int(window)
        self.threshold = float(threshold)
        self.fg_mode_threshold = float(fg_mode_threshold)
        self.fg_mode_window = int(fg_mode_window)
        self.scale = float(scale)

    def forward(
        self, support_features: torch.Tensor, support_fg_mask: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """``[S, C, h, w]``, ``[S, 1, H, W]`` FG masks, ``[B, C, hq, wq]`` -> ``[B, 2, hq, wq]`` [BG, FG] logits."""
        fg, m_fg, m_bg = support_masks_on_grid(support_features, support_fg_mask)
        check_support_mask(fg)
        bg_p, bg_v, fg_p, fg_v = alp_prototype_sets(
            support_features, m_fg, m_bg, self.window, self.threshold, self.fg_mode_threshold, self.fg_mode_window
        )
        bg_score = masked_prototype_scores(query_features, bg_p, bg_v, self.scale)
        fg_score = masked_prototype_scores(query_features, fg_p, fg_v, self.scale)
        return torch.cat([bg_score, fg_score], dim=1)
