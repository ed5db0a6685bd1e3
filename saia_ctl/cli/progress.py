"""A progress bar on stderr for the long commands (`db ledger`, `db prune`, `report`).

The library reports how far it is through a callback ``(done, total)``; this
draws it, and only when stderr is a terminal: piped or redirected, a command
prints no bar at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer


class Bar:
    """A ``(done, total)`` callback that draws a bar on stderr, from its first call on."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None  # typer's ProgressBar, once there is something to show

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = typer.progressbar(length=max(total, 1), label=self.label, file=sys.stderr)
            self._bar.render_progress()
        self._bar.length = max(total, done, 1)  # the total may grow (e.g. a ledger rewound)
        if done > self._bar.pos:
            self._bar.update(done - self._bar.pos)

    def close(self) -> None:
        """End the bar's line (before the command prints its result or an error)."""
        if self._bar is not None:
            self._bar.render_finish()
            self._bar = None


def progress_bar(label: str) -> Bar | None:
    """A bar when stderr is a terminal, else None (the library then reports to no one)."""
    return Bar(label) if sys.stderr.isatty() else None


@contextmanager
def shown(label: str) -> Iterator[Bar | None]:
    """``progress_bar`` for the time of a ``with`` block, its line ended on the way out."""
    bar = progress_bar(label)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
