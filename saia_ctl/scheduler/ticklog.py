"""The ``ticks`` table: what each tick saw, decided and did, for ``saia-ctl ticks list``."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, text

from ..db import read_session, write_session


def finish_tick(
    engine: Engine,
    tick_id: int,
    duration: float,
    summary: str,
    actions: list[dict[str, Any]],
    error: str | None,
) -> None:
    with write_session(engine) as s:
        s.execute(
            text("UPDATE ticks SET duration = :d, summary = :s, actions = :a, error = :e WHERE id = :id"),
            {"d": duration, "s": summary, "a": json.dumps(actions, default=str), "e": error, "id": tick_id},
        )


def recent_ticks(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ticks first, as plain rows (times as epoch floats; duration None = did not finish)."""
    with read_session(engine) as s:
        rows = s.execute(
            text(
                "SELECT id, started_at, duration, holder, summary, actions, error FROM ticks "
                "ORDER BY started_at DESC, id DESC LIMIT :n"
            ),
            {"n": max(0, limit)},
        ).all()
    out = []
    for r in rows:
        try:
            actions = json.loads(r[5] or "[]")
        except ValueError:
            actions = []
        out.append(
            {
                "id": r[0],
                "started_at": r[1],
                "duration": r[2],
                "holder": r[3],
                "summary": r[4],
                "actions": actions,
                "error": r[6],
            }
        )
    return out
