# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""The SSL-ALPNet few-shot segmentor: an encoder (stride 8) and a parameter-free prototype head (ssl_alpnet.md §1).

:class:`FewShotSegmentor` segments one class (1 way) in query slices given S ≥ 1 support slices with their FG masks:

- training (``model.train()``): support and query images are concatenated on the batch axis and encoded in one pass
  (BatchNorm in training mode on the S + 1 images), local prototypes use ``train_window`` (4); exactly one query;
- evaluation (``model.eval()``): local prototypes use ``test_window`` (2); any number of queries share the support.
  :meth:`FewShotSegmentor.encode_support` encodes a support once and :meth:`FewShotSegmentor.segment_with` segments
  any number of query slices with it, in batches. Called directly as the evaluation protocol's predictor
  (``model(support_images, support_masks, query_images)`` under ``torch.no_grad()``), the model remembers the last
  encoded support and re-encodes it only when the support tensors (or the weights) change, so the protocol's
  repeated calls with the same support and batches of queries cost one support encoding per chunk.

``return_aux=True`` returns a :class:`FewShotOutput` with the low-resolution logits and the feature maps that the
prototype alignment loss (PAR, :mod:`labelless.losses`) needs.

Single-input call and export: ``model(image)`` segments the query images with the support stored by
:meth:`FewShotSegmentor.set_support` (non-persistent buffers: the state dict and the checkpoints do not change);
without a stored support the result is the documented empty one, every pixel background with the logits
``[+scale, -scale]`` (there is no class to segment). :meth:`FewShotSegmentor.export_module` gives the
:class:`FewShotExport` twin of the network: the same encoder and a fixed-size head (``head.export_head``), the same
two call forms, TorchScript-compatible and traceable to ONNX; ``torch.jit.script(model)`` (MONAI's ``ckpt_export``)
scripts it.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import ConfigError, DataError
from labelless.networks.encoders import build_encoder
from labelless.networks.prototypes import LOCAL_THRESHOLD, SCALE, ALPHead
from labelless.utils import as_bool

__all__ = [
    "FewShotOutput",
    "SupportEncoding",
    "FewShotSegmentor",
    "FewShotExport",
    "SegmentorFeatures",
    "build_fewshot_segmentor",
    "empty_fewshot_logits",
]


class FewShotOutput(NamedTuple):
    """Output of :meth:`FewShotSegmentor.forward` with ``return_aux=True``.

    Attributes:
        logits: ``[B, 2, H, W]`` [BG, FG] logits at the query size.
        low_res_logits: ``[B, 2, h, w]`` logits on the feature grid (before upsampling).
        support_features: ``[S, C, h, w]`` support feature maps (with gradient in training).
        query_features: ``[B, C, h, w]`` query feature maps (with gradient in training).
        window: the local-prototype window used.
        bg_fallback: whether the BG prototype set was empty and the global BG prototype was used (§3.3).
    """

    logits: torch.Tensor
    low_res_logits: torch.Tensor
    support_features: torch.Tensor
    query_features: torch.Tensor
    window: int
    bg_fallback: bool


@dataclass
class SupportEncoding:
    """An encoded support, reusable for any number of query slices (:meth:`FewShotSegmentor.segment_with`).

    Attributes:
        features: ``[S, C, h, w]`` support features (float32).
        masks: ``[S, 1, H, W]`` FG masks at the support image size, on the feature device.
        image_size: ``(H, W)`` of the support images.
    """

    features: torch.Tensor
    masks: torch.Tensor
    image_size: tuple[int, int]

    @property
    def n_shots(self) -> int:
        """Number of support shots S."""
        return int(self.features.shape[0])


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def empty_fewshot_logits(query_images: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """The result without a support: ``[B, 2, H, W]`` float32 logits ``[+scale, -scale]`` (every pixel background).

    Args:
        query_images: ``[B, C, H, W]``.
        scale: the head's cosine scale (the largest logit a prototype head gives).

    Returns:
        ``[B, 2, H, W]`` on the query's device.
    """
    b, h, w = query_images.shape[0], query_images.shape[-2], query_images.shape[-1]
    ones = torch.ones(b, 1, h, w, dtype=torch.float32, device=query_images.device)
    return torch.cat([ones * scale, ones * -scale], dim=1)


class FewShotSegmentor(nn.Module):
    """Encoder + parameter-free prototype head: 1-way, S-shot segmentation of query slices (ssl_alpnet.md §1, §5).

    Args:
        encoder: any module mapping ``[N, in_channels, H, W]`` to ``[N, C, H/8, W/8]`` features (``out_channels``
            attribute recommended), e.g. :class:`~labelless.networks.encoders.DilatedResNet`.
        head: prototype head called as ``head(support_features, support_fg_mask, query_features, window=...,
            output_size=...)``; default :class:`~labelless.networks.prototypes.ALPHead` (no parameters).
        train_window: local-prototype window in training mode (4).
        test_window: local-prototype window in evaluation mode (2).
        cache_support: in evaluation mode without gradients, reuse the encoding of a support passed before (the
            protocol's predictor calls it for every chunk of every scan: each distinct support is encoded once per
            evaluation); the cache is dropped on ``train()``, ``load_state_dict`` and any in-place change of the
            weights.
        cache_size: supports kept in that cache (least recently used dropped first).

    Raises:
        ConfigError: non-positive windows or an encoder that is not a module.

    Call forms: ``model(support_images, support_masks, query_images)``, or ``model(image)`` with the support stored
    by :meth:`set_support` (none stored: :func:`empty_fewshot_logits`). ``torch.jit.script(model)`` scripts
    :meth:`export_module` (MONAI's ``ckpt_export``); the stored support travels with it.

    Examples::

        model = build_fewshot_segmentor("resnet101", pretrained_path="deeplabv3_resnet101_coco.pth").eval()
        with torch.no_grad():
            logits = model(support_images, support_masks, query_images)  # [B, 2, 256, 256]
            enc = model.encode_support(support_images, support_masks)    # encode once ...
            logits = model.segment_with(enc, volume_slices, batch_size=16)  # ... segment many slices
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module | None = None,
        train_window: int = 4,
        test_window: int = 2,
        cache_support: bool = True,
        cache_size: int = 64,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise ConfigError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        for name, value in (("train_window", train_window), ("test_window", test_window)):
            if int(value) < 1 or int(value) != value:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.encoder = encoder
        self.head = ALPHead() if head is None else head
        self.train_window = int(train_window)
        self.test_window = int(test_window)
        self.cache_support = as_bool(cache_support, "cache_support")
        if isinstance(cache_size, bool) or int(cache_size) != cache_size or int(cache_size) < 1:
            raise ConfigError(f"cache_size must be a positive integer, got {cache_size!r}")
        self.cache_size = int(cache_size)
        self.in_channels: int | None = getattr(encoder, "in_channels", None)
        # fingerprint -> (support images, support masks, weights version, encoding); see _cached_encoding
        self._cache: collections.OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, tuple[int, ...], SupportEncoding]]
        self._cache = collections.OrderedDict()
        self.support_encodings = 0  # encode_support calls made for the cache (benchmarks count them per evaluation)
        self._register_load_state_dict_pre_hook(self._drop_cache_hook)
        # the stored support of the single-input call (set_support); not in the state dict
        self.register_buffer("support_image", torch.zeros(0), persistent=False)
        self.register_buffer("support_mask", torch.zeros(0), persistent=False)

    # ------------------------------------------------------------------------------------------------ helpers
    def _drop_cache_hook(self, *args: object, **kwargs: object) -> None:
        self._cache.clear()

    def clear_cache(self) -> None:
        """Forget the cached support encodings."""
        self._cache.clear()

    def train(self, mode: bool = True) -> FewShotSegmentor:
        """Set the training mode (also drops the cached support encodings)."""
        self._cache.clear()
        return super().train(mode)

    @property
    def has_support(self) -> bool:
        """Whether a support is stored for the single-input call (:meth:`set_support`)."""
        return self.support_image.numel() > 0

    def set_support(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> None:
        """Store the support that ``model(image)`` (and the exported network) segments with.

        Args:
            support_images: ``[S, C, H, W]`` support slices, preprocessed as the query slices will be.
            support_masks: ``[S, 1, H, W]`` (or ``[S, H, W]``) binary FG masks, every shot with foreground.

        Raises:
            DataError: bad shapes, mask values outside [0, 1], or a shot without foreground.
        """
        masks = self._check_support(support_images, support_masks)
        m = masks.detach().float()
        if not bool(torch.isfinite(m).all()) or float(m.min()) < 0.0 or float(m.max()) > 1.0:
            raise DataError("support masks", "mask values must be finite and within [0, 1]")
        empty = [i for i, v in enumerate(m.flatten(1).amax(dim=1).tolist()) if v <= 0]
        if empty:
            raise DataError("support masks", f"empty support mask: shot(s) {empty} have no foreground pixels")
        device = self.support_image.device
        self.support_image = support_images.detach().float().clone().to(device)
        self.support_mask = m.clone().to(device)
        self._cache.clear()

    def clear_support(self) -> None:
        """Forget the stored support (``model(image)`` gives the empty result again)."""
        self.support_image = self.support_image.new_zeros(0)
        self.support_mask = self.support_mask.new_zeros(0)
        self._cache.clear()

    def export_module(self) -> FewShotExport:
        """The TorchScript/ONNX twin of this network (:class:`FewShotExport`): the same encoder (shared, not
        copied), the head's fixed-size twin for ``test_window`` and the stored support.

        Returns:
            the export module, in this network's training mode (call it on an ``eval()`` network).

        Raises:
            ConfigError: the head has no ``export_head``.
        """
        make_head = getattr(self.head, "export_head", None)
        if make_head is None:
            raise ConfigError(f"{type(self.head).__name__} has no export_head(window): it cannot be exported")
        module = FewShotExport(
            self.encoder, make_head(self.test_window), self.support_image, self.support_mask, self._empty_scale()
        )
        return module.train(self.training)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(model)`` scripts :meth:`export_module` (the eager forward is not scriptable)."""
        return self.export_module()

    def _empty_scale(self) -> float:
        return float(getattr(self.head, "scale", SCALE))

    @property
    def window(self) -> int:
        """The local-prototype window of the current mode (``train_window`` or ``test_window``)."""
        return self.train_window if self.training else self.test_window

    def _weights_version(self) -> tuple[int, ...]:
        return tuple(t._version for t in (*self.parameters(), *self.buffers()))

    def _check_support(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        if not isinstance(support_images, torch.Tensor) or not isinstance(support_masks, torch.Tensor):
            raise DataError(
                "support",
                f"support images and masks must be tensors, got {_shape(support_images)}, {_shape(support_masks)}",
            )
        if support_images.dim() == 5:
            raise DataError(
                "support images",
                f"got a batch of episodes {tuple(support_images.shape)}; pass one episode [S, C, H, W] (squeeze the "
                "episode batch dimension; only batch size 1 episodes are supported)",
            )
        if support_images.dim() != 4:
            raise DataError("support images", f"expected [S, C, H, W], got shape {tuple(support_images.shape)}")
        s = support_images.shape[0]
        if s < 1:
            raise DataError("support images", "need at least one support shot")
        if self.in_channels is not None and support_images.shape[1] != self.in_channels:
            raise DataError(
                "support images",
                f"expected {self.in_channels} channels (slice repeated), got shape {tuple(support_images.shape)}",
            )
        masks = support_masks
        if masks.dim() == 3:
            masks = masks.unsqueeze(1)
        if masks.dim() != 4 or masks.shape[0] != s:
            raise DataError(
                "support masks",
                f"expected [S={s}, 1, H, W] (one mask per support shot), got shape {tuple(support_masks.shape)}",
            )
        if masks.shape[1] != 1:
            raise DataError(
                "support masks",
                f"multi-way episodes are not supported: one class (one FG mask per shot) per call, got "
                f"{masks.shape[1]} masks per shot (shape {tuple(support_masks.shape)}); segment each class separately",
            )
        if tuple(masks.shape[-2:]) != tuple(support_images.shape[-2:]):
            raise DataError(
                "support masks",
                f"mask size {tuple(masks.shape[-2:])} differs from the support image size "
                f"{tuple(support_images.shape[-2:])}",
            )
        return masks

    def _check_query(self, query_images: torch.Tensor) -> None:
        if not isinstance(query_images, torch.Tensor):
            raise DataError("query images", f"must be a tensor, got {type(query_images).__name__}")
        if query_images.dim() != 4:
            raise DataError("query images", f"expected [B, C, H, W], got shape {tuple(query_images.shape)}")
        if query_images.shape[0] < 1:
            raise DataError("query images", "need at least one query slice")
        if self.in_channels is not None and query_images.shape[1] != self.in_channels:
            raise DataError(
                "query images",
                f"expected {self.in_channels} channels (slice repeated), got shape {tuple(query_images.shape)}",
            )

    def _head(
        self, support_features: torch.Tensor, masks: torch.Tensor, query_features: torch.Tensor, window: int
    ) -> torch.Tensor:
        # the head always runs in float32 (cosines with eps 1e-4 and the ×20 scale), also under autocast
        with torch.autocast(device_type=query_features.device.type, enabled=False):
            return self.head(support_features.float(), masks, query_features.float(), window=window)

    def _output(
        self, enc: SupportEncoding, query_features: torch.Tensor, size: Sequence[int], window: int, aux: bool
    ) -> torch.Tensor | FewShotOutput:
        low = self._head(enc.features, enc.masks, query_features, window)
        logits = F.interpolate(low, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
        if not aux:
            return logits
        info = getattr(self.head, "last_info", {}) or {}
        return FewShotOutput(
            logits, low, enc.features, query_features.float(), int(window), bool(info.get("bg_fallback", False))
        )

    # ------------------------------------------------------------------------------------------------ public API
    def encode_support(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> SupportEncoding:
        """Encode a support once (eval mode recommended) for :meth:`segment_with`.

        Args:
            support_images: ``[S, C, H, W]``.
            support_masks: ``[S, 1, H, W]`` (or ``[S, H, W]``) binary FG masks.

        Returns:
            a :class:`SupportEncoding`.

        Raises:
            DataError: bad shapes (batched episodes, several masks per shot, size mismatch).
        """
        masks = self._check_support(support_images, support_masks)
        feats = self.encoder(support_images)
        return SupportEncoding(feats.float(), masks.to(feats.device), tuple(int(s) for s in support_images.shape[-2:]))

    def segment_with(
        self,
        encoding: SupportEncoding,
        query_images: torch.Tensor,
        window: int | None = None,
        batch_size: int | None = None,
        return_aux: bool = False,
    ) -> torch.Tensor | FewShotOutput:
        """Segment query slices with an encoded support.

        Args:
            encoding: from :meth:`encode_support`.
            query_images: ``[B, C, H, W]`` (any size divisible by the encoder stride).
            window: local-prototype window (default: the current mode's window).
            batch_size: encode at most this many query slices at a time (default all at once).
            return_aux: return a :class:`FewShotOutput` (only without ``batch_size`` splitting).

        Returns:
            ``[B, 2, H, W]`` logits (or a :class:`FewShotOutput`).

        Raises:
            DataError: bad query shape.
            ConfigError: ``return_aux`` together with ``batch_size`` smaller than B, or a non-positive size.
        """
        self._check_query(query_images)
        win = self.window if window is None else int(window)
        b = query_images.shape[0]
        size = query_images.shape[-2:]
        if batch_size is None or int(batch_size) >= b:
            return self._output(encoding, self.encoder(query_images), size, win, return_aux)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if return_aux:
            raise ConfigError("return_aux=True cannot be combined with batch_size splitting")
        parts = [
            self._output(encoding, self.encoder(query_images[i : i + int(batch_size)]), size, win, False)
            for i in range(0, b, int(batch_size))
        ]
        return torch.cat(parts, dim=0)

    @staticmethod
    def _fingerprint(images: torch.Tensor, masks: torch.Tensor) -> tuple:
        """A cheap key of a support (shapes, dtypes, device, sums and a strided sample); a hit is confirmed with
        ``torch.equal``, so two supports with the same fingerprint never share an encoding."""
        parts: list = [images.device]
        for t in (images, masks):
            flat = t.detach().reshape(-1)
            parts += [
                tuple(t.shape),
                t.dtype,
                float(flat.double().sum()),
                float(flat[:: max(1, flat.numel() // 97)].double().sum()),
            ]
        return tuple(parts)

    def _cached_encoding(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> SupportEncoding:
        version = self._weights_version()
        key = self._fingerprint(support_images, support_masks)
        entry = self._cache.get(key)
        if entry is not None:
            c_img, c_msk, c_ver, enc = entry
            if c_ver == version and torch.equal(c_img, support_images) and torch.equal(c_msk, support_masks):
                self._cache.move_to_end(key)
                return enc
        enc = self.encode_support(support_images, support_masks)
        self.support_encodings += 1
        self._cache[key] = (support_images.detach().clone(), support_masks.detach().clone(), version, enc)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return enc

    def forward(
        self,
        support_images: torch.Tensor,
        support_masks: torch.Tensor | None = None,
        query_images: torch.Tensor | None = None,
        window: int | None = None,
        return_aux: bool = False,
    ) -> torch.Tensor | FewShotOutput:
        """Two-channel [BG, FG] logits of the query slices at their input size.

        ``model(image)`` (one tensor) segments the query images ``image`` with the stored support
        (:meth:`set_support`); without one it returns :func:`empty_fewshot_logits`.

        Args:
            support_images: ``[S, C, H, W]`` support slices (S shots of one class), or the query images when it is
                the only tensor given.
            support_masks: ``[S, 1, H, W]`` (or ``[S, H, W]``) binary FG masks of the support slices.
            query_images: ``[B, C, H, W]``; B must be 1 in training mode (1 query per episode).
            window: local-prototype window; default ``train_window`` in training mode, ``test_window`` in eval mode.
            return_aux: also return the low-resolution logits and the feature maps (:class:`FewShotOutput`).

        Returns:
            ``[B, 2, H, W]`` logits, or a :class:`FewShotOutput`.

        Raises:
            DataError: bad shapes: batched episodes, multi-way masks, several queries in training, channel or size
                mismatches, empty support masks (from the head), only one of ``support_masks``/``query_images``.
            ConfigError: ``return_aux`` without a support.
        """
        if support_masks is None and query_images is None:
            query_images = support_images
            if not self.has_support:
                self._check_query(query_images)
                if return_aux:
                    raise ConfigError("return_aux=True needs a support: pass one or store it with set_support()")
                return empty_fewshot_logits(query_images, self._empty_scale())
            support_images, support_masks = self.support_image, self.support_mask
        elif support_masks is None or query_images is None:
            raise DataError(
                "FewShotSegmentor",
                "pass the query images alone (segmented with the support stored by set_support) or support images, "
                "support masks and query images",
            )
        masks = self._check_support(support_images, support_masks)
        self._check_query(query_images)
        win = self.window if window is None else int(window)
        if self.training:
            if query_images.shape[0] != 1:
                raise DataError(
                    "query images",
                    f"training episodes have exactly one query (1-way, 1-query), got {query_images.shape[0]} "
                    f"(shape {tuple(query_images.shape)})",
                )
            if tuple(query_images.shape[1:]) != tuple(support_images.shape[1:]):
                raise DataError(
                    "query images",
                    f"in training, support {tuple(support_images.shape[1:])} and query "
                    f"{tuple(query_images.shape[1:])} slices must have the same size (encoded in one batch)",
                )
        if self.training or torch.is_grad_enabled() or not self.cache_support:
            if tuple(query_images.shape[1:]) == tuple(support_images.shape[1:]):
                s = support_images.shape[0]
                feats = self.encoder(torch.cat([support_images, query_images.to(support_images.dtype)], dim=0))
                enc = SupportEncoding(
                    feats[:s].float(), masks.to(feats.device), tuple(int(v) for v in support_images.shape[-2:])
                )
                q_feats = feats[s:]
            else:
                enc = self.encode_support(support_images, masks)
                q_feats = self.encoder(query_images)
            return self._output(enc, q_feats, query_images.shape[-2:], win, return_aux)
        enc = self._cached_encoding(support_images, masks)
        return self.segment_with(enc, query_images, window=win, return_aux=return_aux)


class FewShotExport(nn.Module):
    """The exportable few-shot network (from :meth:`FewShotSegmentor.export_module`): TorchScript and ONNX.

    ``forward(image)`` segments ``image`` with the stored support (none: :func:`empty_fewshot_logits`);
    ``forward(support_images, support_masks, query_images)`` with the given one: the call forms of the eager network,
    evaluation mode only (one window, ``test_window``). Support and query slices are encoded separately (as the
    eager network's support cache does) and the fixed-size head (e.g.
    :class:`~labelless.networks.prototypes.ALPExportHead`) gives the eager head's logits. The state dict has the
    segmentor's keys (``encoder.*``, ``head.*``); the stored support is kept in non-persistent buffers, which
    TorchScript saves with the module.

    Args:
        encoder: the segmentor's encoder (shared).
        head: fixed-size head called as ``head(support_features, support_masks, query_features)``.
        support_image: stored support ``[S, C, H, W]`` (empty tensor: none).
        support_mask: its FG masks ``[S, 1, H, W]``.
        empty_scale: logit magnitude of the empty result.

    Examples::

        export = model.eval().export_module()
        scripted = torch.jit.script(export)       # == torch.jit.script(model)
        logits = scripted(support_images, support_masks, query_images)  # [B, 2, H, W]
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        support_image: torch.Tensor | None = None,
        support_mask: torch.Tensor | None = None,
        empty_scale: float = SCALE,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        none = torch.zeros(0)
        self.register_buffer("support_image", none if support_image is None else support_image, persistent=False)
        self.register_buffer("support_mask", none.clone() if support_mask is None else support_mask, persistent=False)
        self.empty_scale = float(empty_scale)

    def forward(
        self, x: torch.Tensor, support_masks: torch.Tensor | None = None, query_images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, 2, H, W]`` [BG, FG] logits of the query images.

        Args:
            x: the query images ``[B, C, H, W]`` when given alone, else the support images ``[S, C, H', W']``.
            support_masks: ``[S, 1, H', W']`` FG masks.
            query_images: ``[B, C, H, W]``.

        Returns:
            ``[B, 2, H, W]`` float32 logits.

        Raises:
            ValueError: only one of ``support_masks``/``query_images``, or bad support masks (TorchScript).
        """
        if support_masks is None and query_images is None:
            query = x
            if self.support_image.numel() == 0:
                return empty_fewshot_logits(query, self.empty_scale)
            support = self.support_image
            masks = self.support_mask
        elif support_masks is not None and query_images is not None:
            support = x
            masks = support_masks
            query = query_images
        else:
            raise ValueError("give the query images alone (stored support) or support images, masks and query images")
        fs = self.encoder(support).float()
        fq = self.encoder(query).float()
        low = self.head(fs, masks, fq)
        return F.interpolate(low, size=[query.shape[-2], query.shape[-1]], mode="bilinear", align_corners=False)


class SegmentorFeatures(nn.Module):
    """The encoder of a :class:`FewShotSegmentor` as a single-input module: image -> features (``export_def``).

    The whole network exports from the segmentor itself (``ckpt_export network_def``, :class:`FewShotExport`); this
    module exports the features only, for callers that apply a prototype head in Python. It also holds the head's
    export twin (unused by ``forward``) so that its state dict has the segmentor's keys (``encoder.*`` and
    ``head.*``, e.g. DSPNet's ``Cal``, PSMNet's MCAM): a bundle checkpoint loads into it strictly.

    Args:
        segmentor: the few-shot segmentor whose encoder is exported (shared, not copied).

    Examples::

        feats = SegmentorFeatures(build_fewshot_segmentor("tiny"))(torch.randn(1, 3, 64, 64))  # [1, 256, 8, 8]
    """

    def __init__(self, segmentor: FewShotSegmentor) -> None:
        super().__init__()
        self.encoder = segmentor.encoder
        self.head = segmentor.export_module().head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, C, H/8, W/8]`` features."""
        return self.encoder(x)


def build_fewshot_segmentor(
    encoder: str | nn.Module = "resnet101",
    pretrained_path: str | os.PathLike | None = None,
    train_window: int = 4,
    test_window: int = 2,
    threshold: float = LOCAL_THRESHOLD,
    cache_support: bool = True,
    encoder_options: dict | None = None,
    cache_size: int = 64,
    **encoder_kwargs: object,
) -> FewShotSegmentor:
    """Build the SSL-ALPNet model: an encoder by name and an :class:`~labelless.networks.prototypes.ALPHead`.

    Args:
        encoder: ``"resnet101"`` (published), ``"resnet50"``, ``"resnet34"``, ``"resnet18"``, ``"tiny"`` (tests), or
            an encoder module.
        pretrained_path: optional local torchvision ResNet / DeepLabV3 checkpoint for ResNet encoders (``None``:
            random initialisation with a warning).
        train_window: local-prototype window in training (4).
        test_window: local-prototype window at test (2).
        threshold: local-prototype threshold (strict ``>``, 0.95).
        cache_support: see :class:`FewShotSegmentor`.
        encoder_options: a dict of encoder keyword arguments (convenient in bundle configs, e.g.
            ``{"base_width": 32}``); merged with ``encoder_kwargs``.
        cache_size: supports kept by the support cache (see :class:`FewShotSegmentor`).
        encoder_kwargs: passed to :func:`~labelless.networks.encoders.build_encoder` (e.g. ``out_channels``,
            ``channels`` of the tiny encoder, ``base_width`` of the ResNets).

    Returns:
        the model (training mode, CPU; place it with ``.to(device)``).

    Raises:
        ConfigError: unknown encoder name, or ``pretrained_path`` with the tiny encoder or an encoder module.
    """
    encoder_kwargs = {**dict(encoder_options or {}), **encoder_kwargs}
    if isinstance(encoder, nn.Module):
        if pretrained_path is not None or encoder_kwargs:
            raise ConfigError("pretrained_path and encoder keyword arguments apply only to an encoder given by name")
        enc = encoder
    else:
        name = str(encoder).strip().lower()
        if name == "tiny":
            if pretrained_path is not None:
                raise ConfigError("pretrained_path is only supported for the ResNet encoders, not 'tiny'")
            enc = build_encoder(name, **encoder_kwargs)
        else:
            enc = build_encoder(name, pretrained_path=pretrained_path, **encoder_kwargs)
    return FewShotSegmentor(
        enc,
        ALPHead(threshold=threshold),
        train_window=train_window,
        test_window=test_window,
        cache_support=cache_support,
        cache_size=cache_size,
    )
