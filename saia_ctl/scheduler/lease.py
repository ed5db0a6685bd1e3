"""The scheduler lease: one row, taken with one short write, that expires.

A tick killed while holding it cannot wedge the next: once ``expires_at`` has
passed, the next tick takes it over (unlike the original's lock file).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, text

from ..db import write_session


def new_holder() -> str:
    """``host:pid:uuid``: who holds the lease, readable by an operator."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Begin:
    """Outcome of trying to start a tick."""

    status: str  # "run", "busy" (another tick holds the lease) or "not-due"
    message: str = ""
    tick_id: int | None = None


def begin_tick(
    engine: Engine, holder: str, now: float, ttl: float, if_due: bool = False, interval: float = 0.0
) -> Begin:
    """In one write transaction: check the throttle, take the lease, open the tick's log row."""
    with write_session(engine) as s:
        if if_due:
            last = s.execute(text("SELECT max(started_at) FROM ticks")).scalar()
            if last is not None and now - float(last) < interval:
                return Begin(
                    "not-due",
                    f"tick not due: the last one began {now - float(last):.1f}s ago (interval {interval:g}s)",
                )
        taken = (
            s.connection()
            .execute(
                text(
                    "UPDATE scheduler_lease SET holder = :h, acquired_at = :now, expires_at = :exp "
                    "WHERE id = 1 AND (holder IS NULL OR expires_at IS NULL OR expires_at <= :now)"
                ),
                {"h": holder, "now": now, "exp": now + ttl},
            )
            .rowcount
        )
        if not taken:
            row = s.execute(text("SELECT holder, expires_at FROM scheduler_lease WHERE id = 1")).first()
            if row is None:  # the migration creates it; be robust if someone deleted it
                s.execute(
                    text(
                        "INSERT INTO scheduler_lease (id, holder, acquired_at, expires_at) "
                        "VALUES (1, :h, :now, :exp)"
                    ),
                    {"h": holder, "now": now, "exp": now + ttl},
                )
            else:
                return Begin(
                    "busy",
                    f"another tick is running (holder {row.holder}, expires {_iso(row.expires_at)})",
                )
        result = s.connection().execute(
            text("INSERT INTO ticks (started_at, holder, summary, actions) VALUES (:now, :h, '', '[]')"),
            {"now": now, "h": holder},
        )
        return Begin("run", tick_id=result.lastrowid)


def renew_lease(engine: Engine, holder: str, now: float, ttl: float) -> bool:
    """Push the expiry out; False if the lease is no longer ours (taken over after expiry)."""
    with write_session(engine) as s:
        n = (
            s.connection()
            .execute(
                text("UPDATE scheduler_lease SET expires_at = :exp WHERE id = 1 AND holder = :h"),
                {"exp": now + ttl, "h": holder},
            )
            .rowcount
        )
    return bool(n)


def release_lease(engine: Engine, holder: str) -> None:
    with write_session(engine) as s:
        s.execute(
            text("UPDATE scheduler_lease SET holder = NULL, expires_at = NULL WHERE id = 1 AND holder = :h"),
            {"h": holder},
        )
