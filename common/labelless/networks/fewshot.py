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
from labelless.networks.prototypes import LOCAL_THRESHOLD, ALPHead
from labelless.utils import as_bool

__all__ = ["FewShotOutput", "SupportEncoding", "FewShotSegmentor", "SegmentorFeatures", "build_fewshot_segmentor"]


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
        support_masks: torch.Tensor,
        query_images: torch.Tensor,
        window: int | None = None,
        return_aux: bool = False,
    ) -> torch.Tensor | FewShotOutput:
        """Two-channel [BG, FG] logits of the query slices at their input size.

        Args:
            support_images: ``[S, C, H, W]`` support slices (S shots of one class).
            support_masks: ``[S, 1, H, W]`` (or ``[S, H, W]``) binary FG masks of the support slices.
            query_images: ``[B, C, H, W]``; B must be 1 in training mode (1 query per episode).
            window: local-prototype window; default ``train_window`` in training mode, ``test_window`` in eval mode.
            return_aux: also return the low-resolution logits and the feature maps (:class:`FewShotOutput`).

        Returns:
            ``[B, 2, H, W]`` logits, or a :class:`FewShotOutput`.

        Raises:
            DataError: bad shapes: batched episodes, multi-way masks, several queries in training, channel or size
                mismatches, empty support masks (from the head).
        """
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


class SegmentorFeatures(nn.Module):
    """The trainable part of a :class:`FewShotSegmentor` (its encoder), as a single-input module for export.

    Its state dict has the segmentor's keys (``encoder.*``), so a bundle checkpoint loads into it unchanged and MONAI's
    ``ckpt_export`` can write it to TorchScript. The prototype heads have data-dependent control flow (a variable number
    of prototypes); they stay in Python, applied to the exported features: ``ALPHead`` has no parameters, the heads
    with parameters (DSPNet's ``Cal``, PSMNet's MCAM) load them from the same checkpoint (``head.*`` keys).

    Args:
        segmentor: the few-shot segmentor whose encoder is exported (shared, not copied).

    Examples::

        feats = SegmentorFeatures(build_fewshot_segmentor("tiny"))(torch.randn(1, 3, 64, 64))  # [1, 256, 8, 8]
    """

    def __init__(self, segmentor: FewShotSegmentor) -> None:
        super().__init__()
        self.encoder = segmentor.encoder

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
