# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Noise of the FSMS denoising surrogate task (fsms.md §3.1, §2.3).

- :func:`draw_sigma`: one noise level ``σ = round(U(low, high), 3)`` from a given generator.
- :func:`add_gaussian_noise`: ``x + σ·N(0, 1)``, not clipped.
- :func:`surrogate_target`: the clean images resized to the surrogate head's grid (the denoising target).

Examples::

    gen = torch.Generator().manual_seed(seed + iteration)
    sigma = draw_sigma(gen)                         # e.g. 0.347
    noisy = add_gaussian_noise(clean, sigma, gen)   # [N, 3, 224, 224]
    target = surrogate_target(clean, 56)            # [N, 3, 56, 56]
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from labelless.errors import ConfigError, DataError

__all__ = ["draw_sigma", "add_gaussian_noise", "surrogate_target"]


def draw_sigma(
    rng_or_generator: torch.Generator | np.random.Generator | np.random.RandomState | random.Random | None,
    low: float = 0.1,
    high: float = 0.6,
) -> float:
    """One noise level ``σ = round(U(low, high), 3)`` (fsms.md §3.1).

    Args:
        rng_or_generator: a ``torch.Generator``, numpy ``Generator``/``RandomState`` or ``random.Random``; ``None``
            uses torch's global generator.
        low: lower bound.
        high: upper bound (``high ≥ low``).

    Returns:
        σ as a Python float rounded to 3 decimals.

    Raises:
        ConfigError: ``low > high``, negative or non-finite bounds, or an unsupported generator type.

    Examples::

        draw_sigma(torch.Generator().manual_seed(0))  # same value for the same seed
    """
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high < low:
        raise ConfigError(f"noise sigma range must satisfy 0 <= low <= high, got ({low}, {high})")
    g = rng_or_generator
    if g is None or isinstance(g, torch.Generator):
        u = float(torch.rand((), generator=g, dtype=torch.float64))
    elif isinstance(g, np.random.Generator | np.random.RandomState):
        u = float(g.uniform(0.0, 1.0))
    elif isinstance(g, random.Random):
        u = g.random()
    else:
        raise ConfigError(f"unsupported random generator {type(g).__name__} (torch.Generator, numpy or random.Random)")
    return round(low + (high - low) * u, 3)


def add_gaussian_noise(images: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``images + sigma · N(0, 1)`` per pixel and channel, **not clipped** (fsms.md §3.1). The input is not modified.

    The noise is drawn on the generator's device (CPU for a CPU generator, so seeded runs give the same noise on
    every device) and moved to the images' device.

    Args:
        images: float images, any shape.
        sigma: noise standard deviation (≥ 0).
        generator: a ``torch.Generator``; ``None`` uses the global generator of the images' device.

    Returns:
        noisy images, same shape, dtype and device.

    Raises:
        ConfigError: negative or non-finite ``sigma``.

    Examples::

        noisy = add_gaussian_noise(clean, 0.3, torch.Generator().manual_seed(0))
    """
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"noise sigma must be a finite value >= 0, got {sigma!r}")
    dev = images.device if generator is None else generator.device
    noise = torch.randn(images.shape, generator=generator, device=dev, dtype=torch.float32)
    return images + sigma * noise.to(device=images.device, dtype=images.dtype)


def surrogate_target(images: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """The clean images resized bilinearly (``align_corners=False``) to the surrogate grid (fsms.md §2.3).

    3D images (``[N, C, D, H, W]``) are resized trilinearly.

    Args:
        images: ``[N, C, *S]`` clean images in [0, 1].
        size: target size (int or one per spatial dim), e.g. 56 for 224 inputs.

    Returns:
        ``[N, C, *size]`` targets (values stay in [0, 1]).

    Raises:
        DataError: fewer than 4 dims or non-finite values.
        ConfigError: a ``size`` sequence whose length is not the number of spatial dims.

    Examples::

        target = surrogate_target(clean, 56)  # [N, 3, 224, 224] -> [N, 3, 56, 56]
    """
    if images.dim() not in (4, 5):
        raise DataError("surrogate images", f"expected [N, C, H, W] (or [N, C, D, H, W]), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise DataError("surrogate images", "non-finite values (NaN/inf)")
    spatial_dims = images.dim() - 2
    if isinstance(size, int | np.integer):
        grid = (int(size),) * spatial_dims
    else:
        grid = tuple(int(s) for s in size)
        if len(grid) != spatial_dims:
            raise ConfigError(f"size {size!r} must have {spatial_dims} entries")
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    return F.interpolate(images, size=grid, mode=mode, align_corners=False)
