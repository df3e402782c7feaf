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

Also the adversarial losses of CLTNet (cltnet.md §4: :func:`lsgan_loss`, :class:`CycleTranslationLoss`) and the
losses of SABR-Net (sabrnet.md §6–8): hole-masked L1, perceptual/style (Gram) terms, CE + soft Dice with one-hot
targets, hinge and non-saturating logistic GAN terms, R1, pix2pixHD feature matching, the SegFix boundary/direction
terms and the mean-teacher consistency of the semi-supervised baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import ConfigError, DataError
from labelless.networks.prototypes import LOCAL_THRESHOLD, ALPHead

__all__ = [
    "weighted_query_ce",
    "query_soft_dice",
    "prototype_alignment_loss",
    "support_target",
    "ALPNetLoss",
    "QUERY_CLASS_WEIGHTS",
    "lsgan_loss",
    "CLTNET_WEIGHTS",
    "CycleTranslationLoss",
    "masked_l1",
    "gram_matrix",
    "perceptual_style_loss",
    "segmentation_ce_dice",
    "hinge_d_loss",
    "hinge_g_loss",
    "logistic_d_loss",
    "logistic_g_loss",
    "r1_penalty",
    "feature_matching_loss",
    "boundary_direction_loss",
    "consistency_mse",
    "sigmoid_rampup",
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


# ---------------------------------------------------------------------------------------------- adversarial (CLTNet)
def lsgan_loss(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean squared error of ``prediction`` against 1 (``real``) or 0."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target.float())


def _l1_sum(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return sum(F.l1_loss(o.float(), t.float()) for o, t in pairs)


def _bce_sum(logits: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    return sum(F.binary_cross_entropy_with_logits(x.float(), torch.full_like(x.float(), value)) for x in logits)


#: Loss weights of cltnet.md §4 per dataset preset (w_adv, w_cyc, w_id, w_cam, w_rec).
CLTNET_WEIGHTS = {
    "brats": {"adv": 1.0, "cycle": 10.0, "ident": 10.0, "cam": 1000.0, "recon": 10.0},
    "isic": {"adv": 1.0, "cycle": 5.0, "ident": 50.0, "cam": 1400.0, "recon": 10.0},
}


class CycleTranslationLoss:
    """The losses of CAM-guided, mask-gated cycle translation (cltnet.md §4): LSGAN adversarial terms on patch and
    CAM logits of the discriminators, cycle, identity, generator-CAM (BCE with logits) and reconstruction terms.

    A discriminator output is a pair ``(patch_logits, cam_logit)``; a generator output has ``y``, ``cam_logit``,
    ``y_comp`` and ``x_rec`` (:class:`~labelless.networks.cltnet.CLTGeneratorOutput`).

    Two optional mask terms, **not in the spec** (both 0 by default, which is the spec's loss): nothing in §4
    supervises the mask ``M``, and on the CPU profile it saturates over the whole brain. ``mask_normal`` penalises
    the mean of ``M`` on normal images (``G_AB(x_B)``, the identity pass: a lesion-free image needs no change, so its
    mask should be empty) and ``mask_sparsity`` the mean of ``M`` on lesion images (change as few pixels as the
    adversarial terms allow). Both use only the image-level labels.

    Args:
        weights: a preset name (``"brats"``, ``"isic"``) or ``{"adv", "cycle", "ident", "cam", "recon"}`` weights,
            optionally with ``"mask_normal"`` and ``"mask_sparsity"``.
        mask_normal: weight of the normal-image mask term (overrides the one in ``weights``).
        mask_sparsity: weight of the lesion-image mask term (overrides the one in ``weights``).

    Examples::

        loss = CycleTranslationLoss("brats")
        d_loss = loss.discriminator(real_outputs=[dis(x) for dis in dis_a], fake_outputs=[dis(fake.detach()) ...])
    """

    def __init__(
        self,
        weights: str | Mapping[str, float] = "brats",
        mask_normal: float | None = None,
        mask_sparsity: float | None = None,
    ) -> None:
        if isinstance(weights, str):
            if weights not in CLTNET_WEIGHTS:
                raise ConfigError(f"unknown loss weight preset {weights!r}; use one of {sorted(CLTNET_WEIGHTS)}")
            weights = CLTNET_WEIGHTS[weights]
        missing = {"adv", "cycle", "ident", "cam", "recon"} - set(weights)
        if missing:
            raise ConfigError(f"loss weights miss {sorted(missing)}")
        self.weights = {k: float(weights[k]) for k in ("adv", "cycle", "ident", "cam", "recon")}
        for key, value in (("mask_normal", mask_normal), ("mask_sparsity", mask_sparsity)):
            self.weights[key] = float(weights.get(key, 0.0) if value is None else value)
        if any(not math.isfinite(v) or v < 0 for v in self.weights.values()):
            raise ConfigError(f"loss weights must be finite and >= 0, got {self.weights}")

    @staticmethod
    def _adv(outputs: Sequence[tuple[torch.Tensor, torch.Tensor]], real: bool) -> torch.Tensor:
        return sum(lsgan_loss(patch, real) + lsgan_loss(cam, real) for patch, cam in outputs)

    def discriminator(
        self,
        real_outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        fake_outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """``w_adv · Σ_D [mse(D(x), 1) + mse(D(fake), 0) + mse(η_D(x), 1) + mse(η_D(fake), 0)]`` over the
        discriminators of both domains (real and fake outputs in the same order)."""
        return self.weights["adv"] * (self._adv(real_outputs, True) + self._adv(fake_outputs, False))

    def generator(
        self,
        fake_outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        composite_outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        cycle: Sequence[tuple[torch.Tensor, torch.Tensor]],
        identity: Sequence[tuple[torch.Tensor, torch.Tensor]],
        cam_real: Sequence[torch.Tensor],
        cam_fake: Sequence[torch.Tensor],
        reconstruction: Sequence[tuple[torch.Tensor, torch.Tensor]],
        masks_normal: Sequence[torch.Tensor] = (),
        masks_lesion: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator loss ``w_adv (adv + adv_c) + w_cyc·cycle + w_id·ident + w_cam·cam + w_rec·recon``, plus
        ``w_mn·mean(M on normal images) + w_ms·mean(M on lesion images)`` when those weights are set.

        Args:
            fake_outputs: discriminator outputs on the translated images (both domains).
            composite_outputs: discriminator outputs on the mask-gated composites (joint discrimination).
            cycle, identity, reconstruction: ``(output, target)`` image pairs compared with the mean absolute error.
            masks_normal: masks ``M`` the A→B generator predicts on normal images (used when ``mask_normal`` > 0).
            masks_lesion: masks ``M`` it predicts on lesion images (used when ``mask_sparsity`` > 0).
            cam_real: generator CAM logits that must say "source domain" (η_{G_AB}(x_A), η_{G_BA}(x_B)) → 1.
            cam_fake: generator CAM logits that must say "not the source domain" (η_{G_AB}(x_B), η_{G_BA}(x_A)) → 0.

        Returns:
            (total loss, the detached terms ``adv``, ``adv_c``, ``cycle``, ``ident``, ``cam``, ``recon``).
        """
        terms = {
            "adv": self._adv(fake_outputs, True),
            "adv_c": self._adv(composite_outputs, True),
            "cycle": _l1_sum(cycle),
            "ident": _l1_sum(identity),
            "cam": _bce_sum(cam_real, 1.0) + _bce_sum(cam_fake, 0.0),
            "recon": _l1_sum(reconstruction),
        }
        w = self.weights
        total = (w["adv"] * (terms["adv"] + terms["adv_c"]) + w["cycle"] * terms["cycle"] + w["ident"] * terms["ident"]
                 + w["cam"] * terms["cam"] + w["recon"] * terms["recon"])  # fmt: skip
        for key, masks in (("mask_normal", masks_normal), ("mask_sparsity", masks_lesion)):
            if w[key] > 0:
                if not masks:
                    raise ConfigError(f"loss weight {key} > 0 needs the generator's masks ({key} term)")
                terms[key] = sum(m.float().mean() for m in masks) / len(masks)
                total = total + w[key] * terms[key]
        return total, {k: v.detach() for k, v in terms.items()}


# ------------------------------------------------------------------------------- semi-supervised ultrasound (SABR-Net)
def _one_hot(labels: torch.Tensor, n_classes: int, what: str = "label") -> torch.Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` integer labels → ``[B, n_classes, H, W]`` float one-hot (0/1 targets)."""
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise DataError(what, f"expected [B, H, W] or [B, 1, H, W] labels, got shape {tuple(labels.shape)}")
    labels = labels.long()
    if bool((labels < 0).any()) or bool((labels >= n_classes).any()):
        bad = torch.unique(labels[(labels < 0) | (labels >= n_classes)])[:8].tolist()
        raise DataError(what, f"label values must be in 0..{n_classes - 1}, found {bad}")
    return F.one_hot(labels, n_classes).permute(0, 3, 1, 2).float()


def masked_l1(target: torch.Tensor, output: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the hole pixels only (sabrnet.md §6): ``Σ |x − ŷ| (1 − m) / Σ (1 − m)``.

    The sum runs over channels and pixels; the denominator counts hole pixels times channels (a per-channel mean).
    Zero when there is no hole. The reference's global mean divided by the hole area is not copied.

    Args:
        target: ``[B, C, H, W]`` the real image.
        output: ``[B, C, H, W]`` the generated image.
        keep_mask: ``[B, 1, H, W]``, 1 = keep, 0 = hole.
    """
    if target.shape != output.shape or keep_mask.shape[-2:] != target.shape[-2:]:
        raise DataError("masked_l1", f"shapes differ: target {tuple(target.shape)}, output {tuple(output.shape)}, "
                                     f"mask {tuple(keep_mask.shape)}")  # fmt: skip
    hole = (1.0 - keep_mask.float()).expand_as(target)
    return ((target.float() - output.float()).abs() * hole).sum() / hole.sum().clamp_min(1.0)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``F Fᵀ / (h · w · c)`` of a ``[B, C, H, W]`` feature map (``[B, C, C]``)."""
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / float(c * h * w)


def perceptual_style_loss(
    real_features: Sequence[torch.Tensor], fake_features: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_f |Φ_f(x) − Φ_f(ŷ)|₁, Σ_f |Gram(Φ_f(x)) − Gram(Φ_f(ŷ))|₁)`` (means of absolute errors)."""
    if len(real_features) != len(fake_features) or not real_features:
        raise ConfigError("perceptual features: the real and fake lists must be non-empty and of the same length")
    perc = sum(F.l1_loss(f.float(), r.float()) for r, f in zip(real_features, fake_features, strict=True))
    style = sum(F.l1_loss(gram_matrix(f), gram_matrix(r)) for r, f in zip(real_features, fake_features, strict=True))
    return perc, style


def segmentation_ce_dice(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ce_temperature: float = 1.0,
    dice_temperature: float = 1.0,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and soft Dice of segmentation logits (sabrnet.md §6–7).

    ``CE(s / T_ce, y)`` and ``Dice = 1 − 2Σpt / (Σp² + Σt² + ε)`` with ``p = sigmoid(s / T_dice)`` on the foreground
    channels only and one-hot 0/1 targets (the reference's (y + 1)/2 targets are not copied); the Dice is computed
    per foreground channel over the whole batch and averaged.

    Args:
        logits: ``[B, K, H, W]`` (K ≥ 2).
        labels: ``[B, H, W]`` or ``[B, 1, H, W]`` class indices.
    """
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise DataError("segmentation logits", f"expected [B, K>=2, H, W], got {tuple(logits.shape)}")
    onehot = _one_hot(labels, logits.shape[1])
    if onehot.shape[-2:] != logits.shape[-2:] or onehot.shape[0] != logits.shape[0]:
        raise DataError("label", f"label {tuple(onehot.shape)} does not match the logits {tuple(logits.shape)}")
    ce = F.cross_entropy(logits.float() / ce_temperature, onehot.argmax(1))
    p = torch.sigmoid(logits.float() / dice_temperature)[:, 1:]
    t = onehot[:, 1:]
    dims = (0, 2, 3)
    dice = 1.0 - 2.0 * (p * t).sum(dims) / ((p * p).sum(dims) + (t * t).sum(dims) + eps)
    return ce, dice.mean()


def hinge_d_loss(real: torch.Tensor | None = None, fake: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))`` (either term may be omitted)."""
    out = torch.zeros((), device=(real if real is not None else fake).device)
    if real is not None:
        out = out + F.relu(1.0 - real.float()).mean()
    if fake is not None:
        out = out + F.relu(1.0 + fake.float()).mean()
    return out


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """``−mean(D(fake))``."""
    return -fake.float().mean()


def logistic_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss of a discriminator: ``softplus(−D(x)) + softplus(D(ŷ))`` (means)."""
    return F.softplus(-real.float()).mean() + F.softplus(fake.float()).mean()


def logistic_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss of a generator: ``softplus(−D(ŷ))`` (mean)."""
    return F.softplus(-fake.float()).mean()


def r1_penalty(real_output: torch.Tensor, real_input: torch.Tensor) -> torch.Tensor:
    """``‖∇_x D(x)‖²`` averaged over the batch (``real_input`` must require grad; scale by γ/2 · interval outside)."""
    (grad,) = torch.autograd.grad(real_output.float().sum(), real_input, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def feature_matching_loss(
    fake_features: Sequence[Sequence[torch.Tensor]], real_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """pix2pixHD feature matching: ``(1/n_scales) Σ_scales Σ_layers |D^l(fake) − D^l(real).detach()|₁`` over the
    intermediate features of a multi-scale discriminator (the final logit map of each scale excluded)."""
    if len(fake_features) != len(real_features) or not fake_features:
        raise ConfigError("feature matching: the fake and real feature lists must be non-empty and of the same length")
    total = torch.zeros((), device=fake_features[0][0].device)
    for fake_scale, real_scale in zip(fake_features, real_features, strict=True):
        for f, r in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total / len(fake_features)


def boundary_direction_loss(
    boundary_logits: torch.Tensor,
    direction_logits: torch.Tensor,
    boundary_target: torch.Tensor,
    direction_target: torch.Tensor,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SegFix-style losses of the boundary heads (sabrnet.md §8).

    - boundary: 2-class cross-entropy weighted per class by ``1 − class frequency in the batch``;
    - direction: 8-class cross-entropy on the ground-truth boundary pixels only (``ignore_index`` elsewhere);
      zero when the batch has no boundary pixel.

    Args:
        boundary_logits: ``[B, 2, H, W]``.
        direction_logits: ``[B, 8, H, W]``.
        boundary_target: ``[B, H, W]`` or ``[B, 1, H, W]`` in {0, 1}.
        direction_target: ``[B, H, W]`` or ``[B, 1, H, W]`` in 0..7, ``ignore_index`` off the boundary.
    """
    bt = boundary_target[:, 0] if boundary_target.ndim == 4 else boundary_target
    dt = direction_target[:, 0] if direction_target.ndim == 4 else direction_target
    bt, dt = bt.long(), dt.long()
    if bt.shape[-2:] != boundary_logits.shape[-2:] or dt.shape[-2:] != direction_logits.shape[-2:]:
        shapes = f"{tuple(boundary_logits.shape)} / {tuple(direction_logits.shape)}"
        got = f"{tuple(bt.shape)} / {tuple(dt.shape)}"
        raise DataError("boundary targets", f"targets {got} do not match the logits {shapes}")
    freq = torch.stack([(bt == 0).float().mean(), (bt == 1).float().mean()])
    boundary = F.cross_entropy(boundary_logits.float(), bt, weight=(1.0 - freq).clamp_min(1e-3))
    dt = torch.where(bt == 1, dt, torch.full_like(dt, ignore_index))
    if bool((dt != ignore_index).any()):
        direction = F.cross_entropy(direction_logits.float(), dt, ignore_index=ignore_index)
    else:
        direction = direction_logits.float().sum() * 0.0
    return boundary, direction


def consistency_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean-teacher consistency: mean squared difference of the softmax probabilities (teacher detached)."""
    return F.mse_loss(torch.softmax(student_logits.float(), 1), torch.softmax(teacher_logits.detach().float(), 1))


def sigmoid_rampup(step: int, length: int) -> float:
    """``exp(−5 (1 − t)²)`` with ``t = step / length`` clipped to [0, 1] (Laine & Aila; 1 when ``length`` is 0)."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
