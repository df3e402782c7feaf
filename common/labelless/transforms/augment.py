# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Training augmentation of the self-supervised few-shot episodes (fewshot_protocol.md §7).

``RandFewShotAugment`` / ``RandFewShotAugmentd`` reproduce the SSL-ALPNet reference augmentation ("parity" mode):

1. no flip (the reference configures its flip with all flags off);
2. affine ``M = Z · Sh · T · R`` in homogeneous pixel coordinates ``p = (x = column, y = row, 1)``:

   - ``R``: rotation by θ_r ~ U(−5°, 5°) about the centre ``(W/2, H/2)``, OpenCV convention
     (``cv2.getRotationMatrix2D``: ``[[cos, sin, ·], [−sin, cos, ·]]``, a positive angle turns the image
     counter-clockwise as displayed);
   - ``T``: translation ``t_x, t_y ~ U(−5, 5)`` pixels;
   - ``Sh = [[1, −sin θ_s, 0], [0, cos θ_s, 0], [0, 0, 1]]``, θ_s ~ U(−5°, 5°), about the **origin** (top-left
     pixel), so lower rows move further (up to ~22 px at row 255);
   - ``Z``: isotropic zoom ``s ~ U(0.9, 1.2)`` about the centre;

   the output pixel at ``M·p`` takes the input value at ``p``: each output pixel ``q`` samples the input at ``M⁻¹·q``
   with bilinear interpolation and a constant 0 border (``scipy.ndimage.map_coordinates(order=1,
   mode="grid-constant")``, which interpolates towards the border value like ``cv2.warpAffine(BORDER_CONSTANT)``);
3. elastic deformation, α = 10, σ = 5: ``dx, dy = α · G_σ(U(−1, 1)^{H×W})`` where ``G_σ`` is a Gaussian filter
   truncated at 2σ (21×21 taps for σ = 5; ``scipy.ndimage.gaussian_filter(truncate=2.0, mode="mirror")``, the
   ``BORDER_REFLECT_101`` default of the reference's ``cv2.GaussianBlur``); ``output(y, x) = input(y + dy, x + dx)``,
   linear interpolation, ``reflect`` boundary (``map_coordinates(order=1, mode="reflect")`` as in the reference);
4. the geometric steps act on the image channels and the 2-channel one-hot label stacked together; the label is
   recovered by rounding each one-hot channel to the nearest integer and taking the argmax over the two channels
   (ties, e.g. both channels 0 in the zero border, go to background);
5. gamma on the image only: γ ~ U(0.5, 1.5), ``m = min(x)``, ``r = max(x) − m``,
   ``x' = r · ((x − m + 1e-5) / r)^γ + m`` (a constant image, r = 0, is returned unchanged). This is the spec's
   formula; the reference code uses ``r = max(x) − m + 1e-5``, a relative difference below 1e-5.

Random draws come only from the transform's ``self.R`` (MONAI ``RandomizableTransform``): the ``prob`` draw, then in
the reference's order θ_r, t_x, t_y, θ_s, s, the uniform noise of dx (H×W), of dy (H×W), γ (the reference draws the
elastic noise from a fresh unseeded generator). For non-square slices the reference rotates/zooms about
``(H/2, W//2)`` taken as (x, y); we use the spec's ``(W/2, H/2)`` (identical for 256×256). Degenerate ranges still
consume their draws, so changing a range never shifts the other parameters.

Compared with the reference (OpenCV) the geometry is the same and the values agree to interpolation round-off:
replaying the reference's OpenCV pipeline (OpenCV 5) with the same draws on a smooth z-scored 256×256 slice gave a
maximum image difference of 1.2e-4 (values in [−3.2, 4.6]) and identical labels over 20 seeds. The matrix is kept in
float64 (the reference casts it to float32).

``monai_fewshot_augment`` builds the ``augmentation: "monai"`` variant from stock MONAI transforms. It has the same
ranges but is **not bit-compatible**: see its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandomizableTransform,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy
from scipy import ndimage

from labelless.errors import ConfigError, DataError

__all__ = [
    "RandFewShotAugment",
    "RandFewShotAugmentd",
    "RandFewShotAugmentD",
    "RandFewShotAugmentDict",
    "fewshot_affine_matrix",
    "gamma_transform",
    "monai_fewshot_augment",
    "strong_fewshot_augment",
]

RangeArg = float | Sequence[float]


def _symmetric_range(value: RangeArg, name: str) -> tuple[float, float]:
    """``a`` -> ``(-a, a)``; ``(lo, hi)`` unchanged."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = abs(float(value))
        return -v, v
    vals = tuple(float(v) for v in value)
    if len(vals) != 2 or vals[0] > vals[1]:
        raise ConfigError(f"{name} must be a number or a (low, high) pair with low <= high, got {value!r}")
    return vals  # type: ignore[return-value]


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    vals = tuple(float(v) for v in value)
    if len(vals) != 2 or vals[0] > vals[1]:
        raise ConfigError(f"{name} must be a (low, high) pair with low <= high, got {value!r}")
    return vals  # type: ignore[return-value]


def fewshot_affine_matrix(
    spatial_size: Sequence[int], rotation: float, translation: Sequence[float], shear: float, scale: float
) -> np.ndarray:
    """The 3×3 matrix ``M = Z · Sh · T · R`` of fewshot_protocol §7 acting on ``(x = column, y = row, 1)``.

    Args:
        spatial_size: (H, W) of the slice.
        rotation: θ_r in degrees, about the centre (W/2, H/2), OpenCV sign convention.
        translation: (t_x, t_y) in pixels.
        shear: θ_s in degrees; ``Sh = [[1, −sin θ_s, 0], [0, cos θ_s, 0], [0, 0, 1]]`` about the origin.
        scale: isotropic zoom about the centre.

    Returns:
        float64 (3, 3) matrix mapping an input pixel p to its output position M·p.
    """
    h, w = (float(s) for s in spatial_size)
    cx, cy = w / 2.0, h / 2.0
    a = math.radians(rotation)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, s, (1 - c) * cx - s * cy], [-s, c, s * cx + (1 - c) * cy], [0.0, 0.0, 1.0]])
    tra = np.array([[1.0, 0.0, translation[0]], [0.0, 1.0, translation[1]], [0.0, 0.0, 1.0]])
    b = math.radians(shear)
    she = np.array([[1.0, -math.sin(b), 0.0], [0.0, math.cos(b), 0.0], [0.0, 0.0, 1.0]])
    zoo = np.array([[scale, 0.0, (1 - scale) * cx], [0.0, scale, (1 - scale) * cy], [0.0, 0.0, 1.0]])
    return zoo @ she @ tra @ rot


def gamma_transform(image: np.ndarray, gamma: float) -> np.ndarray:
    """``x' = r · ((x − m + 1e-5) / r)^γ + m`` with ``m = min(x)``, ``r = max(x) − m`` (over all channels).

    A constant image (r = 0) is returned unchanged (the formula divides by zero there).
    """
    x = np.asarray(image)
    m = float(x.min())
    r = float(x.max()) - m
    if r <= 0:
        return x.copy()
    return (r * np.power((x - m + 1e-5) / r, gamma) + m).astype(x.dtype, copy=False)


class RandFewShotAugment(RandomizableTransform):
    """The SSL-ALPNet training augmentation (affine, elastic, gamma) on one slice and its binary label.

    The image is ``(C, H, W)`` (or ``(H, W)``), the label ``(H, W)`` (or ``(1, H, W)``) with values in {0, 1}; both
    are returned with their input shapes and types (numpy or torch), the label with values in {0, 1}. See the module
    docstring for the exact definition of every step. All ranges are constructor arguments whose defaults are the
    published values; a number ``a`` means ``U(−a, a)``, a pair ``(lo, hi)`` means ``U(lo, hi)``.

    Args:
        prob: probability of applying the augmentation (otherwise the inputs are returned unchanged).
        rotate_range: rotation angle range in degrees.
        translate_range: translation range in pixels, one number for both axes or ``(range_x, range_y)``, each a
            number (symmetric) or a pair.
        shear_range: shear angle range in degrees.
        scale_range: ``(low, high)`` of the isotropic zoom.
        elastic_alpha: elastic displacement scale α (0 disables the deformation, the draws are still made).
        elastic_sigma: Gaussian smoothing σ of the displacement noise, in pixels.
        elastic_truncate: kernel half-width in units of σ (2.0: 21×21 for σ = 5, as the reference).
        gamma_range: ``(low, high)`` of γ.

    Raises:
        DataError: non-finite image, wrong shapes, a label that is not binary.
        ConfigError: invalid ranges.

    Examples::

        aug = RandFewShotAugment()
        aug.set_random_state(1234)
        img_aug, lab_aug = aug(image[None], pseudo_label)   # (1, 256, 256) float32, (256, 256) {0, 1}
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 1.0,
        rotate_range: RangeArg = 5.0,
        translate_range: RangeArg | Sequence[RangeArg] = (5.0, 5.0),
        shear_range: RangeArg = 5.0,
        scale_range: Sequence[float] = (0.9, 1.2),
        elastic_alpha: float = 10.0,
        elastic_sigma: float = 5.0,
        elastic_truncate: float = 2.0,
        gamma_range: Sequence[float] = (0.5, 1.5),
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.rotate_range = _symmetric_range(rotate_range, "rotate_range")
        if isinstance(translate_range, (int, float, np.integer, np.floating)):
            translate_range = (translate_range, translate_range)
        tr = tuple(translate_range)
        if len(tr) != 2:
            raise ConfigError(f"translate_range must be a number or (range_x, range_y), got {translate_range!r}")
        self.translate_range = (_symmetric_range(tr[0], "translate_range"), _symmetric_range(tr[1], "translate_range"))
        self.shear_range = _symmetric_range(shear_range, "shear_range")
        self.scale_range = _pair(scale_range, "scale_range")
        if self.scale_range[0] <= 0:
            raise ConfigError(f"scale_range must be positive, got {scale_range!r}")
        self.gamma_range = _pair(gamma_range, "gamma_range")
        if self.gamma_range[0] <= 0:
            raise ConfigError(f"gamma_range must be positive, got {gamma_range!r}")
        if elastic_sigma <= 0 or elastic_truncate <= 0:
            raise ConfigError("elastic_sigma and elastic_truncate must be positive")
        self.elastic_alpha = float(elastic_alpha)
        self.elastic_sigma = float(elastic_sigma)
        self.elastic_truncate = float(elastic_truncate)
        self.rotation = 0.0
        self.translation = (0.0, 0.0)
        self.shear = 0.0
        self.scale = 1.0
        self.gamma = 1.0
        self.dx: np.ndarray | None = None
        self.dy: np.ndarray | None = None

    def randomize(self, data: Sequence[int] | None = None) -> None:
        """Draw all parameters for a slice of spatial size ``data = (H, W)``."""
        super().randomize(None)
        if not self._do_transform:
            return
        if data is None or len(data) != 2:
            raise ValueError("RandFewShotAugment.randomize needs the spatial size (H, W)")
        h, w = int(data[0]), int(data[1])
        self.rotation = float(self.R.uniform(*self.rotate_range))
        tx = float(self.R.uniform(*self.translate_range[0]))
        ty = float(self.R.uniform(*self.translate_range[1]))
        self.translation = (tx, ty)
        self.shear = float(self.R.uniform(*self.shear_range))
        self.scale = float(self.R.uniform(*self.scale_range))
        fields = []
        for _ in range(2):  # dx (columns) first, then dy (rows), as in the reference
            noise = self.R.uniform(-1.0, 1.0, (h, w))
            smooth = ndimage.gaussian_filter(noise, self.elastic_sigma, mode="mirror", truncate=self.elastic_truncate)
            fields.append(smooth * self.elastic_alpha)
        self.dx, self.dy = fields
        self.gamma = float(self.R.uniform(*self.gamma_range))

    def affine_matrix(self, spatial_size: Sequence[int]) -> np.ndarray:
        """The current draw's ``M`` (see :func:`fewshot_affine_matrix`)."""
        return fewshot_affine_matrix(spatial_size, self.rotation, self.translation, self.shear, self.scale)

    def _geometric(self, stack: np.ndarray) -> np.ndarray:
        """Affine then elastic on a (N, H, W) float stack (all channels with the same coordinates)."""
        _, h, w = stack.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        minv = np.linalg.inv(self.affine_matrix((h, w)))
        src_x = minv[0, 0] * xx + minv[0, 1] * yy + minv[0, 2]
        src_y = minv[1, 0] * xx + minv[1, 1] * yy + minv[1, 2]
        coords = np.stack([src_y, src_x])
        warped = np.stack(
            [ndimage.map_coordinates(ch, coords, order=1, mode="grid-constant", cval=0.0) for ch in stack]
        )
        coords = np.stack([yy + self.dy, xx + self.dx])
        return np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="reflect") for ch in warped])

    def __call__(
        self, img: NdarrayOrTensor, label: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> NdarrayOrTensor | tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Augment ``img`` (and ``label`` with the same geometry).

        Args:
            img: (C, H, W) or (H, W) image (z-scored slice).
            label: optional (H, W) or (1, H, W) binary label.
            randomize: draw new parameters (``False`` reuses the last draw, e.g. from the dictionary version).

        Returns:
            The augmented image, or ``(image, label)`` when a label is given; types and shapes as the inputs.
        """
        img_np = np.asarray(convert_to_numpy(img), dtype=np.float32)
        if img_np.ndim == 2:
            img_np = img_np[None]
        if img_np.ndim != 3 or img_np.shape[0] < 1:
            raise DataError("image", f"expected a (C, H, W) or (H, W) image, got shape {tuple(img_np.shape)}")
        h, w = img_np.shape[-2:]
        lab_np = None
        if label is not None:
            lab_np = np.asarray(convert_to_numpy(label))
            if lab_np.ndim == 3 and lab_np.shape[0] == 1:
                lab_np = lab_np[0]
            if lab_np.shape != (h, w):
                raise DataError(
                    "label", f"label shape {tuple(np.shape(label))} does not match the image's spatial size {(h, w)}"
                )
            if not np.all((lab_np == 0) | (lab_np == 1)):
                raise DataError("label", "label must be binary (values 0 and 1 only)")
        if randomize:
            self.randomize((h, w))
        if not self._do_transform:
            return img if label is None else (img, label)
        if self.dx is None or self.dx.shape != (h, w):
            raise ValueError(f"no random draw for spatial size {(h, w)}: call randomize((H, W)) first")
        if not np.all(np.isfinite(img_np)):
            raise DataError("image", "image contains NaN or infinite values")

        n_img = img_np.shape[0]
        if lab_np is not None:
            fg = (lab_np == 1).astype(np.float32)
            stack = np.concatenate([img_np, (1.0 - fg)[None], fg[None]])
        else:
            stack = img_np
        out = self._geometric(stack)
        img_out = gamma_transform(out[:n_img], self.gamma).astype(np.float32)
        img_out = img_out.reshape(np.shape(img)) if np.ndim(img) == 2 else img_out
        img_res, *_ = convert_to_dst_type(img_out, img)
        if lab_np is None:
            return img_res
        onehot = np.rint(out[n_img:])
        lab_out = np.argmax(onehot, axis=0).astype(np.uint8)  # ties (incl. 0/0 in the border) -> background
        lab_out = lab_out.reshape(np.shape(label))
        lab_res, *_ = convert_to_dst_type(lab_out, label, dtype=getattr(label, "dtype", None))
        return img_res, lab_res


class RandFewShotAugmentd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandFewShotAugment`.

    Args:
        keys: ``(image_key, label_key)``, or only ``(image_key,)`` to augment an image alone. The label entry is a
            binary (H, W) or (1, H, W) mask transformed with the image's geometry.
        prob: probability of applying the augmentation.
        rotate_range, translate_range, shear_range, scale_range, elastic_alpha, elastic_sigma, elastic_truncate,
            gamma_range: as in :class:`RandFewShotAugment`.
        allow_missing_keys: a missing image key returns the data unchanged; a missing label key augments the image
            alone.

    Examples::

        aug = RandFewShotAugmentd(keys=("image", "label"))
        aug.set_random_state(1234)
        out = aug({"image": slice_1hw, "label": mask_hw})
    """

    backend = RandFewShotAugment.backend

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        prob: float = 1.0,
        rotate_range: RangeArg = 5.0,
        translate_range: RangeArg | Sequence[RangeArg] = (5.0, 5.0),
        shear_range: RangeArg = 5.0,
        scale_range: Sequence[float] = (0.9, 1.2),
        elastic_alpha: float = 10.0,
        elastic_sigma: float = 5.0,
        elastic_truncate: float = 2.0,
        gamma_range: Sequence[float] = (0.5, 1.5),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) not in (1, 2):
            raise ConfigError(f"keys must be (image_key, label_key) or (image_key,), got {keys!r}")
        self.augment = RandFewShotAugment(
            prob=1.0,
            rotate_range=rotate_range,
            translate_range=translate_range,
            shear_range=shear_range,
            scale_range=scale_range,
            elastic_alpha=elastic_alpha,
            elastic_sigma=elastic_sigma,
            elastic_truncate=elastic_truncate,
            gamma_range=gamma_range,
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandFewShotAugmentd:
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def randomize(self, data: Any | None = None) -> None:
        super().randomize(None)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        image_key = self.keys[0]
        label_key = self.keys[1] if len(self.keys) > 1 else None
        if image_key not in d:
            if self.allow_missing_keys:
                return d
            raise DataError("data dictionary", f"key {image_key!r} missing (keys present: {list(d)})")
        if label_key is not None and label_key not in d:
            if not self.allow_missing_keys:
                raise DataError("data dictionary", f"key {label_key!r} missing (keys present: {list(d)})")
            label_key = None
        if not self._do_transform:
            return d
        self.augment.randomize(tuple(np.shape(d[image_key])[-2:]))
        if label_key is None:
            d[image_key] = self.augment(d[image_key], randomize=False)
        else:
            d[image_key], d[label_key] = self.augment(d[image_key], d[label_key], randomize=False)
        return d


RandFewShotAugmentD = RandFewShotAugmentDict = RandFewShotAugmentd


def monai_fewshot_augment(
    keys: KeysCollection = ("image", "label"),
    prob: float = 1.0,
    rotate_range: float = 5.0,
    translate_range: float = 5.0,
    shear_range: float = 5.0,
    scale_range: Sequence[float] = (0.9, 1.2),
    elastic_spacing: Sequence[int] = (10, 10),
    elastic_magnitude: Sequence[float] = (0.25, 0.4),
    gamma_range: Sequence[float] = (0.5, 1.5),
) -> Compose:
    """The ``augmentation: "monai"`` variant: ``RandAffined`` + ``Rand2DElasticd`` + ``RandAdjustContrastd``.

    Same ranges as the parity transform, but **not bit-compatible** with it (nor with the reference):

    - ``RandAffined`` shears about the image centre, not the origin, with shear factor ``U(−sin θ, sin θ)``;
      its zoom is drawn per axis (anisotropic) from the inverse range (MONAI maps output to input coordinates,
      so ``1/1.2 … 1/0.9`` gives the same magnifications); rotation and translation draw in a different order.
    - ``Rand2DElasticd`` uses a B-spline control-point grid (``elastic_spacing`` pixels, Gaussian offsets scaled by
      ``elastic_magnitude``) instead of a Gaussian-smoothed uniform field; the defaults give a displacement
      standard deviation of about 0.36 px, as α = 10, σ = 5 does (both measured on 256×256 slices).
    - labels are resampled with nearest-neighbour interpolation (no one-hot rounding); they must be channel-first
      ``(1, H, W)``.
    - ``RandAdjustContrastd`` uses MONAI's gamma formula (``((x − m) / (r + 1e-7))^γ · r + m``).

    Args:
        keys: image key first, then label keys (nearest-neighbour resampling, not contrast-adjusted).
        prob: probability of each of the three steps.
        rotate_range, shear_range: degrees (symmetric). translate_range: pixels (symmetric, both axes).
        scale_range: ``(low, high)`` magnification.
        elastic_spacing, elastic_magnitude: ``Rand2DElasticd`` control-point spacing and magnitude range.
        gamma_range: γ range.

    Returns:
        a MONAI ``Compose``; seed it with ``set_random_state``.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ConfigError("monai_fewshot_augment needs at least the image key")
    lo, hi = _pair(scale_range, "scale_range")
    inv = (1.0 / hi - 1.0, 1.0 / lo - 1.0)
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    return Compose(
        [
            RandAffined(
                keys=keys,
                prob=prob,
                rotate_range=(math.radians(rotate_range),),
                shear_range=(math.sin(math.radians(shear_range)), 0.0),
                translate_range=(translate_range, translate_range),
                scale_range=(inv, inv),
                mode=modes,
                padding_mode="zeros",
            ),
            Rand2DElasticd(
                keys=keys,
                spacing=tuple(elastic_spacing),
                magnitude_range=tuple(elastic_magnitude),
                prob=prob,
                mode=modes,
                padding_mode="reflection",
            ),
            RandAdjustContrastd(keys=keys[0], prob=prob, gamma=tuple(gamma_range)),
        ]
    )


def strong_fewshot_augment(
    keys: KeysCollection = ("image", "label"),
    rotate_range: float = 30.0,
    translate_fraction: float = 0.15,
    image_size: int = 256,
    shear_range: float = 10.0,
    scale_range: Sequence[float] = (0.75, 1.33),
    flip_prob: float = 0.5,
) -> Compose:
    """The ``augmentation: "strong"`` variant: the parity transform with wide geometric ranges, then a left-right flip.

    Support and query copies of a self-supervised episode are augmented independently. With the published ranges
    (±5°, ±5 px) both copies keep the superpixel at nearly the same place, so a network can solve the episode from
    *where* the region is; wide rotations, translations of ``translate_fraction`` of the side and an independent
    flip move it, so matching must rest on what the region looks like (label-free adaptation to a domain where the
    class's position varies from scan to scan, e.g. tumours).

    Args:
        keys: ``(image_key, label_key)``.
        rotate_range, shear_range: degrees (symmetric).
        translate_fraction: translation range as a fraction of ``image_size`` (symmetric, both axes).
        image_size: side of the episode slices in pixels.
        scale_range: ``(low, high)`` isotropic zoom.
        flip_prob: probability of a left-right flip of each copy.

    Returns:
        a MONAI ``Compose``; seed it with ``set_random_state``.
    """
    if not 0.0 <= float(flip_prob) <= 1.0:
        raise ConfigError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
    if not 0.0 <= float(translate_fraction) < 1.0:
        raise ConfigError(f"translate_fraction must be in [0, 1), got {translate_fraction!r}")
    shift = float(translate_fraction) * int(image_size)
    return Compose(
        [
            RandFewShotAugmentd(
                keys=keys,
                rotate_range=rotate_range,
                translate_range=(shift, shift),
                shear_range=shear_range,
                scale_range=scale_range,
            ),
            RandFlipd(keys=keys, prob=float(flip_prob), spatial_axis=-1),
        ]
    )
