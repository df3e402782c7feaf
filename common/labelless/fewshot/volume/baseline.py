# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""A training-free few-shot baseline: the ALP head over handcrafted multi-scale intensity features.

It needs no weights, so the evaluation protocol, reports and overlays can run (and be checked) on any prepared
dataset before a model is trained. It is a *baseline*, not one of the published methods: its numbers say how far
plain intensity similarity gets, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from labelless.networks.prototypes import ALPHead

__all__ = ["IntensityFeatures", "IntensityPrototypePredictor"]


def _gaussian_kernel1d(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(int(round(2.0 * sigma)), 1)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class IntensityFeatures(nn.Module):
    """Parameter-free features: a constant channel plus Gaussian-smoothed intensities at several scales.

    Args:
        sigmas: smoothing scales in pixels (0 = the raw intensity).
        stride: output stride (average pooling), like an encoder's.
        offset: value of the constant channel; it makes the cosine similarity sensitive to intensity differences.

    Examples::

        feats = IntensityFeatures(stride=4)(torch.randn(2, 3, 64, 64))  # [2, 5, 16, 16]
    """

    def __init__(self, sigmas: Sequence[float] = (0.0, 1.0, 2.0, 4.0), stride: int = 4, offset: float = 2.0) -> None:
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        self.stride = int(stride)
        self.offset = float(offset)

    @property
    def out_channels(self) -> int:
        return len(self.sigmas) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        img = x[:, :1]
        chans = [torch.full_like(img, self.offset)]
        for s in self.sigmas:
            if s <= 0:
                chans.append(img)
                continue
            k = _gaussian_kernel1d(s, img.device, img.dtype)
            r = k.numel() // 2
            y = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
            y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
            chans.append(y)
        feats = torch.cat(chans, dim=1)
        return F.avg_pool2d(feats, self.stride) if self.stride > 1 else feats


class IntensityPrototypePredictor:
    """A :data:`labelless.fewshot.volume.protocol.Predictor` with no learnt weights (ALP head on intensity features).

    Args:
        stride: feature stride.
        window: local-prototype window (cells of the feature grid).
        sigmas: smoothing scales of :class:`IntensityFeatures`.

    Examples::

        predictor = IntensityPrototypePredictor()
        logits = predictor(support_images, support_masks, query_images)  # [B, 2, H, W]
    """

    def __init__(self, stride: int = 4, window: int = 2, sigmas: Sequence[float] = (0.0, 1.0, 2.0, 4.0)) -> None:
        self.features = IntensityFeatures(sigmas, stride)
        self.head = ALPHead()
        self.window = int(window)

    @torch.no_grad()
    def __call__(
        self, support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        fs = self.features(support_images)
        fq = self.features(query_images)
        return self.head(fs, support_masks, fq, window=self.window, output_size=tuple(query_images.shape[-2:]))
