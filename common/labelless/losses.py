# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Losses of SSL-ALPNet (ssl_alpnet.md §4): weighted query cross-entropy and prototype alignment (PAR).

- :func:`weighted_query_ce`: cross-entropy of the query logits against the query pseudo-label with class weights
  [0.05 (BG), 1.0 (FG)] and ignore index 255 (PyTorch's weighted mean: ``Σ w_y · nll / Σ w_y``).
- :func:`prototype_alignment_loss`: PANet's PAR with the ALP rules — the query with its *predicted* mask (argmax of
  the low-resolution logits, no gradient through the mask) becomes the support and the support images are segmented
  (window 4, FG mode test on the 4×4-pooled predicted FG mask, BG fallback when no BG window passes); unweighted CE
  against the support label upsampled to the image size, divided by the number of shots.
- :class:`ALPNetLoss`: ``L = L_query + par_weight · L_par`` on a
  :class:`~labelless.networks.fewshot.FewShotOutput`, returning the total and its parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import DataError
from labelless.networks.prototypes import LOCAL_THRESHOLD, ALPHead

__all__ = [
    "weighted_query_ce",
    "query_soft_dice",
    "prototype_alignment_loss",
    "support_target",
    "ALPNetLoss",
    "QUERY_CLASS_WEIGHTS",
]

QUERY_CLASS_WEIGHTS = (0.05, 1.0)


def _check_target_values(target: torch.Tensor, ignore_index: int, what: str) -> None:
    valid = (target == 0) | (target == 1) | (target == ignore_index)
    if not bool(valid.all()):
        bad = torch.unique(target[~valid])[:8].tolist()
        raise DataError(what, f"label values must be 0 (BG), 1 (FG) or {ignore_index} (ignored), found {bad}")
    if not bool((target != ignore_index).any()):
        raise DataError(what, f"every pixel is the ignore index {ignore_index}; the loss is undefined")


def weighted_query_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: Sequence[float] = QUERY_CLASS_WEIGHTS,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Class-weighted cross-entropy of 2-class query logits (ssl_alpnet.md §4.1).

    Args:
        logits: ``[B, 2, H, W]``.
        target: ``[B, H, W]`` or ``[B, 1, H, W]`` integer labels in {0, 1, ``ignore_index``}.
        weights: class weights (BG, FG).
        ignore_index: label value excluded from the loss.

    Returns:
        scalar loss (float32), the weighted mean over non-ignored pixels.

    Raises:
        DataError: shape mismatch, label values outside {0, 1, ignore_index}, or no pixel left.
    """
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise DataError("query logits", f"expected [B, 2, H, W], got shape {tuple(logits.shape)}")
    t = target
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3 or t.shape[0] != logits.shape[0] or tuple(t.shape[-2:]) != tuple(logits.shape[-2:]):
        raise DataError(
            "query label",
            f"expected [B, H, W] = {(logits.shape[0], *logits.shape[-2:])} to match the logits, got "
            f"{tuple(target.shape)}",
        )
    if len(weights) != 2:
        raise DataError("weights", f"need 2 class weights (BG, FG), got {list(weights)}")
    if t.is_floating_point():
        t = torch.round(t)
    t = t.long()
    _check_target_values(t, ignore_index, "query label")
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float32, device=logits.device)
    return F.cross_entropy(logits.float(), t, weight=w, ignore_index=ignore_index)


def query_soft_dice(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, eps: float = 1e-5
) -> torch.Tensor:
    """Soft Dice loss of the FG probability of 2-class query logits, ignored pixels excluded (PSMNet's optional
    term, psmnet.md §5).

    ``1 − (2 Σ p·t + eps) / (Σ p + Σ t + eps)`` over the valid pixels of the whole batch, ``p = softmax(logits)[:, 1]``.

    Args:
        logits: ``[B, 2, H, W]``.
        target: ``[B, H, W]`` or ``[B, 1, H, W]`` labels in {0, 1, ``ignore_index``}.
        ignore_index: label value excluded.
        eps: smoothing.

    Returns:
        scalar loss in [0, 1].
    """
    t = target[:, 0] if target.dim() == 4 and target.shape[1] == 1 else target
    if t.shape != logits.shape[:1] + logits.shape[2:]:
        raise DataError("query label", f"shape {tuple(target.shape)} does not match the logits {tuple(logits.shape)}")
    t = torch.round(t).long() if t.is_floating_point() else t.long()
    _check_target_values(t, ignore_index, "query label")
    valid = (t != ignore_index).to(torch.float32)
    p = F.softmax(logits.float(), dim=1)[:, 1] * valid
    fg = (t == 1).to(torch.float32)
    return 1.0 - (2.0 * (p * fg).sum() + eps) / (p.sum() + fg.sum() + eps)


def support_target(support_label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """PAR target from a support label: FG (1) → 1, BG (0) → 0, anything else → ``ignore_index``.

    Args:
        support_label: ``[S, 1, H, W]`` or ``[S, H, W]`` mask/label (float or integer).
        ignore_index: value of the ignored pixels.

    Returns:
        ``[S, H, W]`` int64 target.
    """
    lab = support_label[:, 0] if support_label.dim() == 4 and support_label.shape[1] == 1 else support_label
    if lab.dim() != 3:
        raise DataError("support label", f"expected [S, 1, H, W] or [S, H, W], got {tuple(support_label.shape)}")
    out = torch.full(lab.shape, int(ignore_index), dtype=torch.long, device=lab.device)
    out[lab == 1] = 1
    out[lab == 0] = 0
    return out


def prototype_alignment_loss(
    low_res_logits: torch.Tensor,
    query_features: torch.Tensor,
    support_features: torch.Tensor,
    support_label: torch.Tensor,
    window: int = 4,
    skip_empty_fg: bool = False,
    head: ALPHead | None = None,
    ignore_index: int = 255,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Prototype alignment regularisation (PAR) with the ALP rules, ssl_alpnet.md §4.2.

    ``pred = argmax(low_res_logits)`` (detached); ``M̂_fg = 1[pred == 1]``, ``M̂_bg = 1[pred == 0]`` on the feature
    grid (no interpolation). The query features with these masks act as the support: BG = local prototypes (window
    ``window``) or the global BG fallback; FG = the §3.4 rule (mode test on ``Pool_4(M̂_fg)``). Every support shot's
    features are scored, the logits upsampled (bilinear, ``align_corners=False``) to the support label size and
    compared with unweighted CE; the per-shot losses are summed and divided by the number of shots (1 way). An empty
    predicted FG gives a zero FG prototype (FG score 0 everywhere; parity) unless ``skip_empty_fg`` (PANet: the term
    is 0). Gradients flow through both feature maps.

    Args:
        low_res_logits: ``[1, 2, h, w]`` query logits on the feature grid.
        query_features: ``[1, C, h, w]``.
        support_features: ``[S, C, h, w]``.
        support_label: ``[S, 1, H, W]`` or ``[S, H, W]`` support label (1 FG, 0 BG, other values ignored).
        window: local-prototype window (4 in training).
        skip_empty_fg: return 0 when the predicted FG is empty.
        head: prototype head to use (thresholds); default a fresh :class:`ALPHead`.
        ignore_index: target value of ignored pixels.
        return_info: also return ``{"bg_fallback": bool, "fg_local": bool, "empty_fg": bool, "skipped": bool}``.

    Returns:
        scalar loss (and the info dict when ``return_info``).

    Raises:
        DataError: mismatched shapes (several queries, channel or grid mismatch).
    """
    if low_res_logits.dim() != 4 or low_res_logits.shape[:2] != (1, 2):
        raise DataError(
            "PAR", f"low-resolution logits must be [1, 2, h, w] (one query), got {tuple(low_res_logits.shape)}"
        )
    if query_features.dim() != 4 or query_features.shape[0] != 1:
        raise DataError("PAR", f"query features must be [1, C, h, w] (one query), got {tuple(query_features.shape)}")
    if support_features.dim() != 4 or support_features.shape[1:] != query_features.shape[1:]:
        raise DataError(
            "PAR",
            f"support features {tuple(support_features.shape)} must be [S, C, h, w] matching the query features "
            f"{tuple(query_features.shape)}",
        )
    if tuple(low_res_logits.shape[-2:]) != tuple(query_features.shape[-2:]):
        raise DataError(
            "PAR",
            f"low-resolution logits grid {tuple(low_res_logits.shape[-2:])} differs from the feature grid "
            f"{tuple(query_features.shape[-2:])}",
        )
    target = support_target(support_label, ignore_index)
    s = support_features.shape[0]
    if target.shape[0] != s:
        raise DataError("PAR", f"support label has {target.shape[0]} shots but the support features have {s}")
    pred = low_res_logits.detach().argmax(dim=1, keepdim=True)
    m_fg = (pred == 1).to(query_features.dtype)
    m_bg = (pred == 0).to(query_features.dtype)
    empty_fg = not bool(m_fg.any())
    info: dict[str, Any] = {"bg_fallback": False, "fg_local": False, "empty_fg": empty_fg, "skipped": False}
    if empty_fg and skip_empty_fg:
        info["skipped"] = True
        zero = (query_features.sum() + support_features.sum()) * 0.0  # keeps the graph, value 0
        return (zero, info) if return_info else zero
    head = ALPHead() if head is None else head
    # prototype scores in float32, also inside an autocast region (cosines with eps 1e-4, scale 20)
    with torch.autocast(device_type=query_features.device.type, enabled=False):
        logits = head(
            query_features.float(),
            m_fg.float(),
            support_features.float(),
            window=int(window),
            output_size=tuple(target.shape[-2:]),
            support_bg_mask=m_bg.float(),
            allow_empty_fg=True,
        )
    last = getattr(head, "last_info", {}) or {}
    info["bg_fallback"] = bool(last.get("bg_fallback", False))
    info["fg_local"] = bool(last.get("fg_local", False))
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")  # [S, H, W]
    valid = (target != ignore_index).to(per_pixel.dtype)
    n_valid = valid.flatten(1).sum(dim=1)
    per_shot = (per_pixel * valid).flatten(1).sum(dim=1) / n_valid.clamp_min(1.0)  # shots with no pixel give 0
    loss = per_shot.sum() / s
    return (loss, info) if return_info else loss


class ALPNetLoss(nn.Module):
    """SSL-ALPNet training loss: ``weighted_query_ce + par_weight · PAR`` (ssl_alpnet.md §4.3).

    Args:
        weights: query CE class weights (BG, FG).
        ignore_index: ignored label value.
        par_weight: weight of the PAR term (0 disables it; then a plain logits tensor is accepted).
        par_window: local window of PAR (the training window, 4).
        skip_empty_fg: skip PAR when the predicted query FG is empty (``par_skip_empty_fg``; default parity).
        threshold: local-prototype threshold of the PAR head (ignored when ``par_head`` is given).
        dice_weight: weight of an optional soft Dice term on the query (:func:`query_soft_dice`; 0 = not computed).
        par_head: the prototype head PAR uses, normally the model's own head (``"$@network_def.head"`` in a
            config) so that a head with parameters or extra modules (DSPNet's FSPA/BCMA) is used, and trained, in
            both terms; default a fresh :class:`~labelless.networks.prototypes.ALPHead`. It is kept as a plain
            reference, not registered as a sub-module of the loss.

    Examples::

        loss_fn = ALPNetLoss()
        out = model(support_images, support_masks, query_images, return_aux=True)  # model.train()
        total, parts = loss_fn(out, query_label, support_masks)
        total.backward()  # parts: query_loss, par_loss, par_bg_fallback, par_empty_fg, par_skipped
    """

    def __init__(
        self,
        weights: Sequence[float] = QUERY_CLASS_WEIGHTS,
        ignore_index: int = 255,
        par_weight: float = 1.0,
        par_window: int = 4,
        skip_empty_fg: bool = False,
        threshold: float = LOCAL_THRESHOLD,
        par_head: nn.Module | None = None,
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.weights = tuple(float(w) for w in weights)
        self.ignore_index = int(ignore_index)
        self.par_weight = float(par_weight)
        self.par_window = int(par_window)
        self.skip_empty_fg = bool(skip_empty_fg)
        if par_head is not None and not isinstance(par_head, nn.Module):
            raise TypeError(f"par_head must be a prototype head module, got {type(par_head).__name__}")
        # a tuple keeps the model's head out of this module's parameters and state dict
        self._par_head = (ALPHead(threshold=threshold) if par_head is None else par_head,)

    @property
    def par_head(self) -> nn.Module:
        """The prototype head of the PAR term."""
        return self._par_head[0]

    def forward(
        self, output: Any, query_label: torch.Tensor, support_label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Total loss and its parts.

        Args:
            output: a :class:`~labelless.networks.fewshot.FewShotOutput` (``return_aux=True``), or a logits tensor
                when ``par_weight == 0``.
            query_label: ``[1, H, W]`` query pseudo-label.
            support_label: ``[S, 1, H, W]`` support masks/labels (needed for PAR).

        Returns:
            ``(total, parts)`` with parts ``query_loss`` and ``par_loss`` (detached tensors), ``par_bg_fallback``,
            ``par_empty_fg`` and ``par_skipped`` (bools), and ``dice_loss`` when ``dice_weight`` is set.

        Raises:
            DataError: PAR requested without the auxiliary outputs or the support label; bad labels.
        """
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise DataError("ALPNetLoss", f"expected a FewShotOutput or logits, got {type(output).__name__}")
        query_loss = weighted_query_ce(logits, query_label, self.weights, self.ignore_index)
        parts: dict[str, Any] = {"par_bg_fallback": False, "par_empty_fg": False, "par_skipped": False}
        if self.par_weight == 0.0:
            par = query_loss.new_zeros(())
            total = query_loss
        else:
            if isinstance(output, torch.Tensor) or support_label is None:
                raise DataError(
                    "ALPNetLoss",
                    "PAR needs the model's auxiliary outputs (call the model with return_aux=True) and the support "
                    "label; set par_weight=0 to train without PAR",
                )
            par, info = prototype_alignment_loss(
                output.low_res_logits,
                output.query_features,
                output.support_features,
                support_label,
                window=self.par_window,
                skip_empty_fg=self.skip_empty_fg,
                head=self.par_head,
                ignore_index=self.ignore_index,
                return_info=True,
            )
            parts.update(
                par_bg_fallback=info["bg_fallback"], par_empty_fg=info["empty_fg"], par_skipped=info["skipped"]
            )
            total = query_loss + self.par_weight * par
        if self.dice_weight != 0.0:
            dice = query_soft_dice(logits, query_label, self.ignore_index)
            total = total + self.dice_weight * dice
            parts["dice_loss"] = dice.detach()
        parts["query_loss"] = query_loss.detach()
        parts["par_loss"] = par.detach()
        return total, parts
