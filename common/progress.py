"""Progress bars, one rule for every script: shown on a terminal, silent in a log file."""
from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable, *, enabled: bool = True, **kwargs: object) -> tqdm:
    """tqdm over `iterable` when `enabled` and stderr is a terminal; otherwise it only iterates, so
    that a log (`make demo 2> log`) gets no thousands of carriage-return updates."""
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)
