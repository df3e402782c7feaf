# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""What the inference runners share around their ``preprocessing`` / ``postprocessing`` transforms and ``handlers``.

- :func:`run_transform`: apply a transform (usually a MONAI ``Compose``) to an item and, when it fails with a
  labelless error, raise that error itself: MONAI wraps every failure of a composed transform in
  ``RuntimeError("applying transform ...")``, which would hide the one-line message naming the file.
- :func:`iterate_items`: the items of a data loader one by one (a MONAI ``DataLoader`` with
  ``collate_fn=no_collation`` yields lists of dicts), with the same unwrapping.
- :class:`LogItemd`: the runners' per-item progress line, a handler (any callable on an item's record dict, called
  after the item's outputs are written) that is also a dict transform.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

from monai.transforms import Transform

from labelless.errors import ConfigError, find_labelless_error

__all__ = ["run_transform", "iterate_items", "runner_items", "LogItemd", "LogItemD", "LogItemDict"]


def _reraise_labelless(exc: BaseException) -> None:
    """Raise the labelless error wrapped in ``exc``, if any, with its own cause. The wrappers' links to it are cut
    first: re-raised as is, it would become their context while they still point to it, a cycle that endless loops
    over ``__cause__`` / ``__context__`` (tracebacks, error finders) do not expect."""
    err = find_labelless_error(exc)
    if err is None or err is exc:
        return
    link, seen = exc, set()
    while link is not None and link is not err and id(link) not in seen:
        seen.add(id(link))
        following = link.__cause__ if link.__cause__ is not None else link.__context__
        if link.__cause__ is err:
            link.__cause__ = None
        if link.__context__ is err:
            link.__context__ = None
        link = following
    err.__suppress_context__ = True  # the wrappers are noise in a traceback; the error's own cause stays
    raise err


def run_transform(transform: Callable[[Any], Any] | None, data: Any) -> Any:
    """``transform(data)`` (``data`` itself when ``transform`` is ``None``); a labelless error anywhere in the chain of
    a failure is raised as such (its cause is MONAI's wrapper)."""
    if transform is None:
        return data
    try:
        return transform(data)
    except Exception as e:
        _reraise_labelless(e)
        raise


def runner_items(
    files: Iterable[Any],
    preprocessing: Callable[[Any], Any] | None,
    dataloader: Iterable[Any] | None = None,
    what: str = "images",
) -> Iterator[dict[Hashable, Any]]:
    """The preprocessed items of an inference runner: ``preprocessing`` applied to ``{"image": f}`` for each of
    ``files``, or, when a ``dataloader`` is given, its items (each must be one of ``files``, loaded by
    :class:`~labelless.io.loading.LoadFiled`).

    Raises:
        ConfigError: the data loader gives a file that is not one of ``files`` (named by ``what``).
    """
    from pathlib import Path

    from labelless.io.loading import loaded_meta

    if dataloader is None:
        for f in files:
            yield run_transform(preprocessing, {"image": f})
        return
    known = {Path(f) for f in files}
    for item in iterate_items(dataloader):
        f = Path(loaded_meta(item, "image")["filename_or_obj"])
        if f not in known:
            raise ConfigError(f"the data loader gives {f}, which is not one of the runner's {what}")
        yield item


def iterate_items(loader: Iterable[Any]) -> Iterator[dict[Hashable, Any]]:
    """The items (dicts) of ``loader``: dicts as they come, lists/tuples of dicts flattened.

    Raises:
        ConfigError: an element that is neither a dict nor a list of dicts (e.g. a batch collated by the default
            ``collate_fn``: use ``collate_fn=monai.data.utils.no_collation``).
        LabellessError: as raised while loading an item (unwrapped, see :func:`run_transform`).
    """
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:
            _reraise_labelless(e)
            raise
        for item in batch if isinstance(batch, (list, tuple)) else [batch]:
            if not isinstance(item, Mapping):
                raise ConfigError(
                    f"the inference data loader must give dicts (or lists of them: collate_fn=no_collation), "
                    f"got a {type(item).__name__}"
                )
            yield dict(item)


class LogItemd(Transform):
    """Log one line per item: ``message`` formatted with the item's entries (``str.format`` fields).

    The inference runners call their ``handlers`` with each item's record after its outputs are written; the record
    holds the runner's summary entry (input file, output files, foreground size) plus ``index`` (1-based) and
    ``total``. As a transform it works on any dict item and returns it unchanged.

    Args:
        message: e.g. ``"[{index}/{total}] {input} -> {mask} ({foreground_px} foreground pixels)"``.
        logger_name: the logger.
        level: logging level (name or number).

    Raises:
        ConfigError (when called): ``message`` names a field the item does not have.

    Examples::

        LogItemd("{input} -> {mask}")({"input": "a.png", "mask": "out/a_mask.png"})
    """

    def __init__(self, message: str, logger_name: str = "labelless", level: int | str = "INFO") -> None:
        self.message = str(message)
        self.logger = logging.getLogger(str(logger_name))
        lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
        if not isinstance(lvl, int):
            raise ConfigError(f"level must be a logging level such as 'INFO', got {level!r}")
        self.level = lvl

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        try:
            text = self.message.format(**{str(k): v for k, v in data.items()})
        except (KeyError, IndexError) as e:
            raise ConfigError(
                f"LogItemd message {self.message!r} names {e}, which the item has not "
                f"(fields: {sorted(map(str, data))})"
            ) from e
        self.logger.log(self.level, text)
        return data


LogItemD = LogItemDict = LogItemd
