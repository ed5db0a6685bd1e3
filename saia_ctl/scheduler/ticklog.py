"""The ``ticks`` table: what each tick saw, decided and did, for ``saia-ctl ticks list``."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, text

from ..db import read_session, write_session
from .views import Action

# The error column holds the one-line error, then (for a bug) Python's traceback.
_TRACEBACK = "\nTraceback (most recent call last):"


def finish_tick(
    engine: Engine,
    tick_id: int,
    duration: float,
    summary: str,
    actions: list[Action],
    error: str | None,
    traceback: str | None = None,
) -> None:
    """Record the end of a tick; a traceback is kept after the one-line error."""
    if error is not None and traceback:
        error = f"{error}\n{traceback.rstrip()}"
    logged = json.dumps([a.as_dict() for a in actions], default=str)
    with write_session(engine) as s:
        s.execute(
            text("UPDATE ticks SET duration = :d, summary = :s, actions = :a, error = :e WHERE id = :id"),
            {"d": duration, "s": summary, "a": logged, "e": error, "id": tick_id},
        )


def split_error(stored: str | None) -> tuple[str | None, str | None]:
    """(the one-line error, the traceback or None) from the error column."""
    if stored is None:
        return None, None
    head, marker, rest = stored.partition(_TRACEBACK)
    return head, (marker.lstrip("\n") + rest) if marker else None


_COLUMNS = "SELECT id, started_at, duration, holder, summary, actions, error FROM ticks "


def _as_dict(r: Any) -> dict[str, Any]:
    try:
        actions = json.loads(r.actions or "[]")
    except ValueError:
        actions = []
    error, trace = split_error(r.error)
    return {
        "id": r.id,
        "started_at": r.started_at,
        "duration": r.duration,
        "holder": r.holder,
        "summary": r.summary,
        "actions": actions,
        "error": error,
        "traceback": trace,
    }


def recent_ticks(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ticks first, as plain rows (times as epoch floats; duration None = did not finish).

    ``error`` is the one-line error, ``traceback`` that of a bug (or None).
    """
    with read_session(engine) as s:
        rows = s.execute(
            text(_COLUMNS + "ORDER BY started_at DESC, id DESC LIMIT :n"), {"n": max(0, limit)}
        ).all()
    return [_as_dict(r) for r in rows]


def get_tick(engine: Engine, tick_id: int) -> dict[str, Any] | None:
    """One tick as ``recent_ticks`` shows it, or None if there is no such tick."""
    with read_session(engine) as s:
        row = s.execute(text(_COLUMNS + "WHERE id = :id"), {"id": tick_id}).first()
    return None if row is None else _as_dict(row)
