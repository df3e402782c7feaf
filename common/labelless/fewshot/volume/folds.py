# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Cross-validation folds and the support scan (fewshot_protocol.md §6.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labelless.errors import ConfigError
from labelless.utils import sort_ids

__all__ = ["FoldSplit", "fold_boundaries", "fold_split"]


@dataclass(frozen=True)
class FoldSplit:
    """Scan ids of one fold: test scans, the support scan and the training scans (all others)."""

    fold: int
    test: tuple[str, ...]
    support: str
    train: tuple[str, ...]

    @property
    def held_out(self) -> tuple[str, ...]:
        return (*self.test, self.support)


def fold_boundaries(n_scans: int, n_folds: int = 5) -> list[int]:
    """Boundaries of ``n_folds`` consecutive folds over ``n_scans`` sorted scans.

    Equal folds when ``n_scans`` divides (CHAOS 0,4,...,20; Synapse 0,6,...,30; MS-CMRSeg 0,7,...,35); otherwise
    the first ``n_scans % n_folds`` folds get one extra scan.
    """
    if n_folds < 1:
        raise ConfigError(f"n_folds must be >= 1, got {n_folds}")
    if n_scans < n_folds + 1:
        raise ConfigError(
            f"{n_scans} scans are too few for {n_folds} folds (each fold needs a support scan outside it)"
        )
    base, extra = divmod(n_scans, n_folds)
    bounds = [0]
    for i in range(n_folds):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return bounds


def fold_split(pids: Sequence[str | int], fold: int, n_folds: int = 5) -> FoldSplit:
    """Split sorted scan ids into test / support / train for ``fold``.

    Pids are sorted as integers and form a circular list cut into ``n_folds`` consecutive folds; the support scan
    is the first scan of the next fold (fold ``n_folds - 1`` -> the first scan overall).

    Examples::

        >>> s = fold_split([1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39], 0)
        >>> s.test, s.support
        (('1', '2', '3', '5'), '8')
    """
    ids = sort_ids(pids)
    if not 0 <= int(fold) < n_folds:
        raise ConfigError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    b = fold_boundaries(len(ids), n_folds)
    fold = int(fold)
    test = tuple(ids[b[fold] : b[fold + 1]])
    support = ids[b[(fold + 1) % n_folds]] if fold + 1 < n_folds else ids[0]
    train = tuple(i for i in ids if i not in test and i != support)
    return FoldSplit(fold, test, support, train)
