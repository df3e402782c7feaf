# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""GT-free volume inference that knows where the organ is not (fewshot_protocol §6.5, issue 16).

Without the query's ground truth, every slice of a query volume is segmented, so what decides the 3D result is which
slices contain the class at all. The rules here use only the support (image and label), the query image and the
predictor; they serve the GT-free evaluation mode (:func:`~labelless.fewshot.volume.protocol.evaluate_fold`),
``inference.json`` (:class:`~labelless.fewshot.volume.inference.FewShotVolumeInferenceRunner`) and ``labelless
evaluate`` through one function, :func:`~labelless.fewshot.volume.protocol.segment_volume_gt_free`.

1. **Empty slices** (always on, every mode): a slice that is constant, or whose body mask is empty (no voxel above
   the body threshold ``lo + 0.05 (hi - lo)``, ``lo``/``hi`` the volume's 0.5th/99.5th percentiles), is never given to
   the predictor and gets no foreground (:func:`empty_slices`).
2. **Extent mapping** (``extent_reference``): the support's class extent ``[a_s, b_s]`` is taken relative to a
   reference z-range of the support and mapped onto the same reference range of the query: ``"volume"`` (the whole
   volume, the original §6.5 rule) or ``"body"`` (first to last slice whose body mask covers at least
   ``body_fraction`` of the slice, :func:`body_extent`; blank or padded end slices then do not stretch the
   estimate). The estimate gives each query slice its support chunk and, with ``predict_outside_extent: false``, the
   slices ``[a_hat - extent_margin, b_hat + extent_margin]`` outside which nothing is predicted
   (:func:`estimated_extent`).
3. **Presence** (``presence``): a per-slice score of the prediction, ``"area"`` (predicted foreground fraction),
   ``"soft_area"`` (mean foreground probability) or ``"max_prob"`` (largest foreground probability), thresholded
   with a value calibrated **on the support volume**: the support's slices are segmented with the support's own
   chunks (leave-slice-out: the support shots themselves are not used for calibration) and the threshold that best
   separates slices with and without the class is taken (``presence_rule``: ``"dice"`` maximises the support's 3D
   Dice after the removal, ``"youden"`` maximises sensitivity + specificity over slices;
   :func:`calibrate_presence`). Query slices whose score is at or below it get no foreground.
4. **3D clean-up** (``cleanup``): ``"largest"`` keeps the largest 26-connected 3D component, ``"fraction"`` every
   component of at least ``cleanup_fraction`` × the largest (:func:`cleanup_components`).

The defaults of :class:`GTFreeOptions` are the best combination measured on CHAOS fold 0 (docs/results.md,
``benchmarks/gtfree_sweep.py``); every switch is an option of ``evaluate.json``, ``inference.json`` and
``labelless evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import torch

from labelless.errors import ConfigError, DataError
from labelless.options import as_float, as_int
from labelless.utils import as_bool

__all__ = [
    "EXTENT_REFERENCES",
    "FOREGROUND_THRESHOLDS",
    "PRESENCE_SCORES",
    "PRESENCE_RULES",
    "CLEANUPS",
    "GTFreeOptions",
    "ExtentEstimate",
    "empty_slices",
    "body_extent",
    "estimated_extent",
    "calibrate_foreground_threshold",
    "slice_scores",
    "presence_scores",
    "calibrate_presence",
    "cleanup_components",
    "postprocess_volume",
]

EXTENT_REFERENCES = ("volume", "body")
FOREGROUND_THRESHOLDS = ("argmax", "support")
PRESENCE_SCORES = ("none", "area", "soft_area", "max_prob")
PRESENCE_RULES = ("dice", "youden")
CLEANUPS = ("none", "largest", "extent", "fraction")

#: body threshold: ``lo + BODY_REL * (hi - lo)`` with the volume's 0.5th / 99.5th percentiles (the shift-invariant
#: form of the presets' ``body_threshold_rel``, so it works on raw and on z-scored volumes)
BODY_REL = 0.05
#: a slice whose intensity range is at most this fraction of the volume's percentile range is constant
CONSTANT_REL = 1e-6


def _choice(value: Any, name: str, choices: Sequence[str]) -> str:
    v = str(value).strip().lower()
    if v not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    return v


@dataclass(frozen=True)
class GTFreeOptions:
    """The switches of GT-free inference (module docstring); strings from a command line are parsed and checked.

    Args:
        extent_reference: ``"body"`` or ``"volume"``: the z-range the support's class extent is relative to.
        predict_outside_extent: ``False`` predicts nothing outside the estimated extent ± ``extent_margin``.
        extent_margin: margin in slices of the option above.
        foreground_threshold: ``"argmax"`` (FG where the FG logit exceeds the BG logit, the protocol's rule) or
            ``"support"`` (FG where the logit margin exceeds a threshold calibrated on the support volume).
        presence: per-slice presence score, ``"none"`` switches the presence test off.
        presence_rule: how the threshold is calibrated on the support (``"dice"`` or ``"youden"``).
        cleanup: ``"none"``, ``"largest"`` or ``"fraction"`` (3D connected components).
        cleanup_fraction: components kept by ``"fraction"``: at least this fraction of the largest one.
        body_fraction: a slice belongs to the body z-range when its body mask covers at least this fraction.

    Raises:
        ConfigError: an unknown choice or a value out of range, naming the option.
    """

    extent_reference: str = "body"
    predict_outside_extent: bool = True
    extent_margin: int = 1
    foreground_threshold: str = "support"
    presence: str = "none"
    presence_rule: str = "dice"
    cleanup: str = "extent"
    cleanup_fraction: float = 0.1
    body_fraction: float = 0.05

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "extent_reference", _choice(self.extent_reference, "extent_reference", EXTENT_REFERENCES))
        set_(self, "predict_outside_extent", as_bool(self.predict_outside_extent, "predict_outside_extent"))
        set_(self, "extent_margin", as_int(self.extent_margin, "extent_margin", 0, parse=True))
        set_(self, "foreground_threshold", _choice(self.foreground_threshold, "foreground_threshold",
                                                   FOREGROUND_THRESHOLDS))  # fmt: skip
        set_(self, "presence", _choice(self.presence, "presence", PRESENCE_SCORES))
        set_(self, "presence_rule", _choice(self.presence_rule, "presence_rule", PRESENCE_RULES))
        set_(self, "cleanup", _choice(self.cleanup, "cleanup", CLEANUPS))
        set_(self, "cleanup_fraction", as_float(self.cleanup_fraction, "cleanup_fraction", 0, 1, parse=True))
        set_(self, "body_fraction", as_float(self.body_fraction, "body_fraction", 0, 1, hi_open=True, parse=True))

    @classmethod
    def from_options(cls, options: GTFreeOptions | Mapping[str, Any] | None = None, **overrides: Any) -> GTFreeOptions:
        """Options from another instance or a mapping, then keyword overrides; unset values (``None``, ``""``,
        ``"null"``) keep what is there (the default). Unknown names are a :class:`ConfigError`."""

        def given(v: Any) -> bool:
            return v is not None and not (isinstance(v, str) and v.strip().lower() in ("", "null"))

        base: dict[str, Any] = {}
        if isinstance(options, GTFreeOptions):
            base = asdict(options)
        elif options is not None:
            base = {k: v for k, v in dict(options).items() if given(v)}
        base.update({k: v for k, v in overrides.items() if given(v)})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(base) - known)
        if unknown:
            raise ConfigError(f"unknown GT-free option(s) {unknown}; known: {sorted(known)}")
        return cls(**base)

    @classmethod
    def plain(cls) -> GTFreeOptions:
        """The plain §6.5 rule: chunks from the support's extent relative to the whole volume, every slice predicted
        (argmax), no presence test, no clean-up (empty slices still get nothing). The default of the Python
        functions :func:`~labelless.fewshot.volume.protocol.evaluate_fold` / ``evaluate`` when no options are given;
        the bundles, the inference runner and ``labelless evaluate`` use :class:`GTFreeOptions` ``()``."""
        return cls(extent_reference="volume", predict_outside_extent=True, extent_margin=2,
                   foreground_threshold="argmax", presence="none", cleanup="none")  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (reports)."""
        return asdict(self)


class ExtentEstimate(NamedTuple):
    """The query's class extent estimated from the support (:func:`estimated_extent`).

    Attributes:
        a_hat, b_hat: estimated first / last slice (not integers in general).
        chunks: support chunk of every query slice.
        keep: slices inside ``[a_hat - extent_margin, b_hat + extent_margin]``.
        reference: the query's reference z-range used (whole volume or body extent).
    """

    a_hat: float
    b_hat: float
    chunks: list[int]
    keep: list[int]
    reference: tuple[int, int]


# ---------------------------------------------------------------------------------------------------- image rules
def _as_volume(volume: np.ndarray | torch.Tensor) -> np.ndarray:
    a = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if a.ndim != 3:
        raise DataError(None, f"expected a (Z, H, W) volume, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


def _body_threshold(a: np.ndarray) -> tuple[float, float, float]:
    lo, hi = (float(v) for v in np.percentile(a, (0.5, 99.5)))
    if hi <= lo:  # more than 99 % of the voxels share one value: use the full range
        lo, hi = float(a.min()), float(a.max())
    return lo, hi, lo + BODY_REL * (hi - lo)


def _body_fractions(a: np.ndarray) -> np.ndarray:
    lo, hi, thr = _body_threshold(a)
    if hi <= lo:
        return np.zeros(a.shape[0])
    return (a > thr).reshape(a.shape[0], -1).mean(axis=1)


def empty_slices(volume: np.ndarray | torch.Tensor) -> np.ndarray:
    """Slices without image content: constant (intensity range ≤ 1e-6 × the volume's percentile range) or with an
    empty body mask (no voxel above ``lo + 0.05 (hi - lo)``). A constant volume is empty everywhere.

    Args:
        volume: (Z, H, W) volume, raw or normalised (the rule is invariant to shifts and positive scaling).

    Returns:
        (Z,) boolean array, True for the empty slices.
    """
    a = _as_volume(volume)
    if not np.all(np.isfinite(a)):
        raise DataError(None, "volume contains NaN or infinite intensities")
    lo, hi, thr = _body_threshold(a)
    if hi <= lo:
        return np.ones(a.shape[0], dtype=bool)
    flat = a.reshape(a.shape[0], -1)
    constant = (flat.max(axis=1) - flat.min(axis=1)) <= CONSTANT_REL * (hi - lo)
    no_body = ~(flat > thr).any(axis=1)
    return constant | no_body


def body_extent(volume: np.ndarray | torch.Tensor, min_fraction: float = 0.05) -> tuple[int, int] | None:
    """First and last slice whose body mask (voxels above the body threshold) covers at least ``min_fraction`` of
    the slice and that is not empty (:func:`empty_slices`); ``None`` when no slice qualifies."""
    a = _as_volume(volume)
    frac = _body_fractions(a)
    ok = np.nonzero((frac >= float(min_fraction)) & ~empty_slices(a))[0]
    if ok.size == 0:
        return None
    return int(ok[0]), int(ok[-1])


def estimated_extent(
    n_query_slices: int,
    n_support_slices: int,
    support_extent: tuple[int, int],
    options: GTFreeOptions | None = None,
    query_body: tuple[int, int] | None = None,
    support_body: tuple[int, int] | None = None,
    n_chunks: int = 3,
) -> ExtentEstimate:
    """The query's class extent, chunks and kept slices from the support's class extent (§6.5, generalised).

    With reference ranges ``[r0_s, r1_s]`` (support) and ``[r0_q, r1_q]`` (query) — the whole volumes for
    ``extent_reference="volume"``, the body extents for ``"body"`` (whole volume when a body extent is ``None``) —
    ``u = (a_s - r0_s) / (r1_s - r0_s)`` (0.5 for a single-slice reference), ``a_hat = r0_q + u0 (r1_q - r0_q)``
    and likewise ``b_hat``. Slice ``z`` gets chunk ``clip(floor(n (z - a_hat) / max(b_hat - a_hat, 1)), 0, n - 1)``
    (a single-slice query: the middle chunk). With the ``"volume"`` reference this is exactly
    :func:`~labelless.fewshot.volume.protocol.support_relative_chunks`.

    Raises:
        DataError: the support extent lies outside the support volume; volumes without slices.
        ConfigError: ``n_chunks`` < 1.
    """
    opts = options or GTFreeOptions()
    n_q, n_s, n = int(n_query_slices), int(n_support_slices), int(n_chunks)
    if n < 1:
        raise ConfigError(f"n_chunks must be >= 1, got {n_chunks!r}")
    a_s, b_s = int(support_extent[0]), int(support_extent[1])
    if n_q < 1 or n_s < 1:
        raise DataError(None, f"volumes need at least one slice (query {n_q}, support {n_s})")
    if not 0 <= a_s <= b_s < n_s:
        raise DataError(None, f"support class extent ({a_s}, {b_s}) is not inside 0..{n_s - 1}")
    ref_s, ref_q = (0, n_s - 1), (0, n_q - 1)
    if opts.extent_reference == "body":
        ref_s = tuple(int(v) for v in support_body) if support_body is not None else ref_s
        ref_q = tuple(int(v) for v in query_body) if query_body is not None else ref_q
    if ref_s[1] <= ref_s[0]:
        u0 = u1 = 0.5
    else:
        u0, u1 = (a_s - ref_s[0]) / (ref_s[1] - ref_s[0]), (b_s - ref_s[0]) / (ref_s[1] - ref_s[0])
    a_hat = ref_q[0] + u0 * (ref_q[1] - ref_q[0])
    b_hat = ref_q[0] + u1 * (ref_q[1] - ref_q[0])
    if n_q == 1:
        chunks = [n // 2]
    else:
        den = max(b_hat - a_hat, 1.0)
        chunks = [int(min(max(math.floor(n * (z - a_hat) / den), 0), n - 1)) for z in range(n_q)]
    m = opts.extent_margin
    keep = [z for z in range(n_q) if a_hat - m <= z <= b_hat + m]
    return ExtentEstimate(float(a_hat), float(b_hat), chunks, keep, (int(ref_q[0]), int(ref_q[1])))


# ---------------------------------------------------------------------------------------------------- presence
def slice_scores(fg_minus_bg: torch.Tensor | np.ndarray, kind: str, threshold: float = 0.0) -> np.ndarray:
    """Presence score of each slice from its ``[B, H, W]`` FG-minus-BG logits (:data:`PRESENCE_SCORES`).

    ``"area"``: fraction of pixels predicted FG (logit difference > ``threshold``; 0 is the argmax rule);
    ``"soft_area"``: mean FG probability (sigmoid of the difference minus ``threshold``; softmax of the two logits
    for 0); ``"max_prob"``: largest such probability. ``"none"`` returns zeros.
    """
    kind = _choice(kind, "presence", PRESENCE_SCORES)
    d = torch.as_tensor(fg_minus_bg).float()
    if d.dim() != 3:
        raise DataError(None, f"expected [B, H, W] logit differences, got shape {tuple(d.shape)}")
    flat = d.reshape(d.shape[0], -1) - float(threshold)
    if kind == "none":
        out = torch.zeros(d.shape[0])
    elif kind == "area":
        out = (flat > 0).float().mean(dim=1)
    elif kind == "soft_area":
        out = torch.sigmoid(flat).mean(dim=1)
    else:
        out = torch.sigmoid(flat).amax(dim=1)
    return out.cpu().numpy().astype(np.float64)


def presence_scores(fg_minus_bg: np.ndarray | torch.Tensor, kind: str, threshold: float = 0.0) -> np.ndarray:
    """:func:`slice_scores` of a whole (Z, H, W) volume of FG-minus-BG logits."""
    return slice_scores(fg_minus_bg, kind, threshold)


#: candidate FG logit-margin thresholds of :func:`calibrate_foreground_threshold` (FG probability 0.018 .. 0.982)
FOREGROUND_CANDIDATES = tuple(float(v) for v in np.arange(-4.0, 4.01, 0.5))


def calibrate_foreground_threshold(
    fg_minus_bg: np.ndarray | torch.Tensor,
    truth: np.ndarray,
    exclude: Iterable[int] = (),
    candidates: Sequence[float] = FOREGROUND_CANDIDATES,
    tolerance: float = 0.01,
) -> float:
    """FG logit-margin threshold calibrated on the support volume.

    Every candidate ``t`` gives the 3D Dice of ``fg_minus_bg > t`` against the support label over the support's
    slices, the support shots themselves left out (leave-slice-out). The threshold is the candidate closest to 0
    (the argmax rule) among those within ``tolerance`` (1 Dice point) of the best: the support is segmented with
    slices of its own scan, so its optimum is sharper than a query's, and the rule departs from argmax only as far
    as the support clearly asks (measured on the validation scans, docs/results.md).

    Args:
        fg_minus_bg: (Z, H, W) FG-minus-BG logits of the support slices, each segmented with its chunk's support
            (non-finite values count as background).
        truth: (Z, H, W) support label of the class.
        exclude: slices left out (the support shots).
        candidates: thresholds tried (default -4 .. 4 in steps of 0.5).
        tolerance: Dice (0..1) below the best that still counts as as good.

    Returns:
        The threshold (0, the argmax rule, when no slice with the class is left).
    """
    d = fg_minus_bg.detach().cpu().numpy() if isinstance(fg_minus_bg, torch.Tensor) else np.asarray(fg_minus_bg)
    t = np.asarray(truth).astype(bool)
    if d.shape != t.shape or d.ndim != 3:
        raise DataError(None, f"support logits {d.shape} and label {t.shape} must be one (Z, H, W) grid")
    used = np.ones(d.shape[0], dtype=bool)
    for z in exclude:
        if 0 <= int(z) < used.size:
            used[int(z)] = False
    if not t[used].any():  # no slice with the class is left: nothing to calibrate on
        return 0.0
    d, t = np.where(np.isfinite(d[used]), d[used], -np.inf), t[used]
    n_true = int(t.sum())
    cands = sorted({float(v) for v in candidates} | {0.0}, key=lambda v: (abs(v), v))
    dices = []
    for c in cands:
        p = d > c
        den = int(p.sum()) + n_true
        dices.append(1.0 if den == 0 else 2.0 * int(np.logical_and(p, t).sum()) / den)
    best = max(dices)
    return next(c for c, v in zip(cands, dices) if v >= best - float(tolerance) - 1e-12)


def calibrate_presence(
    scores: Sequence[float] | np.ndarray,
    present: Sequence[bool] | np.ndarray,
    exclude: Iterable[int] = (),
    rule: str = "dice",
    prediction: np.ndarray | None = None,
    truth: np.ndarray | None = None,
) -> float:
    """Presence threshold calibrated on the support volume: slices with ``score <= threshold`` count as absent.

    Candidates are 0 and the midpoints between consecutive distinct scores of the used slices (all but
    ``exclude``, the support shots: leave-slice-out). ``"youden"`` maximises TPR − FPR over slices (``present``);
    ``"dice"`` maximises the 3D Dice of ``prediction`` against ``truth`` on the used slices after the removal. Ties
    go to the lowest threshold (keep more). Without slices of both kinds the threshold is 0 (no effect beyond
    "nothing predicted").

    Args:
        scores: (Z,) presence scores of the support slices (segmented with the support's own chunks).
        present: (Z,) whether the support label contains the class on each slice.
        exclude: slices not used (the support shots).
        rule: :data:`PRESENCE_RULES`.
        prediction, truth: (Z, H, W) binary support prediction and label, needed by ``"dice"``.

    Returns:
        The threshold (>= 0).
    """
    rule = _choice(rule, "presence_rule", PRESENCE_RULES)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(present, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise DataError(None, f"scores {s.shape} and present {y.shape} must be two (Z,) arrays")
    used = np.ones(s.shape[0], dtype=bool)
    for z in exclude:
        if 0 <= int(z) < used.size:
            used[int(z)] = False
    if not (y & used).any() or not (~y & used).any():
        return 0.0
    vals = np.unique(s[used])
    cands = np.unique(np.concatenate([[0.0], (vals[:-1] + vals[1:]) / 2]))
    cands = cands[cands >= 0]
    if rule == "youden":
        pos, neg = s[used & y], s[used & ~y]
        gain = np.array([(pos > t).mean() - (neg > t).mean() for t in cands])
    else:
        if prediction is None or truth is None:
            raise ConfigError("presence_rule 'dice' needs the support prediction and label")
        p = np.asarray(prediction).astype(bool)
        t_ = np.asarray(truth).astype(bool)
        if p.shape != t_.shape or p.shape[0] != s.shape[0]:
            raise DataError(None, f"support prediction {p.shape} and label {t_.shape} must be (Z, H, W) of {s.size}")
        tp = np.logical_and(p, t_).reshape(p.shape[0], -1).sum(axis=1)[used]
        fp = np.logical_and(p, ~t_).reshape(p.shape[0], -1).sum(axis=1)[used]
        area = t_.reshape(t_.shape[0], -1).sum(axis=1)[used]
        su = s[used]
        gain = []
        for t in cands:
            keep = su > t
            tp_k, fp_k = tp[keep].sum(), fp[keep].sum()
            den = 2 * tp_k + fp_k + (area.sum() - tp_k)
            gain.append(2 * tp_k / den if den > 0 else 1.0)
        gain = np.asarray(gain)
    return float(cands[int(np.argmax(gain >= gain.max() - 1e-12))])


# ---------------------------------------------------------------------------------------------------- clean-up
def cleanup_components(
    mask: np.ndarray, mode: str = "largest", fraction: float = 0.1, keep_slices: Iterable[int] | None = None
) -> np.ndarray:
    """3D connected-component clean-up (26-connectivity), components kept whole: ``"largest"`` keeps the largest
    component, ``"extent"`` the component with the most voxels on ``keep_slices`` (the class extent estimated from
    the support; the largest one when none reaches those slices or they are not given), ``"fraction"`` every
    component of at least ``fraction`` × the largest, ``"none"`` changes nothing."""
    from scipy import ndimage

    mode = _choice(mode, "cleanup", CLEANUPS)
    m = np.asarray(mask).astype(bool)
    if mode == "none" or not m.any():
        return m.astype(np.uint8)
    structure = np.ones((3,) * m.ndim, dtype=bool)
    labels, n = ndimage.label(m, structure=structure)
    if n <= 1:
        return m.astype(np.uint8)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    if mode == "extent" and keep_slices is not None:
        inside = np.zeros(m.shape[0], dtype=bool)
        inside[[int(z) for z in keep_slices if 0 <= int(z) < m.shape[0]]] = True
        within = np.bincount(labels[inside].ravel(), minlength=n + 1)
        within[0] = 0
        if within.max() > 0:
            sizes = within
    if mode in ("largest", "extent"):
        keep = np.zeros_like(sizes, dtype=bool)
        keep[int(np.argmax(sizes))] = True
    else:
        keep = sizes >= float(fraction) * sizes.max()
        keep[0] = False
    return keep[labels].astype(np.uint8)


def postprocess_volume(
    prediction: np.ndarray,
    options: GTFreeOptions | None = None,
    scores: np.ndarray | None = None,
    empty: np.ndarray | None = None,
    keep_slices: Iterable[int] | None = None,
    presence_threshold: float | None = None,
    foreground_threshold: float = 0.0,
) -> np.ndarray:
    """Apply the GT-free rules to a binary (Z, H, W) prediction, in this order: empty slices, presence
    (``scores > presence_threshold``), 3D clean-up, the estimated extent (only with ``predict_outside_extent=False``:
    last, so that it only ever removes foreground).

    Args:
        prediction: binary (Z, H, W) prediction (or FG-minus-BG logits: ``> foreground_threshold`` is taken).
        options: the switches (default :class:`GTFreeOptions`).
        scores: (Z,) presence scores (needed when ``options.presence`` is not ``"none"`` and a threshold is given).
        empty: (Z,) empty-slice flags (:func:`empty_slices`), or ``None``.
        keep_slices: slices inside the estimated extent (:attr:`ExtentEstimate.keep`).
        presence_threshold: the calibrated threshold (``None``: no presence test).
        foreground_threshold: FG threshold of float (logit) input.

    Returns:
        (Z, H, W) uint8 prediction.
    """
    opts = options or GTFreeOptions()
    p = np.asarray(prediction)
    out = (p > float(foreground_threshold)) if p.dtype.kind == "f" else p.astype(bool)
    out = out.copy()
    z_n = out.shape[0]
    if empty is not None:
        out[np.asarray(empty, dtype=bool)] = False
    if opts.presence != "none" and presence_threshold is not None:
        if scores is None or len(scores) != z_n:
            raise DataError(None, f"presence needs one score per slice ({z_n})")
        out[np.asarray(scores) <= float(presence_threshold)] = False
    keep = None if keep_slices is None else [int(z) for z in keep_slices]
    out = cleanup_components(out, opts.cleanup, opts.cleanup_fraction, keep).astype(bool)
    if not opts.predict_outside_extent and keep is not None:
        outside = np.ones(z_n, dtype=bool)
        outside[keep] = False
        out[outside] = False
    return out.astype(np.uint8)
