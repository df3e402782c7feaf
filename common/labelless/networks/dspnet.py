# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""DSPNet head: SSL-ALPNet prototypes refined by FSPA, BCMA and a support←query cross attention (dspnet.md).

Building blocks (each usable on its own; all follow the device and dtype of their inputs):

- :func:`support_query_attention` / :class:`SupportQueryAttention` (§2): the intended support←query attention
  ``F_su = F_s + Σ_k softmax_k(cos(F_s(l), F_q(k)) / τ) F_q(k)``, batched over queries and shots, for any support and
  query grid sizes; no parameters.
- :func:`distance_transform` (squared Euclidean distance to the nearest zero, exact, in torch), :func:`fspa_seeds`
  (§3.1), :func:`soft_cluster` (§3.2) and :class:`FSPA` (§3.3-§3.4): the foreground prototype from soft "superpixel"
  clusters, or the single-prototype fallback.
- :class:`BCMA` (§4): channel mixing of local prototypes with the learnable tridiagonal matrix ``Cal`` modulated by a
  channel-Gram attention; :data:`BCMA_PRESETS` and :func:`bcma_hyperparameters` (§4.1); ``param_groups`` (§4.2).
- :class:`DSPNetHead` (§5): a drop-in replacement of :class:`~labelless.networks.prototypes.ALPHead` (same call
  signature, so it plugs into :class:`~labelless.networks.fewshot.FewShotSegmentor` and
  :func:`~labelless.losses.prototype_alignment_loss` unchanged); with ``use_fspa``, ``use_bcma`` and
  ``use_cross_attention`` all off it computes exactly what ``ALPHead`` computes.
- :func:`build_dspnet_segmentor` and :func:`dspnet_param_groups` (§6: SGD groups, ``Cal`` at ``lr × 1e-4``).

Seeding on the feature grid (§3.1, §7) runs in torch on the features' device: the Euclidean distance transform of a
≤ h×w crop is computed exactly by brute force (squared distances of every cell to every zero cell of the crop, in
blocks), and the next seed's distance map is the element-wise minimum with the distances to the previous seed (adding
a zero cell can only shorten distances), so no map is recomputed and nothing goes through numpy. Only a few scalars
(mask area, bounding box) are read back per shot. ``gaussian_filter(D, sigma=0.1)`` of the reference is the exact
identity (scipy's kernel radius ``int(4·0.1 + 0.5) = 0``) and is omitted. A crop without any zero cell (an exactly
rectangular mask) reproduces scipy's ``distance_transform_edt`` result for that case, the distance to a virtual zero at
(row −1, column 0) of the crop, which puts the first seed in the bottom-right corner (parity).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import ConfigError
from labelless.networks.fewshot import FewShotSegmentor, build_fewshot_segmentor
from labelless.networks.prototypes import (
    FG_MODE_THRESHOLD,
    FG_MODE_WINDOW,
    LOCAL_THRESHOLD,
    SCALE,
    ALPExportHead,
    ALPHead,
    bg_prototypes,
    check_support_mask,
    fg_local_flag,
    fg_uses_local,
    local_prototypes,
    masked_average_pooling,
    masked_softmax_score,
    prototype_scores,
    safe_normalize,
    support_masks_on_grid,
)
from labelless.utils import as_bool

__all__ = [
    "BCMA_PRESETS",
    "DATASET_GROUPS",
    "bcma_hyperparameters",
    "support_query_attention",
    "SupportQueryAttention",
    "distance_transform",
    "fspa_seeds",
    "soft_cluster",
    "FSPA",
    "BCMA",
    "DSPNetHead",
    "DSPNetExportHead",
    "fixed_fspa_seeds",
    "fixed_soft_cluster",
    "build_dspnet_segmentor",
    "dspnet_param_groups",
    "HEAD_LR_MULTIPLIER",
]

# (setting, anatomy group) -> (alpha, (w1, w2, w3)); README of the reference (dspnet.md §4.1). Card-MRI Setting 2 is
# not defined.
BCMA_PRESETS: dict[tuple[int, str], tuple[float, tuple[float, float, float]]] = {
    (1, "abdominal"): (0.3, (0.2, 0.8, 0.2)),
    (1, "cardiac"): (0.3, (0.1, 0.9, 0.1)),
    (2, "abdominal"): (0.2, (0.3, 0.6, 0.3)),
}
# dataset preset name -> anatomy group of BCMA_PRESETS (Abd CT and MRI share a row; phantoms follow their anatomy)
DATASET_GROUPS: dict[str, str] = {
    "chaos": "abdominal",
    "synapse": "abdominal",
    "phantom_abdomen": "abdominal",
    "cmr": "cardiac",
    "phantom_cardiac": "cardiac",
}
HEAD_LR_MULTIPLIER = 1e-4  # Cal's learning rate is lr × 1e-4 (reference parity, dspnet.md §4.2)

_DEFAULT_ALPHA, _DEFAULT_WEIGHTS = BCMA_PRESETS[(1, "abdominal")]
_DT_BLOCK = 1 << 22  # max entries of one block of the brute-force distance matrix


def bcma_hyperparameters(
    dataset: str,
    setting: int,
    alpha: float | None = None,
    alpha_bg: float | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """BCMA α (FG and BG) and (w1, w2, w3) for a dataset and setting (dspnet.md §4.1); explicit values win.

    Args:
        dataset: dataset preset name (``chaos``, ``synapse``, ``cmr``, ``phantom_abdomen``, ``phantom_cardiac``).
        setting: 1 or 2.
        alpha: override of α (``bcma_alpha``).
        alpha_bg: override of the BG α (``bcma_alpha_bg``; default: the FG α).
        weights: override of (w1, w2, w3) (``bcma_weights``).

    Returns:
        ``{"alpha": float, "alpha_bg": float, "weights": (w1, w2, w3)}``.

    Raises:
        ConfigError: unknown dataset or setting, a table row that does not exist (Card-MRI Setting 2) while a value is
            not overridden, or weights that are not three numbers.
    """
    name = str(dataset).strip().lower()
    if name not in DATASET_GROUPS:
        raise ConfigError(f"unknown dataset {dataset!r} for the BCMA presets; expected one of {sorted(DATASET_GROUPS)}")
    try:
        setting_i = int(setting)
    except (TypeError, ValueError):
        raise ConfigError(f"setting must be 1 or 2, got {setting!r}") from None
    if setting_i not in (1, 2):
        raise ConfigError(f"setting must be 1 or 2, got {setting!r}")
    row = BCMA_PRESETS.get((setting_i, DATASET_GROUPS[name]))
    if row is None and (alpha is None or weights is None):
        raise ConfigError(
            f"DSPNet defines no BCMA hyperparameters for {DATASET_GROUPS[name]} data ({name!r}) in Setting "
            f"{setting_i}; give bcma_alpha and bcma_weights explicitly"
        )
    a = float(alpha) if alpha is not None else row[0]
    w = tuple(float(v) for v in weights) if weights is not None else row[1]
    if len(w) != 3:
        raise ConfigError(f"bcma_weights must be three numbers (w1, w2, w3), got {weights!r}")
    return {"alpha": a, "alpha_bg": a if alpha_bg is None else float(alpha_bg), "weights": w}


# ---------------------------------------------------------------------------------------------------- §2 attention
def _check_attention_inputs(support_features: torch.Tensor, query_features: torch.Tensor, temperature: float) -> None:
    if support_features.dim() != 4 or query_features.dim() != 4:
        raise ValueError(
            f"support and query features must be [S, C, h, w] and [B, C, hq, wq], got "
            f"{tuple(support_features.shape)} and {tuple(query_features.shape)}"
        )
    if support_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"channel mismatch: support {support_features.shape[1]}, query {query_features.shape[1]} channels"
        )
    if not float(temperature) > 0.0:
        raise ValueError(f"attention temperature must be positive, got {temperature!r}")


def support_query_attention(
    support_features: torch.Tensor, query_features: torch.Tensor, temperature: float = 1.0, eps: float = 1e-5
) -> torch.Tensor:
    """Support←query cross attention (dspnet.md §2), every query against every shot.

    ``A[l, k] = softmax_k(cos(F_s(l), F_q(k)) / τ)``; ``F_su(l) = F_s(l) + Σ_k A[l, k] F_q(k)`` (residual). The
    cosine uses ``n(v) = v / max(‖v‖, eps)``. No parameters; support and query grids may differ.

    Args:
        support_features: ``[S, C, h, w]``.
        query_features: ``[B, C, hq, wq]``.
        temperature: τ > 0.
        eps: lower bound of the feature norms in the cosine.

    Returns:
        ``[B, S, C, h, w]`` refined support features (query b refines every shot).

    Raises:
        ValueError: bad shapes, channel mismatch or a non-positive temperature.
    """
    if not torch.jit.is_scripting():
        _check_attention_inputs(support_features, query_features, temperature)
    s, c = support_features.shape[0], support_features.shape[1]
    h, w = support_features.shape[2], support_features.shape[3]
    fs = support_features.reshape(s, c, h * w)
    fq = query_features.to(support_features.dtype).flatten(2)  # [B, C, HWq]
    cos = torch.einsum("scl,bck->bslk", safe_normalize(fs, 1, eps), safe_normalize(fq, 1, eps))
    att = torch.softmax(cos / float(temperature), dim=-1)  # [B, S, HWs, HWq], rows sum to 1 over query positions
    attended = torch.einsum("bslk,bck->bscl", att, fq)
    return (fs.unsqueeze(0) + attended).reshape(-1, s, c, h, w)


class SupportQueryAttention(nn.Module):
    """Parameter-free support←query cross attention (dspnet.md §2); see :func:`support_query_attention`.

    Args:
        temperature: softmax temperature τ (``attention_temperature``; 1.0 = the reference's none).
        eps: lower bound of the feature norms in the cosine (1e-5).

    Examples::

        att = SupportQueryAttention()
        refined = att(torch.randn(1, 256, 32, 32), torch.randn(4, 256, 24, 24))  # [4, 1, 256, 32, 32]
    """

    def __init__(self, temperature: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        if not float(temperature) > 0.0:
            raise ConfigError(f"attention_temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)
        self.eps = float(eps)

    def forward(self, support_features: torch.Tensor, query_features: torch.Tensor) -> torch.Tensor:
        """``[S, C, h, w]``, ``[B, C, hq, wq]`` -> ``[B, S, C, h, w]`` refined support features."""
        return support_query_attention(support_features, query_features, self.temperature, self.eps)


# ---------------------------------------------------------------------------------------------------- §3 FSPA
def _grid_coords(h: int, w: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([rows, cols], dim=-1).reshape(-1, 2)  # [h*w, 2], row-major


def _sq_dist_to_set(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """min_t ‖p − t‖² for every point (exact for integer coordinates), in blocks of bounded memory."""
    step = max(1, _DT_BLOCK // max(1, targets.shape[0]))
    out = [
        ((points[i : i + step, None, :] - targets[None, :, :]) ** 2).sum(-1).amin(dim=1)
        for i in range(0, points.shape[0], step)
    ]
    return torch.cat(out) if out else points.new_zeros((0,))


def distance_transform(binary: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Exact Euclidean distance transform of a 2-D binary map: distance of every cell to the nearest zero cell.

    Only zeros inside the map count (the border is not background), as in ``scipy.ndimage.distance_transform_edt``;
    zero cells get 0. A map without any zero gets scipy's result for that case, the distance to a virtual zero at
    (row −1, column 0).

    Args:
        binary: ``[h, w]`` bool or 0/1 tensor.
        squared: return squared distances (exact integers) instead of distances.

    Returns:
        ``[h, w]`` float32 tensor on the input's device.

    Raises:
        ValueError: not a 2-D map.
    """
    if binary.dim() != 2:
        raise ValueError(f"distance_transform expects a 2-D map, got shape {tuple(binary.shape)}")
    h, w = binary.shape
    coords = _grid_coords(h, w, binary.device)
    inside = (binary != 0).reshape(-1)
    zeros = coords[~inside]
    if zeros.shape[0] == 0:
        zeros = coords.new_tensor([[-1.0, 0.0]])
    d2 = _sq_dist_to_set(coords, zeros).reshape(h, w)
    return d2 if squared else torch.sqrt(d2)


def _nearest_grid(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour subsampling ``[..., H, W] -> [..., h, w]``: cell (i, j) <- pixel (i·H // h, j·W // w)."""
    hh, ww = mask.shape[-2:]
    rows = torch.arange(size[0], device=mask.device) * hh // size[0]
    cols = torch.arange(size[1], device=mask.device) * ww // size[1]
    return mask[..., rows[:, None], cols[None, :]]


def fspa_seeds(mask: torch.Tensor, region_area: float = 100.0, max_clusters: int = 5) -> torch.Tensor:
    """Cluster seeds of one binary FG mask on the feature grid (dspnet.md §3.1), without gradients.

    ``J = min(round_half_even(area / region_area), max_clusters)``; no seeds when ``J <= 1``. Otherwise, inside the
    bounding box of the foreground, J times: take the first (row-major) maximum of the distance transform, record it
    and set that cell to 0 (the next seed is pushed away from it).

    Args:
        mask: ``[h, w]`` mask on the feature grid (cells ``> 0.5`` are foreground).
        region_area: average area of a cluster in cells (100).
        max_clusters: upper bound of J (5).

    Returns:
        ``[J, 2]`` int64 (row, column) seeds on the full grid, distinct and inside the mask; ``[0, 2]`` when
        ``J <= 1`` (the caller uses the single-prototype fallback).

    Raises:
        ValueError: not a 2-D map, ``region_area < 1`` or ``max_clusters < 0``.
    """
    if mask.dim() != 2:
        raise ValueError(f"fspa_seeds expects a 2-D mask, got shape {tuple(mask.shape)}")
    if float(region_area) < 1.0 or int(max_clusters) < 0:
        raise ValueError(f"need region_area >= 1 and max_clusters >= 0, got {region_area}, {max_clusters}")
    empty = torch.zeros((0, 2), dtype=torch.long, device=mask.device)
    with torch.no_grad():
        fg = mask.detach() > 0.5
        area = int(fg.sum())
        n_seeds = min(round(area / float(region_area)), int(max_clusters))  # Python round: half to even
        if n_seeds <= 1:
            return empty
        rows = torch.nonzero(fg.any(dim=1)).flatten()
        cols = torch.nonzero(fg.any(dim=0)).flatten()
        r0, r1, c0, c1 = (int(v) for v in torch.stack([rows[0], rows[-1], cols[0], cols[-1]]).tolist())
        roi = fg[r0 : r1 + 1, c0 : c1 + 1]
        coords = _grid_coords(roi.shape[0], roi.shape[1], mask.device)
        d2 = distance_transform(roi, squared=True).reshape(-1)
        had_zero = not bool(roi.all())
        picks = []
        for _ in range(n_seeds):
            k = torch.argmax(d2)  # first maximum in row-major order (squared distances are exact integers)
            picks.append(k)
            to_seed = ((coords - coords[k]) ** 2).sum(-1)
            # the seed becomes a zero cell; without earlier zeros it is the first real one (scipy's virtual zero goes)
            d2 = torch.minimum(d2, to_seed) if had_zero else to_seed
            had_zero = True
        idx = torch.stack(picks)
        offset = torch.tensor([r0, c0], dtype=torch.long, device=mask.device)
        return torch.stack([idx // roi.shape[1], idx % roi.shape[1]], dim=1) + offset


def soft_cluster(
    features: torch.Tensor,
    roi: torch.Tensor,
    seeds: torch.Tensor,
    iterations: int = 10,
    feature_scale: float = 100.0,
    coord_scale: float = 100.0,
) -> torch.Tensor:
    """Soft clustering of the ROI cells on features + grid coordinates (dspnet.md §3.2), without gradients.

    ``f(x) = [F(:, x); row(x); col(x)]``, centres start at ``f(seed_j)``; each iteration
    ``d(x, j) = sqrt(‖f_C(x) − c_j,C‖² / feature_scale + ‖xy(x) − c_j,xy‖² / coord_scale)``,
    ``a(·, j) = softmax_{x ∈ ROI}(−d(·, j))`` (= ``exp(−d)`` normalised over the ROI, computed stably) and
    ``c_j = Σ_x a(x, j) f(x)``.

    Args:
        features: ``[C, h, w]`` features of one shot.
        roi: ``[h, w]`` bool, the cells that take part (non-empty).
        seeds: ``[J, 2]`` (row, column) initial centres on the grid (inside or outside the ROI).
        iterations: number of updates (10).
        feature_scale: divisor of the squared feature distance (100).
        coord_scale: divisor of the squared coordinate distance (100).

    Returns:
        ``[J, C]`` centres (feature part only), detached.

    Raises:
        ValueError: bad shapes, an empty ROI or no seeds.
    """
    if features.dim() != 3 or roi.shape != features.shape[-2:]:
        raise ValueError(f"features must be [C, h, w] and roi [h, w], got {tuple(features.shape)}, {tuple(roi.shape)}")
    if seeds.dim() != 2 or seeds.shape[1] != 2 or seeds.shape[0] == 0:
        raise ValueError(f"seeds must be a non-empty [J, 2] tensor, got {tuple(seeds.shape)}")
    with torch.no_grad():
        c, h, w = features.shape
        f = features.detach().reshape(c, h * w).t()  # [HW, C]
        xy = _grid_coords(h, w, features.device, features.dtype)
        sel = roi.reshape(-1).to(device=features.device, dtype=torch.bool)
        fr, xyr = f[sel], xy[sel]
        if fr.shape[0] == 0:
            raise ValueError("soft_cluster needs a non-empty ROI")
        idx = seeds[:, 0].to(features.device) * w + seeds[:, 1].to(features.device)
        c_f, c_xy = f[idx], xy[idx]
        for _ in range(int(iterations)):
            d2 = ((fr[None] - c_f[:, None]) ** 2).sum(-1) / float(feature_scale)
            d2 = d2 + ((xyr[None] - c_xy[:, None]) ** 2).sum(-1) / float(coord_scale)  # [J, P]
            a = torch.softmax(-torch.sqrt(d2), dim=1)
            c_f, c_xy = a @ fr, a @ xyr
        return c_f


class FSPA(nn.Module):
    """Foreground semantic prototype attention (dspnet.md §3): one high-fidelity FG prototype per query.

    Per shot: seeds from the full-resolution mask (nearest-neighbour subsampled to the grid, §3.1); with ≥ 2 seeds and
    a non-empty ROI (cells with ``M_fg >= roi_threshold``), soft clustering of ``F_s`` gives centres ``Ctr`` and
    ``R = Ctr · softmax_HW(<F_su(x), c_j>)`` (§3.3); otherwise the fallback ``p0 = MAP(F_su, M_fg)``,
    ``R = p0 · softmax_HW(<F_su(x), p0>)`` (§3.4). The prototype is ``MAP(R + F_s, M_fg)``; the shots' prototypes
    are averaged (§1 decision). Clustering is detached; gradients flow through the attention and the MAPs.
    Per-call information in ``last_info``: ``clusters`` (J per shot, 0 = fallback), ``empty_roi`` (shots whose ROI
    was empty although seeds existed).

    Args:
        region_area: average cluster area in grid cells (100).
        max_clusters: at most this many clusters (5).
        iterations: soft-clustering iterations (10).
        roi_threshold: cells with ``M_fg >= roi_threshold`` take part in the clustering (``1 − 1e-6``).
        feature_scale: divisor of the squared feature distance (100).
        coord_scale: divisor of the squared coordinate distance (100).

    Examples::

        fspa = FSPA()
        fs = torch.randn(1, 256, 32, 32)
        full = torch.zeros(1, 1, 256, 256)
        full[..., 32:224, 40:200] = 1
        m_fg = F.interpolate(full, size=(32, 32), mode="bilinear")
        proto = fspa(fs, m_fg, seed_mask=full)  # [1, 256]
    """

    def __init__(
        self,
        region_area: float = 100.0,
        max_clusters: int = 5,
        iterations: int = 10,
        roi_threshold: float = 1.0 - 1e-6,
        feature_scale: float = 100.0,
        coord_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if float(region_area) < 1.0 or int(max_clusters) < 0 or int(iterations) < 0:
            raise ConfigError(
                f"need region_area >= 1, max_clusters >= 0 and iterations >= 0, got {region_area}, {max_clusters}, "
                f"{iterations}"
            )
        self.region_area = float(region_area)
        self.max_clusters = int(max_clusters)
        self.iterations = int(iterations)
        self.roi_threshold = float(roi_threshold)
        self.feature_scale = float(feature_scale)
        self.coord_scale = float(coord_scale)
        self.last_info: dict[str, Any] = {}

    def centres(
        self, features: torch.Tensor, mask_fg: torch.Tensor, seed_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, int]:
        """Cluster centres of one shot, or ``None`` for the fallback.

        Args:
            features: ``[C, h, w]``.
            mask_fg: ``[h, w]`` soft FG mask on the grid (defines the ROI).
            seed_mask: ``[H, W]`` FG mask at any resolution (subsampled to the grid for the seeds).

        Returns:
            ``([J, C] detached centres or None, number of seeds)``; ``None`` with fewer than 2 seeds or an empty ROI.
        """
        seeds = fspa_seeds(_nearest_grid(seed_mask, tuple(features.shape[-2:])), self.region_area, self.max_clusters)
        n = int(seeds.shape[0])
        if n < 2:
            return None, n
        roi = mask_fg >= self.roi_threshold
        if not bool(roi.any()):
            return None, n
        return soft_cluster(features, roi, seeds, self.iterations, self.feature_scale, self.coord_scale), n

    def forward(
        self,
        support_features: torch.Tensor,
        mask_fg: torch.Tensor,
        refined: torch.Tensor | None = None,
        seed_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """FG prototype(s).

        Args:
            support_features: ``[S, C, h, w]``.
            mask_fg: ``[S, 1, h, w]`` soft FG mask on the feature grid.
            refined: ``[B, S, C, h, w]`` support features refined by each query (cross attention), or ``None``
                (``F_su = F_s``, B = 1).
            seed_mask: ``[S, 1, H, W]`` FG mask for the seeds, or ``None`` to always use the fallback (PAR).

        Returns:
            ``[B, C]`` prototypes (``[1, C]`` without ``refined``).

        Raises:
            ValueError: mismatched shapes.
        """
        s, c, h, w = support_features.shape
        if mask_fg.shape != (s, 1, h, w):
            raise ValueError(f"mask_fg must be {(s, 1, h, w)}, got {tuple(mask_fg.shape)}")
        if refined is None:
            refined = support_features.unsqueeze(0)
        if refined.dim() != 5 or tuple(refined.shape[1:]) != (s, c, h, w):
            raise ValueError(f"refined features must be [B, {s}, {c}, {h}, {w}], got {tuple(refined.shape)}")
        if seed_mask is not None and (seed_mask.dim() != 4 or seed_mask.shape[:2] != (s, 1)):
            raise ValueError(f"seed_mask must be [{s}, 1, H, W], got {tuple(seed_mask.shape)}")
        b = refined.shape[0]
        mask = mask_fg.to(support_features.dtype)
        clusters: list[int] = []
        empty_roi: list[int] = []
        protos = []
        for k in range(s):
            fsu = refined[:, k].flatten(2)  # [B, C, HW]
            ctr = None
            if seed_mask is not None:
                ctr, n_seeds = self.centres(support_features[k], mask[k, 0], seed_mask[k, 0])
                if ctr is None and n_seeds >= 2:
                    empty_roi.append(k)
            if ctr is not None:
                att = torch.softmax(torch.einsum("jc,bcx->bjx", ctr, fsu), dim=-1)  # [B, J, HW]
                r = torch.einsum("jc,bjx->bcx", ctr, att)
                clusters.append(int(ctr.shape[0]))
            else:
                m_flat = mask[k, 0].reshape(1, 1, h * w)
                p0 = (fsu * m_flat).sum(-1) / (m_flat.sum(-1) + 1e-5)  # MAP(F_su, M_fg), [B, C]
                att = torch.softmax(torch.einsum("bc,bcx->bx", p0, fsu), dim=-1)  # [B, HW]
                r = p0[:, :, None] * att[:, None, :]
                clusters.append(0)
            fused = r.reshape(b, c, h, w) + support_features[k : k + 1]
            protos.append(masked_average_pooling(fused, mask[k : k + 1].expand(b, 1, h, w)))
        self.last_info = {"clusters": clusters, "empty_roi": empty_roi}
        return torch.stack(protos, dim=0).mean(dim=0)


# ---------------------------------------------------------------------------------------------------- §4 BCMA
class BCMA(nn.Module):
    """Background channel-structural multi-head attention (dspnet.md §4) on a set of local prototypes.

    For prototypes ``X ∈ R^{C×N}`` (given as rows, ``[N, C]``): ``G = X Xᵀ``,
    ``W = (1 + α · (T ⊙ softmax_row(G))) ⊙ Cal`` with the tridiagonal 0/1 band ``T``, and ``X' = W X``. ``Cal`` is a
    learnable ``C×C`` matrix initialised to the identity with rows ``1..C−2`` replaced by ``(w1, w2, w3)`` on the
    columns ``i−1, i, i+1``. With α = 0 and weights (0, 1, 0) the module is the identity.

    Args:
        channels: C (256).
        alpha: α (default of :meth:`forward`).
        weights: (w1, w2, w3).
        lr_multiplier: learning-rate factor of ``Cal`` in :meth:`param_groups` (1e-4).

    Examples::

        bcma = BCMA(256, *BCMA_PRESETS[(2, "abdominal")])
        mixed = bcma(torch.randn(64, 256))  # [64, 256]
        groups = bcma.param_groups(1e-3)  # [{"params": [Cal], "lr": 1e-7, ...}]
    """

    def __init__(
        self,
        channels: int = 256,
        alpha: float = _DEFAULT_ALPHA,
        weights: Sequence[float] = _DEFAULT_WEIGHTS,
        lr_multiplier: float = HEAD_LR_MULTIPLIER,
    ) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ConfigError(f"channels must be positive, got {channels!r}")
        w = tuple(float(v) for v in weights)
        if len(w) != 3:
            raise ConfigError(f"bcma weights must be three numbers (w1, w2, w3), got {weights!r}")
        c = int(channels)
        self.channels = c
        self.alpha = float(alpha)
        self.weights = w
        self.lr_multiplier = float(lr_multiplier)
        cal = torch.eye(c)
        for i in range(1, c - 1):
            cal[i, i - 1 : i + 2] = torch.tensor(w)
        self.cal = nn.Parameter(cal)
        band = torch.ones(c, c).triu(-1).tril(1)
        self.register_buffer("band", band, persistent=False)

    def mixing_matrix(self, prototypes: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        """``W = (1 + α (T ⊙ softmax_row(X Xᵀ))) ⊙ Cal`` for prototypes ``[N, C]``; ``[C, C]``."""
        if not torch.jit.is_scripting():
            if prototypes.dim() != 2 or prototypes.shape[1] != self.channels:
                raise ValueError(f"prototypes must be [N, {self.channels}], got {tuple(prototypes.shape)}")
        a = self.alpha if alpha is None else float(alpha)
        gram = prototypes.t() @ prototypes  # [C, C]
        att = 1.0 + a * (self.band.to(gram.dtype) * torch.softmax(gram, dim=1))
        return att * self.cal.to(gram.dtype)

    def forward(self, prototypes: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        """Mix ``[N, C]`` prototypes along the channel axis (``X' = W X``); α defaults to ``self.alpha``."""
        return prototypes @ self.mixing_matrix(prototypes, alpha).t()

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """One optimiser group: ``Cal`` at ``base_lr × lr_multiplier``."""
        return [{"params": [self.cal], "lr": float(base_lr) * self.lr_multiplier, "name": "bcma"}]


# ---------------------------------------------------------------------------------------------------- §5 head
def _per_query_scores(
    query: torch.Tensor, shared: torch.Tensor | None, per_query: torch.Tensor, scale: float
) -> torch.Tensor:
    """Soft-max scores of query b against ``shared ∪ {per_query[b]}`` (the rule of ``prototype_scores``)."""
    q = safe_normalize(query, dim=1)
    a = (q * safe_normalize(per_query.to(query.dtype), dim=1)[:, :, None, None]).sum(dim=1, keepdim=True) * scale
    if shared is not None and shared.shape[0] > 0:
        p = safe_normalize(shared.to(query.dtype), dim=1)
        a = torch.cat([F.conv2d(q, p[:, :, None, None]) * scale, a], dim=1)
    return torch.sum(F.softmax(a, dim=1) * a, dim=1, keepdim=True)


class DSPNetHead(ALPHead):
    """DSPNet prototype head (dspnet.md §5): ALP with FSPA, BCMA and support←query cross attention.

    Same call signature as :class:`~labelless.networks.prototypes.ALPHead`, so it plugs into
    :class:`~labelless.networks.fewshot.FewShotSegmentor` and :func:`~labelless.losses.prototype_alignment_loss`.

    - Background: all ``Pool_k`` windows of the support are mixed by BCMA (``bcma_alpha_bg``), those with
      ``Pool_k(M_bg) > 0.95`` are the prototypes; none -> the shot-averaged global BG prototype (ALP §3.3, no BCMA).
    - Foreground: mode test as ALP. The global prototype is FSPA's (one per query: the cross attention makes it depend
      on the query; shots averaged). Local mode: BCMA-mixed (``bcma_alpha``) local FG prototypes ∪ {FSPA prototype}
      with the soft-max score; global mode: the scaled cosine with the FSPA prototype.
    - ``cluster`` (forward): FSPA clustering needs the full-resolution mask; by default it is on when the given mask
      is not on the feature grid (the segmentor's call) and off when it is (PAR, which always uses the fallback).
    - Switches: without ``use_fspa`` the global prototypes are the plain per-shot MAPs of ALP (and the cross
      attention, which only feeds FSPA, is not computed); without ``use_bcma`` the local prototypes are not mixed
      (and ``Cal`` does not exist; a checkpoint's ``Cal`` is then ignored by
      :func:`~labelless.io.checkpoint.load_network_weights`, see ``unused_checkpoint_keys``); without
      ``use_cross_attention`` FSPA uses ``F_su = F_s``. All three off gives exactly ``ALPHead``'s logits.

    ``last_info`` adds ``fspa_clusters`` (J per shot, 0 = fallback; ``[]`` without FSPA) and ``fspa_empty_roi``;
    the counter ``fspa_fallback_count`` counts calls in which every shot used the FSPA fallback.

    Args:
        channels: feature channels C (size of ``Cal``).
        use_fspa: FSPA global FG prototype.
        use_bcma: BCMA on the local prototypes.
        use_cross_attention: refine the support with the query before FSPA.
        bcma_alpha: α of the FG local prototypes.
        bcma_alpha_bg: α of the BG local prototypes (default ``bcma_alpha``).
        bcma_weights: (w1, w2, w3) of ``Cal``'s initial band.
        attention_temperature: τ of the cross attention.
        head_lr_multiplier: learning-rate factor of ``Cal`` in :meth:`param_groups`.
        region_area: FSPA average cluster area (grid cells).
        max_clusters: FSPA maximum number of clusters.
        cluster_iterations: FSPA soft-clustering iterations.
        threshold: strict threshold of local prototypes (BG and FG).
        fg_mode_threshold: non-strict threshold of the FG mode test.
        fg_mode_window: window of the FG mode test.
        scale: cosine scale.
        allow_empty_fg: default of ``allow_empty_fg`` in :meth:`forward`.

    Examples::

        hp = bcma_hyperparameters("chaos", setting=2)  # alpha 0.2, weights (0.3, 0.6, 0.3)
        head = DSPNetHead(256, bcma_alpha=hp["alpha"], bcma_alpha_bg=hp["alpha_bg"], bcma_weights=hp["weights"])
        fs, fq = torch.randn(1, 256, 32, 32), torch.randn(2, 256, 32, 32)
        mask = torch.zeros(1, 1, 256, 256)
        mask[..., 40:220, 30:200] = 1
        logits = head(fs, mask, fq, window=2, output_size=(256, 256))  # [2, 2, 256, 256]
    """

    def __init__(
        self,
        channels: int = 256,
        use_fspa: bool = True,
        use_bcma: bool = True,
        use_cross_attention: bool = True,
        bcma_alpha: float = _DEFAULT_ALPHA,
        bcma_alpha_bg: float | None = None,
        bcma_weights: Sequence[float] = _DEFAULT_WEIGHTS,
        attention_temperature: float = 1.0,
        head_lr_multiplier: float = HEAD_LR_MULTIPLIER,
        region_area: float = 100.0,
        max_clusters: int = 5,
        cluster_iterations: int = 10,
        threshold: float = LOCAL_THRESHOLD,
        fg_mode_threshold: float = FG_MODE_THRESHOLD,
        fg_mode_window: int = FG_MODE_WINDOW,
        scale: float = SCALE,
        allow_empty_fg: bool = False,
    ) -> None:
        super().__init__(threshold, fg_mode_threshold, fg_mode_window, scale, allow_empty_fg)
        self.channels = int(channels)
        self.use_fspa = as_bool(use_fspa, "use_fspa")
        self.use_bcma = as_bool(use_bcma, "use_bcma")
        self.use_cross_attention = as_bool(use_cross_attention, "use_cross_attention")
        self.bcma_alpha = float(bcma_alpha)
        self.bcma_alpha_bg = self.bcma_alpha if bcma_alpha_bg is None else float(bcma_alpha_bg)
        self.head_lr_multiplier = float(head_lr_multiplier)
        self.bcma = BCMA(self.channels, self.bcma_alpha, bcma_weights, head_lr_multiplier) if self.use_bcma else None
        # a checkpoint trained with BCMA still loads with BCMA switched off (test-time ablation; load_network_weights)
        self.unused_checkpoint_keys: tuple[str, ...] = () if self.use_bcma else ("bcma.cal",)
        self.fspa = FSPA(region_area, max_clusters, cluster_iterations) if self.use_fspa else None
        self.attention = (
            SupportQueryAttention(attention_temperature) if self.use_fspa and self.use_cross_attention else None
        )

    def reset_counters(self) -> None:
        """Set ``calls``, ``bg_fallback_count``, ``fg_global_count`` and ``fspa_fallback_count`` to 0."""
        super().reset_counters()
        self.fspa_fallback_count = 0

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimiser groups of the head: ``Cal`` at ``base_lr × head_lr_multiplier`` (empty without BCMA)."""
        return [] if self.bcma is None else self.bcma.param_groups(base_lr)

    def export_head(self, window: int) -> DSPNetExportHead:
        """The fixed-size, TorchScript/ONNX-compatible twin of this head for one window (:class:`DSPNetExportHead`;
        it shares ``Cal``)."""
        return DSPNetExportHead(self, int(window))

    def _mixed_windows(self, features: torch.Tensor, window: int) -> torch.Tensor:
        """All ``Pool_k`` windows, shot-major then raster order, as ``[N, C]`` (the columns of X)."""
        c = features.shape[1]
        return F.avg_pool2d(features, window).permute(0, 2, 3, 1).reshape(-1, c)

    def _select(self, mixed: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
        frac = F.avg_pool2d(mask.to(mixed.dtype), window).reshape(-1)
        return mixed[frac > self.threshold]

    def forward(
        self,
        support_features: torch.Tensor,
        support_fg_mask: torch.Tensor,
        query_features: torch.Tensor,
        window: int = 4,
        output_size: int | Sequence[int] | None = None,
        support_bg_mask: torch.Tensor | None = None,
        allow_empty_fg: bool | None = None,
        cluster: bool | None = None,
    ) -> torch.Tensor:
        """Two-channel [BG, FG] logits of the queries.

        Args:
            support_features: ``[S, C, h, w]``.
            support_fg_mask: ``[S, 1, H, W]`` (or ``[S, H, W]``) FG mask at image resolution, or on the feature grid.
            query_features: ``[B, C, hq, wq]``.
            window: local-prototype window (4 training, 2 testing).
            output_size: optional ``(H, W)`` to upsample the logits to.
            support_bg_mask: optional BG mask (default ``1 − support_fg_mask``).
            allow_empty_fg: accept all-zero FG masks (PAR parity); default ``self.allow_empty_fg``.
            cluster: FSPA clustering on/off; default: on unless the mask is already on the feature grid.

        Returns:
            ``[B, 2, hq, wq]`` logits, or ``[B, 2, *output_size]``.

        Raises:
            ValueError: mismatched shapes or channels (also with ``channels`` of BCMA).
            DataError: mask values outside [0, 1] or not finite, or an empty support FG mask (unless allowed).
        """
        if self.bcma is not None and support_features.dim() == 4 and support_features.shape[1] != self.channels:
            raise ValueError(
                f"DSPNetHead was built for {self.channels} channels (BCMA), the features have "
                f"{support_features.shape[1]}"
            )
        window = int(window)
        fg, m_fg, m_bg, empty, vanished = self._prepare_masks(
            support_features, support_fg_mask, query_features, window, support_bg_mask, allow_empty_fg
        )
        h, w = support_features.shape[-2:]
        fits = h >= window and w >= window
        mixed_bg = mixed_fg = None
        if self.bcma is not None and fits:
            windows = self._mixed_windows(support_features, window)
            mixed_bg = self.bcma(windows, self.bcma_alpha_bg)
            mixed_fg = mixed_bg if self.bcma_alpha == self.bcma_alpha_bg else self.bcma(windows, self.bcma_alpha)
        # background
        if self.bcma is None:
            protos_bg, bg_fallback = bg_prototypes(support_features, m_bg, window, self.threshold)
        else:
            protos_bg = self._select(mixed_bg, m_bg, window) if fits else support_features.new_zeros((0, self.channels))
            bg_fallback = protos_bg.shape[0] == 0
            if bg_fallback:
                protos_bg = masked_average_pooling(support_features, m_bg).mean(dim=0, keepdim=True)
        bg_score = prototype_scores(query_features, protos_bg, self.scale)
        # foreground
        fg_local = fg_uses_local(m_fg, self.fg_mode_threshold, self.fg_mode_window)
        local_fg = None
        if fg_local:
            if mixed_fg is not None:
                local_fg = self._select(mixed_fg, m_fg, window)
            else:
                local_fg = local_prototypes(support_features, m_fg, window, self.threshold)
        clusters: list[int] = []
        empty_roi: list[int] = []
        if self.fspa is None:
            glb = masked_average_pooling(support_features, m_fg)
            protos_fg = torch.cat([local_fg, glb], dim=0) if fg_local else glb.mean(dim=0, keepdim=True)
            fg_score = prototype_scores(query_features, protos_fg, self.scale)
            n_fg = int(protos_fg.shape[0])
        else:
            do_cluster = tuple(fg.shape[-2:]) != (h, w) if cluster is None else bool(cluster)
            refined = None if self.attention is None else self.attention(support_features, query_features)
            glb = self.fspa(support_features, m_fg, refined, fg if do_cluster else None)  # [B or 1, C]
            clusters = list(self.fspa.last_info["clusters"])
            empty_roi = list(self.fspa.last_info["empty_roi"])
            if glb.shape[0] == 1:
                protos_fg = torch.cat([local_fg, glb], dim=0) if fg_local else glb
                fg_score = prototype_scores(query_features, protos_fg, self.scale)
            else:
                fg_score = _per_query_scores(query_features, local_fg, glb, self.scale)
            n_fg = 1 + (int(local_fg.shape[0]) if fg_local else 0)
        logits = self._logits(bg_score, fg_score, output_size)
        if self.bcma is not None and torch.is_grad_enabled():
            # Cal drops out of the graph when no mixed window is selected (BG fallback and FG global mode); a
            # zero-valued term keeps every parameter in every training graph, as DistributedDataParallel requires
            logits = logits + 0.0 * self.bcma.cal.sum()

        self.calls += 1
        self.bg_fallback_count += int(bg_fallback)
        self.fg_global_count += int(not fg_local)
        self.fspa_fallback_count += int(self.fspa is not None and not any(clusters))
        self.last_info = {
            "bg_fallback": bg_fallback,
            "fg_local": fg_local,
            "n_bg_prototypes": int(protos_bg.shape[0]),
            "n_fg_prototypes": n_fg,
            "n_fg_local": int(local_fg.shape[0]) if fg_local else 0,
            "empty_fg_shots": empty,
            "vanished_fg_shots": vanished,
            "fspa_clusters": clusters,
            "fspa_empty_roi": empty_roi,
        }
        return logits


# ---------------------------------------------------------------------------------------------------- export
def fixed_fspa_seeds(
    mask: torch.Tensor, region_area: float = 100.0, max_clusters: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fspa_seeds` with a fixed number of outputs (TorchScript-compatible, traceable to ONNX).

    The crop to the foreground's bounding box becomes a box mask on the full grid (row-major order inside the box is
    the crop's), the distance transform is the brute-force one of :func:`distance_transform` on the full grid, and
    ``max_clusters`` seeds are always picked; the first ``n_seeds`` are :func:`fspa_seeds`' (0 when it gives none).

    Args:
        mask: ``[h, w]`` mask on the feature grid (cells ``> 0.5`` are foreground).
        region_area: average area of a cluster in cells.
        max_clusters: number of seeds picked (upper bound of J).

    Returns:
        ``([max_clusters] flat grid indices (int64), n_seeds)`` with ``n_seeds`` a 0-dim int64 tensor.
    """
    h, w = mask.shape[0], mask.shape[1]
    device = mask.device
    fg = mask > 0.5
    area = fg.sum().to(torch.float64)
    n = torch.clamp(torch.round(area / region_area), max=float(max_clusters))  # round half to even, as Python's
    n_seeds = torch.where(n > 1.0, n, torch.zeros_like(n)).to(torch.int64)
    coords = _grid_coords(h, w, device)
    rr, cc = coords[:, 0], coords[:, 1]
    rows = torch.arange(h, device=device, dtype=torch.float32)
    cols = torch.arange(w, device=device, dtype=torch.float32)
    row_any, col_any = fg.any(dim=1), fg.any(dim=0)
    r0 = torch.where(row_any, rows, float(h + w)).amin()
    r1 = torch.where(row_any, rows, -1.0).amax()
    c0 = torch.where(col_any, cols, float(h + w)).amin()
    c1 = torch.where(col_any, cols, -1.0).amax()
    box = (rr >= r0) & (rr <= r1) & (cc >= c0) & (cc <= c1)
    zero = box & ~fg.reshape(-1)
    had_zero = zero.any()
    pair = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)  # [hw, hw] exact squared distances
    to_zero = torch.where(zero[None, :], pair, float(4 * (h * h + w * w) + 4)).amin(dim=1)
    to_virtual = (rr - (r0 - 1.0)) ** 2 + (cc - c0) ** 2  # scipy's virtual zero at crop (row -1, column 0)
    d2 = torch.where(box, torch.where(had_zero, to_zero, to_virtual), -1.0)
    picks: list[torch.Tensor] = []
    for i in range(max_clusters):
        k = torch.argmax(d2)  # first maximum in row-major order, box cells only (others are -1)
        picks.append(k)
        to_seed = ((coords - coords[k]) ** 2).sum(-1)
        shorter = torch.minimum(d2, to_seed)
        if i == 0:
            shorter = torch.where(had_zero, shorter, to_seed)
        d2 = torch.where(box, shorter, -1.0)
    if max_clusters == 0:
        return torch.zeros(0, dtype=torch.int64, device=device), n_seeds
    return torch.stack(picks), n_seeds


def fixed_soft_cluster(
    features: torch.Tensor,
    roi: torch.Tensor,
    seeds: torch.Tensor,
    iterations: int = 10,
    feature_scale: float = 100.0,
    coord_scale: float = 100.0,
) -> torch.Tensor:
    """:func:`soft_cluster` over the whole grid with the cells outside the ROI masked out of every soft-max
    (TorchScript-compatible, traceable).

    Args:
        features: ``[C, h, w]`` features of one shot.
        roi: ``[h, w]`` bool, the cells that take part (non-empty).
        seeds: ``[J]`` flat grid indices of the initial centres.
        iterations: number of updates.
        feature_scale: divisor of the squared feature distance.
        coord_scale: divisor of the squared coordinate distance.

    Returns:
        ``[J, C]`` centres (feature part).
    """
    c, h, w = features.shape[0], features.shape[1], features.shape[2]
    f = features.reshape(c, h * w).t()
    xy = _grid_coords(h, w, features.device, features.dtype)
    outside = ~roi.reshape(1, -1)
    c_f, c_xy = f[seeds], xy[seeds]
    for _ in range(iterations):
        d2 = ((f[None] - c_f[:, None]) ** 2).sum(-1) / feature_scale
        d2 = d2 + ((xy[None] - c_xy[:, None]) ** 2).sum(-1) / coord_scale  # [J, HW]
        a = torch.softmax((-torch.sqrt(d2)).masked_fill(outside, float("-inf")), dim=1)
        c_f, c_xy = a @ f, a @ xy
    return c_f


class DSPNetExportHead(ALPExportHead):
    """Fixed-size :class:`DSPNetHead` for export (TorchScript, ONNX), built by :meth:`DSPNetHead.export_head`.

    Same logits as the eager head in evaluation (one window, FSPA clustering on when the support mask is not on the
    feature grid): every candidate prototype is kept with a validity flag (BG: all BCMA-mixed windows and the global
    fallback; FG: the mixed windows, FSPA's per-query prototype), FSPA always picks ``max_clusters`` seeds
    (:func:`fixed_fspa_seeds`; unused ones get zero centres, which add exactly nothing to the attention read-out)
    and clusters over the whole grid with the ROI masked (:func:`fixed_soft_cluster`); a shot without clusters takes
    the fallback prototype by selection. ``Cal`` is the eager head's parameter (key ``bcma.cal``); the counters and
    ``last_info`` are not kept.

    Args:
        head: the eager head (its switches, hyperparameters and ``Cal``).
        window: local-prototype window (``test_window``).
    """

    def __init__(self, head: DSPNetHead, window: int) -> None:
        super().__init__(window, head.threshold, head.fg_mode_threshold, head.fg_mode_window, head.scale)
        self.channels = int(head.channels)
        self.bcma = head.bcma
        self.bcma_alpha = float(head.bcma_alpha)
        self.bcma_alpha_bg = float(head.bcma_alpha_bg)
        self.use_fspa = head.fspa is not None
        fspa = head.fspa if head.fspa is not None else FSPA()
        self.region_area = float(fspa.region_area)
        self.max_clusters = int(fspa.max_clusters)
        self.iterations = int(fspa.iterations)
        self.roi_threshold = float(fspa.roi_threshold)
        self.feature_scale = float(fspa.feature_scale)
        self.coord_scale = float(fspa.coord_scale)
        self.use_attention = head.attention is not None
        attention = head.attention if head.attention is not None else SupportQueryAttention()
        self.temperature = float(attention.temperature)
        self.attention_eps = float(attention.eps)

    def _fspa(
        self, fs: torch.Tensor, m_fg: torch.Tensor, refined: torch.Tensor, fg: torch.Tensor, cluster: bool
    ) -> torch.Tensor:
        """FSPA prototypes ``[B', C]`` (see :class:`FSPA`), fixed size."""
        s, c, h, w = fs.shape[0], fs.shape[1], fs.shape[2], fs.shape[3]
        b = refined.shape[0]
        mask = m_fg.to(fs.dtype)
        rows = torch.arange(h, device=fg.device) * fg.shape[-2] // h
        cols = torch.arange(w, device=fg.device) * fg.shape[-1] // w
        protos: list[torch.Tensor] = []
        for k in range(s):
            fsu = refined[:, k].flatten(2)  # [B, C, HW]
            m_flat = mask[k, 0].reshape(1, 1, h * w)
            p0 = (fsu * m_flat).sum(-1) / (m_flat.sum(-1) + 1e-5)
            att0 = torch.softmax(torch.einsum("bc,bcx->bx", p0, fsu), dim=-1)
            r = p0[:, :, None] * att0[:, None, :]
            if cluster and self.max_clusters >= 2:
                grid = fg[k, 0].index_select(0, rows).index_select(1, cols)  # nearest-neighbour subsampling
                seeds, n_seeds = fixed_fspa_seeds(grid, self.region_area, self.max_clusters)
                roi = mask[k, 0] >= self.roi_threshold
                has_roi = roi.any()
                ctr = fixed_soft_cluster(
                    fs[k], roi | ~has_roi, seeds, self.iterations, self.feature_scale, self.coord_scale
                )
                used = torch.arange(self.max_clusters, device=fs.device) < n_seeds
                ctr = torch.where(used[:, None], ctr, torch.zeros_like(ctr))
                att = torch.softmax(torch.einsum("jc,bcx->bjx", ctr, fsu), dim=-1)
                r_clusters = torch.einsum("jc,bjx->bcx", ctr, att)
                r = torch.where((n_seeds >= 2) & has_roi, r_clusters, r)
            fused = r.reshape(b, c, h, w) + fs[k : k + 1]
            protos.append(masked_average_pooling(fused, mask[k : k + 1].expand(b, 1, h, w)))
        return torch.stack(protos, dim=0).mean(dim=0)

    def forward(
        self, support_features: torch.Tensor, support_fg_mask: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """``[S, C, h, w]``, ``[S, 1, H, W]`` FG masks, ``[B, C, hq, wq]`` -> ``[B, 2, hq, wq]`` [BG, FG] logits.

        Raises:
            ValueError: features without the BCMA channels, bad support masks (TorchScript).
        """
        fs, fq = support_features, query_features
        if self.bcma is not None and fs.shape[1] != self.channels:
            raise ValueError(
                "DSPNetHead was built for " + str(self.channels) + " channels (BCMA), the features have "
                + str(fs.shape[1])
            )  # fmt: skip
        fg, m_fg, m_bg = support_masks_on_grid(fs, support_fg_mask)
        check_support_mask(fg)
        s, c, h, w = fs.shape[0], fs.shape[1], fs.shape[2], fs.shape[3]
        k = self.window
        fits = h >= k and w >= k
        one = torch.ones(1, dtype=torch.bool, device=fs.device)
        glb_bg = masked_average_pooling(fs, m_bg).mean(dim=0, keepdim=True)
        use_local = fg_local_flag(m_fg, self.fg_mode_threshold, self.fg_mode_window)
        bg, bg_valid = glb_bg, one
        local_fg, local_valid = fs.new_zeros((0, c)), torch.zeros(0, dtype=torch.bool, device=fs.device)
        if fits:
            windows = F.avg_pool2d(fs, k).permute(0, 2, 3, 1).reshape(-1, c)
            mixed_bg, mixed_fg = windows, windows
            bcma = self.bcma
            if bcma is not None:
                mixed_bg = bcma(windows, self.bcma_alpha_bg)
                mixed_fg = mixed_bg if self.bcma_alpha == self.bcma_alpha_bg else bcma(windows, self.bcma_alpha)
            ok_bg = F.avg_pool2d(m_bg, k).reshape(-1) > self.threshold
            bg = torch.cat([mixed_bg, glb_bg], dim=0)
            bg_valid = torch.cat([ok_bg, (~ok_bg.any()).reshape(1)], dim=0)
            local_fg = mixed_fg
            local_valid = (F.avg_pool2d(m_fg, k).reshape(-1) > self.threshold) & use_local
        q = safe_normalize(fq, 1, 1e-4)
        a_bg = F.conv2d(q, safe_normalize(bg, 1, 1e-4)[:, :, None, None]) * self.scale
        bg_score = masked_softmax_score(a_bg, bg_valid.reshape(1, -1, 1, 1))
        if self.use_fspa:
            if self.use_attention:
                refined = support_query_attention(fs, fq, self.temperature, self.attention_eps)
            else:
                refined = fs.unsqueeze(0)
            cluster = fg.shape[-2] != h or fg.shape[-1] != w
            glb = self._fspa(fs, m_fg, refined, fg, cluster)  # [B or 1, C]
            a_glb = (q * safe_normalize(glb, 1, 1e-4)[:, :, None, None]).sum(dim=1, keepdim=True) * self.scale
            a_loc = F.conv2d(q, safe_normalize(local_fg, 1, 1e-4)[:, :, None, None]) * self.scale
            a_fg = torch.cat([a_loc, a_glb.expand(q.shape[0], 1, q.shape[2], q.shape[3])], dim=1)
            fg_valid = torch.cat([local_valid, one], dim=0)
        else:
            glb = masked_average_pooling(fs, m_fg)
            cand = torch.cat([local_fg, glb, glb.mean(dim=0, keepdim=True)], dim=0)
            fg_valid = torch.cat([local_valid, use_local.reshape(1).expand(s), (~use_local).reshape(1)], dim=0)
            a_fg = F.conv2d(q, safe_normalize(cand, 1, 1e-4)[:, :, None, None]) * self.scale
        fg_score = masked_softmax_score(a_fg, fg_valid.reshape(1, -1, 1, 1))
        return torch.cat([bg_score, fg_score], dim=1)


# ---------------------------------------------------------------------------------------------------- builders
def dspnet_param_groups(
    model: nn.Module, base_lr: float, head_lr_multiplier: float | None = None
) -> list[dict[str, Any]]:
    """SGD parameter groups of a DSPNet segmentor (dspnet.md §6): everything at ``base_lr``, the head at less.

    Args:
        model: a :class:`~labelless.networks.fewshot.FewShotSegmentor` (or any module with a ``head``), also wrapped
            in ``DistributedDataParallel`` / ``DataParallel`` (its ``module`` is used).
        base_lr: learning rate of the encoder and reduction convolution.
        head_lr_multiplier: factor of the head parameters (``Cal``); default the head's own (1e-4).

    Returns:
        ``[{"params": encoder…, "lr": base_lr, "name": "encoder"}, {"params": [Cal], "lr": base_lr × m,
        "name": "head"}]`` (the head group only when it has parameters).

    Raises:
        ConfigError: the model has no ``head``.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"{type(model).__name__} has no prototype head module")
    mult = getattr(head, "head_lr_multiplier", HEAD_LR_MULTIPLIER) if head_lr_multiplier is None else head_lr_multiplier
    head_ids = {id(p) for p in head.parameters()}
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": float(base_lr), "name": "encoder"}]
    head_params = list(head.parameters())
    if head_params:
        groups.append({"params": head_params, "lr": float(base_lr) * float(mult), "name": "head"})
    return groups


def build_dspnet_segmentor(
    encoder: str | nn.Module = "resnet101",
    pretrained_path: str | os.PathLike | None = None,
    train_window: int = 4,
    test_window: int = 2,
    threshold: float = LOCAL_THRESHOLD,
    cache_support: bool = True,
    encoder_options: dict | None = None,
    dataset: str | None = None,
    setting: int | None = None,
    use_fspa: bool = True,
    use_bcma: bool = True,
    use_cross_attention: bool = True,
    bcma_alpha: float | None = None,
    bcma_alpha_bg: float | None = None,
    bcma_weights: Sequence[float] | None = None,
    attention_temperature: float = 1.0,
    head_lr_multiplier: float = HEAD_LR_MULTIPLIER,
    **encoder_kwargs: object,
) -> FewShotSegmentor:
    """Build the DSPNet model: an encoder by name (as :func:`build_fewshot_segmentor`) and a :class:`DSPNetHead`.

    BCMA hyperparameters: from :data:`BCMA_PRESETS` by ``dataset`` and ``setting`` (both given), overridden by
    ``bcma_alpha`` / ``bcma_alpha_bg`` / ``bcma_weights``; without ``dataset`` and ``setting`` the Setting-1
    abdominal row is the default.

    Args:
        encoder: encoder name or module (see :func:`~labelless.networks.fewshot.build_fewshot_segmentor`).
        pretrained_path: optional local checkpoint for ResNet encoders.
        train_window: local-prototype window in training (4).
        test_window: local-prototype window at test (2).
        threshold: local-prototype threshold (strict ``>``).
        cache_support: see :class:`~labelless.networks.fewshot.FewShotSegmentor`.
        encoder_options: dict of encoder keyword arguments, merged with ``encoder_kwargs``.
        dataset: dataset preset name for the BCMA presets.
        setting: 1 or 2 for the BCMA presets.
        use_fspa: FSPA switch.
        use_bcma: BCMA switch.
        use_cross_attention: cross-attention switch.
        bcma_alpha: α override.
        bcma_alpha_bg: BG α override.
        bcma_weights: (w1, w2, w3) override.
        attention_temperature: τ of the cross attention.
        head_lr_multiplier: learning-rate factor of ``Cal``.
        encoder_kwargs: passed to the encoder builder.

    Returns:
        the model (training mode, CPU).

    Raises:
        ConfigError: bad encoder options, only one of ``dataset``/``setting``, or an undefined preset row.
    """
    if (dataset is None) != (setting is None):
        raise ConfigError("give both dataset and setting to select the BCMA presets, or neither")
    if dataset is not None:
        hp = bcma_hyperparameters(dataset, int(setting), bcma_alpha, bcma_alpha_bg, bcma_weights)
    else:
        a = _DEFAULT_ALPHA if bcma_alpha is None else float(bcma_alpha)
        hp = {
            "alpha": a,
            "alpha_bg": a if bcma_alpha_bg is None else float(bcma_alpha_bg),
            "weights": _DEFAULT_WEIGHTS if bcma_weights is None else tuple(bcma_weights),
        }
    base = build_fewshot_segmentor(
        encoder, pretrained_path, train_window, test_window, threshold, cache_support, encoder_options,
        **encoder_kwargs,
    )  # fmt: skip
    channels = getattr(base.encoder, "out_channels", None)
    if channels is None:
        raise ConfigError("the encoder must expose out_channels (the size of BCMA's Cal matrix)")
    head = DSPNetHead(
        int(channels),
        use_fspa=use_fspa,
        use_bcma=use_bcma,
        use_cross_attention=use_cross_attention,
        bcma_alpha=hp["alpha"],
        bcma_alpha_bg=hp["alpha_bg"],
        bcma_weights=hp["weights"],
        attention_temperature=attention_temperature,
        head_lr_multiplier=head_lr_multiplier,
        threshold=threshold,
    )
    return FewShotSegmentor(
        base.encoder, head, train_window=train_window, test_window=test_window, cache_support=cache_support
    )
