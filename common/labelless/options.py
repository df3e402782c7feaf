# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Validation of options before any work starts: types, ranges, lists vs scalars.

A bundle run receives its options from a command line (``python -m monai.bundle run ... --n_steps abc``) or from a
config file; many of them go straight into ``math``, ``torch.optim`` or ``DataLoader`` expressions of the config,
where a wrong value becomes a raw traceback long after the run started. Every bundle config therefore evaluates
:func:`check_options` first (``"$@checked_options"`` at the top of ``initialize``), which checks each option by its
name against :data:`OPTION_RULES` and fails with one line naming the option::

    n_steps must be an integer >= 1, got 'abc'

The converters :func:`as_int`, :func:`as_float` and :func:`as_int_list` serve the same purpose in Python code (the
``labelless`` command line passes ``parse=True``: its options may arrive as strings such as ``"[0,1]"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelless.errors import ConfigError
from labelless.utils import as_bool, is_unset

__all__ = [
    "OptionRule",
    "OPTION_RULES",
    "as_int",
    "as_float",
    "as_int_list",
    "check_folder",
    "check_options",
]


def _range_text(
    minimum: float | None, maximum: float | None, lo_open: bool = False, hi_open: bool = False, integers: bool = False
) -> str:
    if minimum is not None and maximum is not None:
        if integers:
            return f" in {minimum:g}..{maximum:g}"
        return f" in {'(' if lo_open else '['}{minimum:g}, {maximum:g}{')' if hi_open else ']'}"
    if minimum is not None:
        return f" {'>' if lo_open else '>='} {minimum:g}"
    if maximum is not None:
        return f" {'<' if hi_open else '<='} {maximum:g}"
    return ""


def _in_range(v: float, minimum: float | None, maximum: float | None, lo_open: bool, hi_open: bool) -> bool:
    if minimum is not None and (v < minimum or (lo_open and v == minimum)):
        return False
    return maximum is None or not (v > maximum or (hi_open and v == maximum))


def as_int(
    value: Any, name: str, minimum: int | None = None, maximum: int | None = None, *, parse: bool = False
) -> int:
    """``value`` as an ``int`` after checking its type and range.

    Args:
        value: an integer (``numpy`` integers too; ``bool`` is refused).
        name: the option name for the message (e.g. ``"n_steps"`` or ``"--n_shots"``).
        minimum, maximum: inclusive bounds (``None``: unbounded).
        parse: also accept the text of an integer (``"3"``) and integral floats (``3.0``), as a command line gives.

    Raises:
        ConfigError: ``"<name> must be an integer >= 1, got 'abc'"``.
    """
    v = _integer(value, minimum, maximum, parse)
    if v is None:
        raise ConfigError(f"{name} must be an integer{_range_text(minimum, maximum, integers=True)}, got {value!r}")
    return v


def _integer(value: Any, minimum: int | None, maximum: int | None, parse: bool) -> int | None:
    """``value`` as an int when it is one (see :func:`as_int`) within the bounds, else ``None``."""
    v = value
    if parse and isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            return None
    if parse and isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        v = int(v)
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
        return None
    return int(v) if _in_range(int(v), minimum, maximum, False, False) else None


def as_float(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    parse: bool = False,
) -> float:
    """``value`` as a finite ``float`` after checking its type and range.

    Args:
        value: an int or a float (``bool`` is refused).
        name: the option name for the message.
        minimum, maximum: bounds (``None``: unbounded), inclusive unless ``lo_open`` / ``hi_open``.
        parse: also accept the text of a number (``"1e-3"``).

    Raises:
        ConfigError: ``"<name> must be a number > 0, got 'x'"``.
    """
    v = value
    if parse and isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            pass
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if not ok or not math.isfinite(float(v)) or not _in_range(float(v), minimum, maximum, lo_open, hi_open):
        raise ConfigError(f"{name} must be a number{_range_text(minimum, maximum, lo_open, hi_open)}, got {value!r}")
    return float(v)


def as_int_list(
    value: Any, name: str, minimum: int | None = None, maximum: int | None = None, *, parse: bool = False
) -> list[int]:
    """A non-empty list of integers from one integer or a list/tuple of them (``--folds 0`` and ``--folds [0,1]``
    both work).

    Args:
        value: an int, or a list/tuple of ints; with ``parse`` also their text (``"3"``, ``"[0,1]"``, ``"0,1"``).
        name: the option name for the message.
        minimum, maximum: inclusive bounds of every element.
        parse: accept text as a command line gives it.

    Raises:
        ConfigError: ``"<name> must be an integer or a list of integers >= 0 (e.g. [0, 1]), got 'abc'"``.
    """
    items: Any = value
    if parse and isinstance(items, str):
        items = [t.strip() for t in items.strip().strip("[]()").split(",") if t.strip()]
    if isinstance(items, (int, np.integer)) and not isinstance(items, (bool, np.bool_)):
        items = [items]
    example = f" (e.g. [{minimum if minimum is not None else 0}, {(minimum or 0) + 1}])"
    rng = _range_text(minimum, maximum, integers=True)
    msg = f"{name} must be an integer or a non-empty list of integers{rng}{example}"
    ints = [_integer(v, minimum, maximum, parse) for v in items] if isinstance(items, (list, tuple)) else []
    if not ints or any(v is None for v in ints):
        raise ConfigError(f"{msg}, got {value!r}")
    return [int(v) for v in ints]  # type: ignore[arg-type]


def check_folder(value: Any, name: str, writable: bool = False) -> Path:
    """A folder option as a ``Path``, checked without writing anything: it must not be a file nor lie below one and,
    with ``writable``, its nearest existing folder must be writable (an output folder is created later, by the run).

    Args:
        value: the folder (it may not exist yet).
        name: the option name for the message (``"output_dir"``, ``"ckpt_dir"``).
        writable: also check write permission (as far as ``os.access`` can tell: not for root).

    Raises:
        ConfigError: ``"output_dir /x/report.json is a file, not a folder"`` and the like.
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{name} must be a folder path, got {value!r}")
    folder = Path(value)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{name} {folder} is a file, not a folder")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{name} {folder} lies below the file {existing}, so it cannot be created")
    if writable and existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == folder else f"cannot be created: {existing}"
        raise ConfigError(f"{name} {folder} {what} not writable (permission denied)")
    return folder


@dataclass(frozen=True)
class OptionRule:
    """What one option may be: ``kind`` ``"int"``, ``"float"``, ``"bool"`` (:func:`~labelless.utils.as_bool`),
    ``"ints"`` (:func:`as_int_list`), ``"folder"`` or ``"output_folder"`` (:func:`check_folder`, the latter also
    writable) or ``"choice"`` (one of ``choices``), with bounds (``lo_open`` / ``hi_open`` make them exclusive; floats
    only)."""

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()

    def check(self, value: Any, name: str) -> None:
        """Raise a :class:`~labelless.errors.ConfigError` naming ``name`` when ``value`` breaks the rule."""
        if self.kind == "int":
            as_int(value, name, self.minimum, self.maximum)  # type: ignore[arg-type]
        elif self.kind == "float":
            as_float(value, name, self.minimum, self.maximum, lo_open=self.lo_open, hi_open=self.hi_open)
        elif self.kind == "bool":
            as_bool(value, name)
        elif self.kind == "ints":
            as_int_list(value, name, self.minimum, self.maximum)  # type: ignore[arg-type]
        elif self.kind in ("folder", "output_folder"):
            check_folder(value, name, writable=self.kind == "output_folder")
        elif self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ConfigError(f"{name} must be one of {list(self.choices)}, got {value!r}")
        else:
            raise ValueError(f"unknown rule kind {self.kind!r}")


def _rules(kind: str, names: str, *args: Any, **kwargs: Any) -> dict[str, OptionRule]:
    return {n: OptionRule(kind, *args, **kwargs) for n in names.split()}


#: the rule of every option name the bundle configs check (one meaning per name across the bundles)
OPTION_RULES: dict[str, OptionRule] = {
    **_rules(
        "int",
        "n_steps epoch_length batch_size eval_batch_size n_shots n_tasks n_eval_episodes log_every keep_checkpoints "
        "train_window test_window ngf ndf n_res_blocks n_layers_global n_layers_local encoder_blocks width "
        "feature_channels psm_depth",
        1,
    ),
    **_rules("int", "image_size", 8),
    **_rules("int", "n_classes", 2),
    **_rules("int", "setting bcma_setting", 1, 2),
    **_rules(
        "int",
        "save_interval val_interval n_overlays n_val_overlays num_workers n_unlabeled warmup_steps rampup_steps "
        "z_margin fold label_set seed eval_seed split_seed",
        0,
    ),
    **_rules("float", "learning_rate attention_temperature", 0, lo_open=True),
    **_rules(
        "float",
        "weight_decay contrast surrogate_weight perceptual_weight style_weight consistency par_weight dice_weight "
        "offset_scale crf_alpha head_lr_multiplier psm_min_mass",
        0,
    ),
    **_rules("float", "proto_threshold shadow_prob", 0, 1),
    **_rules("float", "ema_decay", 0, 1, hi_open=True),
    **_rules("float", "labeled_ratio", 0, 1, lo_open=True),
    **_rules("float", "threshold", 0, 1, lo_open=True, hi_open=True),
    **_rules("float", "label_value"),
    **_rules("float", "patch_zoom", 1, 16),
    **_rules("float", "color_constancy", 0),
    **_rules(
        "bool",
        "resume load_pretrain refine save_predictions predict_outside_extent zero_black_background zero_corners "
        "freeze_generator surrogate surrogate_include_support imagenet_normalization use_fspa use_bcma "
        "use_cross_attention use_mcam use_psm psm_on_background psm_with_local optim_set_to_none amp support_threshold "
        "invert_mask flip_tta",
    ),
    **_rules("ints", "folds support_slices", 0),
    **_rules("ints", "eval_shots", 1),
    **_rules("folder", "ckpt_dir"),
    **_rules("choice", "surrogate_mode", choices=("alternate", "sum")),
    **_rules("choice", "lr_schedule", choices=("constant", "cosine")),
    **_rules("choice", "intensity_prior", choices=("none", "dark", "bright")),
    **_rules("output_folder", "output_dir"),
}


def check_options(nullable: Sequence[str] = (), **options: Any) -> dict[str, Any]:
    """Check bundle options by name against :data:`OPTION_RULES` (the first expression of every bundle config's
    ``initialize``), so that a wrong override fails before any work with one line naming it.

    Args:
        nullable: names whose value may be unset (``None``/``"null"``; e.g. SABR-Net's ``learning_rate``, where
            ``null`` means the spec's rates).
        options: ``name=value`` pairs; every name needs a rule.

    Returns:
        ``options`` unchanged.

    Raises:
        ConfigError: the first option that breaks its rule, e.g. ``"learning_rate must be a number > 0, got 'x'"``.
        TypeError: a name without a rule (a config mistake, not a user one).

    Examples::

        "checked_options": "$labelless.options.check_options(n_steps=@n_steps, learning_rate=@learning_rate)",
        "initialize": ["$@checked_options", ...]
    """
    if isinstance(nullable, str) or not isinstance(nullable, (Sequence, Mapping)):
        nullable = [str(nullable)]
    unknown = sorted(set(options) - set(OPTION_RULES))
    if unknown:
        raise TypeError(f"check_options: no rule for {unknown}; add them to labelless.options.OPTION_RULES")
    for name, value in options.items():
        if name in nullable and is_unset(value):
            continue
        OPTION_RULES[name].check(value, name)
    return dict(options)
