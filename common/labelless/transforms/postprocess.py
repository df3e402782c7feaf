# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Post-processing of a soft lesion mask into a binary mask (cltnet.md §6), with scikit-image/scipy only.

- :func:`zero_black_background`: the mask is 0 where the input pixel is pure black in **all** channels (air around
  BraTS brains; the reference tests each channel separately).
- :func:`zero_corners`: the four corner triangles of a 256 grid, scaled to the mask size (dermoscopy vignetting).
- :func:`binarize_soft_mask`: ``threshold`` (M ≥ 0.5), ``watershed`` (Otsu + marker watershed on 1 − M; every
  marker region ≥ 2 is foreground, the reference bug of keeping markers ≥ 5 as grey values is not copied) or ``crf``
  (dense CRF, optional ``pydensecrf``; a clear error when it is missing).
- :func:`intensity_prior`: the grey image's darkness (or brightness), min-max normalised over the kept pixels; with
  ``SoftMaskPostprocess(intensity_prior=...)`` the soft mask becomes ``sqrt(M · prior)`` before binarisation (not in
  the spec, off by default: on ISIC-2016 the gate finds the lesion's neighbourhood, the grey level its boundary).
- :class:`SoftMaskPostprocess`: the steps with config switches, as a MONAI ``Transform``;
  :class:`SoftMaskPostprocessd` its dictionary twin (the CLTNet inference runner's ``postprocessing`` step).
- :class:`Binarize` / :class:`Binarized`: a probability map → a binary mask at a threshold (``p > t``, or ``p ≥ t``),
  the last step of the other inference runners' ``postprocessing``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy
from scipy import ndimage

from labelless.errors import ConfigError, DataError
from labelless.io.loading import loaded_meta
from labelless.options import as_float
from labelless.utils import as_bool

__all__ = [
    "POSTPROCESS_MODES",
    "zero_black_background",
    "zero_corners",
    "watershed_mask",
    "crf_mask",
    "INTENSITY_PRIORS",
    "intensity_prior",
    "binarize_soft_mask",
    "otsu_mask",
    "SoftMaskPostprocess",
    "SoftMaskPostprocessd",
    "SoftMaskPostprocessD",
    "SoftMaskPostprocessDict",
    "Binarize",
    "Binarized",
    "BinarizeD",
    "BinarizeDict",
]

POSTPROCESS_MODES = ("threshold", "watershed", "crf", "otsu")
INTENSITY_PRIORS = ("none", "dark", "bright")


def _soft(mask: Any) -> np.ndarray:
    m = convert_to_numpy(mask, dtype=np.float64, wrap_sequence=True)
    m = np.squeeze(m)
    if m.ndim != 2:
        raise DataError("mask", f"expected a 2D soft mask, got shape {np.shape(mask)}")
    if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
        raise DataError("mask", "soft mask values must be finite and in [0, 1]")
    return m


def zero_black_background(mask: Any, image: Any, black: float = -1.0) -> np.ndarray:
    """The soft mask with 0 where every channel of ``image`` (``[C, H, W]`` in [−1, 1]) equals ``black``."""
    m = _soft(mask)
    img = convert_to_numpy(image, dtype=np.float64, wrap_sequence=True)
    if img.ndim == 2:
        img = img[None]
    if img.shape[-2:] != m.shape:
        raise DataError("image", f"image size {img.shape[-2:]} differs from the mask size {m.shape}")
    return np.where(np.all(img <= black + 1e-6, axis=0), 0.0, m)


def zero_corners(mask: Any, cut: float = 80 / 256) -> np.ndarray:
    """The soft mask with its four corner triangles zeroed: ``i + j ≤ cut · n`` from each corner (``cut`` = 80/256,
    the reference's triangles on a 256 grid, scaled to the mask size)."""
    m = _soft(mask).copy()
    h, w = m.shape
    i = np.arange(h)[:, None] / max(h, 1) * 256.0
    j = np.arange(w)[None, :] / max(w, 1) * 256.0
    c = float(cut) * 256.0
    corner = (i + j <= c) | ((256 - i) + j <= c) | (i + (256 - j) <= c) | (i + j >= 512 - c)
    m[corner] = 0.0
    return m


def watershed_mask(mask: Any) -> np.ndarray:
    """Marker watershed of cltnet.md §6 on the grey image of ``1 − M`` (0..255): Otsu threshold inverted, opening 3×3
    (2 iterations), sure background = dilation 7×7 (3 iterations), sure foreground = distance > 0.7 · max, markers =
    connected components of the sure foreground + 1, unknown = 0, flooded on the gradient of the grey image; every
    marker region ≥ 2 is foreground.

    Scikit-image's watershed may differ from OpenCV's at region boundaries.
    """
    from skimage.filters import sobel, threshold_otsu
    from skimage.segmentation import watershed

    m = _soft(mask)
    grey = np.round((1.0 - m) * 255.0)
    if grey.max() == grey.min():
        return np.zeros(m.shape, bool) if grey.max() > 127 else np.ones(m.shape, bool)
    fg = grey <= threshold_otsu(grey)  # lesion = low 1 − M
    opened = ndimage.binary_opening(fg, structure=np.ones((3, 3)), iterations=2)
    sure_bg = ndimage.binary_dilation(opened, structure=np.ones((7, 7)), iterations=3)
    dist = ndimage.distance_transform_edt(opened)
    if dist.max() <= 0:
        return np.zeros(m.shape, bool)
    sure_fg = dist > 0.7 * dist.max()
    markers, _ = ndimage.label(sure_fg)
    markers = markers + 1
    markers[sure_bg & ~sure_fg] = 0  # unknown
    labels = watershed(sobel(grey), markers)  # flooding on the gradient, as OpenCV's watershed
    return labels >= 2


def crf_mask(mask: Any, image_rgb: Any, alpha: float = 1.0, iterations: int = 10) -> np.ndarray:
    """Dense-CRF refinement of cltnet.md §6 (optional module ``pydensecrf``: ``pip install pydensecrf2``).

    Args:
        mask: soft mask in [0, 1].
        image_rgb: ``(H, W, 3)`` uint8 image.
        alpha: exponent of the background probability ``(1 − fg)^alpha``; fixed in the config or chosen on the
            validation split only.
        iterations: mean-field iterations.

    Raises:
        ConfigError: ``pydensecrf`` is not installed (install it, or use ``threshold`` / ``watershed``).
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:
        raise ConfigError("postprocess='crf' needs the optional module pydensecrf (pip install pydensecrf2, a "
                          "maintained build of it); use 'otsu', 'threshold' or 'watershed' "
                          "without it") from e  # fmt: skip
    m = _soft(mask)
    fg = m / m.max() if m.max() > 0 else m
    probs = np.stack([(1.0 - fg) ** float(alpha), fg]).astype(np.float32)
    probs /= probs.sum(0, keepdims=True) + 1e-8
    rgb = np.ascontiguousarray(np.asarray(image_rgb, dtype=np.uint8))
    h, w = m.shape
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=rgb, compat=10)
    q = np.array(d.inference(int(iterations))).reshape(2, h, w)
    return q[1] >= 0.5


def intensity_prior(image: Any, dark: bool = True, region: Any = None) -> np.ndarray:
    """The grey level of ``image`` (``[3, H, W]`` or ``[H, W]``, any affine intensity range, e.g. [−1, 1]) min-max
    normalised over ``region`` (bool ``[H, W]``, default all pixels) to [0, 1], inverted with ``dark`` (lesions darker
    than the skin, dermoscopy), 0 outside ``region``; all 0 when the region is flat or has fewer than 2 pixels.

    Not in cltnet.md: the per-pixel intensity evidence that :class:`SoftMaskPostprocess` can combine with the gate
    (``intensity_prior``), and the soft map of the intensity + CRF baseline (``benchmarks/cltnet_baselines.py crf``).
    """
    img = convert_to_numpy(image, dtype=np.float64, wrap_sequence=True)
    if img.ndim == 3 and img.shape[0] == 3:
        grey = np.tensordot(np.array([0.299, 0.587, 0.114]), img, axes=1)
    elif img.ndim == 3 and img.shape[0] == 1:
        grey = img[0]
    elif img.ndim == 2:
        grey = img
    else:
        raise DataError("image", f"expected a [3, H, W], [1, H, W] or [H, W] image, got shape {img.shape}")
    reg = np.ones(grey.shape, bool) if region is None else np.asarray(region, bool)
    if reg.shape != grey.shape:
        raise DataError("region", f"region shape {reg.shape} differs from the image size {grey.shape}")
    if reg.sum() < 2 or grey[reg].max() == grey[reg].min():
        return np.zeros(grey.shape)
    lo, hi = float(grey[reg].min()), float(grey[reg].max())
    level = (grey - lo) / (hi - lo)
    return np.where(reg, 1.0 - level if dark else level, 0.0)


def otsu_mask(mask: Any, region: Any = None, min_range: float = 1e-3) -> np.ndarray:
    """The soft mask above its own Otsu threshold, computed over ``region`` (e.g. the non-black pixels; default all).

    Not in cltnet.md §6 (whose threshold is 0.5): an image-adaptive threshold for a mask gate that ranks lesion above
    tissue but is offset (e.g. 0.76 in the tumour and 0.60 elsewhere). When the mask varies by less than ``min_range``
    over the region (no contrast to split), the 0.5 threshold is used instead.
    """
    from skimage.filters import threshold_otsu

    m = _soft(mask)
    reg = np.ones(m.shape, bool) if region is None else np.asarray(region, bool)
    if reg.shape != m.shape:
        raise DataError("region", f"region shape {reg.shape} differs from the mask size {m.shape}")
    vals = m[reg]
    if vals.size == 0 or float(vals.max() - vals.min()) < min_range:
        return (m >= 0.5) & reg
    return (m > threshold_otsu(vals)) & reg


def binarize_soft_mask(
    mask: Any, mode: str = "threshold", image_rgb: Any = None, crf_alpha: float = 1.0, region: Any = None
) -> np.ndarray:
    """``mode`` ∈ :data:`POSTPROCESS_MODES` → a bool mask (``crf`` needs ``image_rgb``; ``otsu`` uses ``region``)."""
    if mode == "threshold":
        return _soft(mask) >= 0.5
    if mode == "otsu":
        return otsu_mask(mask, region)
    if mode == "watershed":
        return watershed_mask(mask)
    if mode == "crf":
        if image_rgb is None:
            raise ConfigError("postprocess='crf' needs the RGB image")
        return crf_mask(mask, image_rgb, crf_alpha)
    raise ConfigError(f"postprocess must be one of {POSTPROCESS_MODES}, got {mode!r}")


class SoftMaskPostprocess(Transform):
    """Background zeroing, corner zeroing and binarisation of a soft lesion mask (cltnet.md §6).

    Args:
        mode: ``threshold``, ``watershed``, ``crf`` or ``otsu`` (not in the spec: a per-image Otsu threshold of the
            mask over the pixels the zeroing keeps, see :func:`otsu_mask`).
        zero_black_background: zero the mask where the input is pure black in all channels.
        zero_corners: zero the four corner triangles (dermoscopy).
        crf_alpha: the CRF's background exponent.
        invert: use ``1 − M`` as the lesion mask (not in the spec, off by default): for a gate that marks the tissue
            the translation rewrites around the lesion rather than the lesion itself (seen on ISIC, docs/results.md).
            The inversion comes before the zeroing, so zeroed pixels stay background.
        intensity_prior: ``none`` (the spec), ``dark`` or ``bright`` (not in the spec, off by default): after the
            zeroing, the soft mask becomes ``sqrt(M · P)`` with ``P`` = :func:`intensity_prior` of the image over the
            pixels the zeroing keeps, so a pixel is lesion when the gate *and* its grey level say so (on ISIC-2016
            the gate marks the lesion's neighbourhood up to a sliding window's width, the darkness its boundary).

    Returns (``__call__(mask, image)``, image ``[3, H, W]`` in [−1, 1]):
        ``(soft mask after zeroing, bool mask)``.
    """

    def __init__(
        self,
        mode: str = "threshold",
        zero_black_background: bool | str = True,
        zero_corners: bool | str = False,
        crf_alpha: float = 1.0,
        invert: bool | str = False,
        intensity_prior: str = "none",
    ) -> None:
        if mode not in POSTPROCESS_MODES:
            raise ConfigError(f"postprocess must be one of {POSTPROCESS_MODES}, got {mode!r}")
        if intensity_prior not in INTENSITY_PRIORS:
            raise ConfigError(f"intensity_prior must be one of {INTENSITY_PRIORS}, got {intensity_prior!r}")
        self.mode = mode
        self.intensity_prior = intensity_prior
        self.zero_black_background = as_bool(zero_black_background, "zero_black_background")
        self.zero_corners = as_bool(zero_corners, "zero_corners")
        self.crf_alpha = float(crf_alpha)
        self.invert = as_bool(invert, "invert_mask")

    def __call__(self, mask: Any, image: Any) -> tuple[np.ndarray, np.ndarray]:
        soft = _soft(mask)
        if self.invert:
            soft = 1.0 - soft
        if self.zero_black_background:
            soft = zero_black_background(soft, image)
        if self.zero_corners:
            soft = zero_corners(soft)
        region = None
        if self.mode == "otsu" or self.intensity_prior != "none":  # the pixels the zeroing keeps
            region = np.ones(soft.shape, bool)
            if self.zero_black_background:
                region &= zero_black_background(np.ones(soft.shape), image) > 0
            if self.zero_corners:
                region &= zero_corners(np.ones(soft.shape)) > 0
        if self.intensity_prior != "none":
            soft = np.sqrt(soft * intensity_prior(image, self.intensity_prior == "dark", region))
        rgb = None
        if self.mode == "crf":
            img = convert_to_numpy(image, wrap_sequence=True)
            rgb = np.round((np.moveaxis(img, 0, -1) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        return soft, binarize_soft_mask(soft, self.mode, rgb, self.crf_alpha, region)


class SoftMaskPostprocessd(MapTransform):
    """Dictionary version of :class:`SoftMaskPostprocess`: ``data[key]`` (a soft mask at the input's size) becomes the
    soft mask after zeroing and ``data[output_key]`` the binary mask. The reference image is the input as
    :class:`~labelless.io.loading.LoadFiled` read it (``[3, H, W]`` in [0, 1], the ``"original"`` of ``image_key``),
    brought to [−1, 1] as the translation networks see it.

    Args:
        keys: the soft-mask key (one).
        image_key: the loaded image the mask belongs to.
        output_key: where the binary (bool) mask goes.
        mode, zero_black_background, zero_corners, crf_alpha, invert, intensity_prior: see
            :class:`SoftMaskPostprocess`.
        allow_missing_keys: skip missing keys instead of raising.

    Examples::

        post = SoftMaskPostprocessd("prob", image_key="image", output_key="pred", zero_corners=True)
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        output_key: str = "pred",
        mode: str = "threshold",
        zero_black_background: bool | str = True,
        zero_corners: bool | str = False,
        crf_alpha: float = 1.0,
        invert: bool | str = False,
        intensity_prior: str = "none",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ConfigError(f"SoftMaskPostprocessd takes one soft-mask key, got {list(self.keys)}")
        self.image_key, self.output_key = image_key, output_key
        self.post = SoftMaskPostprocess(mode, zero_black_background, zero_corners, crf_alpha, invert, intensity_prior)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = loaded_meta(d, self.image_key)["original"]
            d[key], d[self.output_key] = self.post(d[key], image * 2.0 - 1.0)
        return d


class Binarize(Transform):
    """A probability (or soft) map → a binary mask: ``img > threshold`` (``inclusive``: ``>=``), as bool or ``dtype``
    (numpy in → numpy out, tensor in → tensor out).

    Args:
        threshold: the threshold.
        inclusive: use ``>=`` instead of ``>``.
        dtype: output dtype (e.g. ``"uint8"``); ``None`` keeps bool.

    Examples::

        mask = Binarize(0.5, dtype="uint8")(prob)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.5, inclusive: bool = False, dtype: Any = None) -> None:
        self.threshold = as_float(threshold, "threshold")
        self.inclusive = as_bool(inclusive, "inclusive")
        self.dtype = None if dtype is None else np.dtype(dtype)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        out = img >= self.threshold if self.inclusive else img > self.threshold
        if self.dtype is None:
            return out
        if isinstance(out, torch.Tensor):
            return out.to(torch.from_numpy(np.zeros(0, dtype=self.dtype)).dtype)
        return np.asarray(out).astype(self.dtype)


class Binarized(MapTransform):
    """Dictionary version of :class:`Binarize`.

    Args:
        keys: maps to binarise.
        threshold, inclusive, dtype: see :class:`Binarize`.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = Binarize.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = 0.5,
        inclusive: bool = False,
        dtype: Any = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarizer = Binarize(threshold, inclusive, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.binarizer(d[key])
        return d


SoftMaskPostprocessD = SoftMaskPostprocessDict = SoftMaskPostprocessd
BinarizeD = BinarizeDict = Binarized
