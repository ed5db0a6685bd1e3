"""A month's figures (made by ``assemble.assemble``) and the rollup tables that keep them.

The report is made from a ``Figures`` object only, and a ``Figures`` object
read from the rollups is equal to the one made from the rows before they
were pruned: that is what makes reports of pruned months byte-identical.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field, fields

from .months import Window
from .shares import NS_PER_SECOND, to_ns

TYPE_CHECKING = False  # typing is not imported at run time: the request path's usage reads this module
if TYPE_CHECKING:  # annotations only: stdlib at run time
    from typing import Any

    from sqlalchemy.orm import Session

ALL = ""  # the user_id / service_id of "all users" / "all services" rows


@dataclass
class Usage:
    """Request figures of one (user, service) pair, user (service ALL), service (user ALL) or all."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    aborted: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    duration_p50: float | None = None
    duration_p95: float | None = None
    ttfb_p50: float | None = None
    ttfb_p95: float | None = None

    @classmethod
    def of_counts(cls, counts: Sequence[int]) -> Usage:
        """The cell of counters listed in ``COUNT_FIELDS`` order (no latency yet)."""
        return cls(**dict(zip(COUNT_FIELDS, counts, strict=True)))

    def add_counts(self, other: Usage) -> None:
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# The counters: the integer fields (the rest are percentiles). Their order here is the one
# order of the counter lists, the ledger's columns and the scans' SQL (``row_sql.COUNTER_SQL``).
COUNT_FIELDS = tuple(f.name for f in fields(Usage) if f.type == "int")
USAGE_FIELDS = tuple(f.name for f in fields(Usage))


@dataclass
class ServiceGPU:
    """GPU figures of one service in the month (seconds)."""

    jobs: int = 0
    jobs_open: int = 0
    job_seconds: float = 0.0
    gpu_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    idle_ready_gpu_seconds: float = 0.0
    ready_seconds: float = 0.0
    submit_to_ready_median: float | None = None


GPU_FIELDS = tuple(f.name for f in fields(ServiceGPU))


@dataclass
class Figures:
    window: Window
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)  # (user|ALL, service|ALL)
    gpu: dict[str, ServiceGPU] = field(default_factory=dict)
    days: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, YYYY-MM-DD)
    # GPU time attributed to each user of each service (service -> user -> whole nanoseconds,
    # ``shares``). A user or service with attributed time but no request in the month still
    # has a (zero) usage cell.
    gpu_shares: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.usage and not any(g.jobs for g in self.gpu.values())


def dbapi(session: Session) -> sqlite3.Connection:
    """The raw sqlite3 connection of a session: the big scans skip SQLAlchemy's row objects."""
    conn: Any = session.connection().connection.driver_connection
    assert isinstance(conn, sqlite3.Connection)
    return conn


def named(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """A cursor whose rows are read by column name (``row["month"]``), on any connection:
    the connection's own rows stay as they are (a session's stay tuples for SQLAlchemy)."""
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    return cur


# --- rollups ---------------------------------------------------------------------------------


def has_rollup(session: Session, window: Window) -> bool:
    sql = "SELECT 1 FROM rollup_months WHERE month = ? AND tz = ?"
    return dbapi(session).execute(sql, (window.month, window.tz)).fetchone() is not None


def pruned_before(session: Session) -> tuple[float, str] | None:
    """The latest end of a rolled-up month and its zone: request rows before it may be gone."""
    sql = "SELECT end_at, tz FROM rollup_months ORDER BY end_at DESC LIMIT 1"
    row = named(dbapi(session)).execute(sql).fetchone()
    return (float(row["end_at"]), str(row["tz"])) if row else None


def load(session: Session, window: Window) -> Figures:
    conn = dbapi(session)
    key = (window.month, window.tz)
    figs = Figures(window)
    cols = ", ".join(USAGE_FIELDS)
    for row in named(conn).execute(
        f"SELECT user_id, service_id, {cols}, gpu_seconds FROM rollup_usage WHERE month = ? AND tz = ?"
        " ORDER BY user_id, service_id",
        key,
    ):
        u, s = row["user_id"], row["service_id"]
        figs.usage[(u, s)] = Usage(**{name: row[name] for name in USAGE_FIELDS})
        if u != ALL and s != ALL and row["gpu_seconds"]:
            figs.gpu_shares.setdefault(s, {})[u] = to_ns(row["gpu_seconds"])
    cols = ", ".join(GPU_FIELDS)
    for row in named(conn).execute(
        f"SELECT service_id, {cols} FROM rollup_services WHERE month = ? AND tz = ? ORDER BY service_id", key
    ):
        figs.gpu[row["service_id"]] = ServiceGPU(**{name: row[name] for name in GPU_FIELDS})
    for s, day, n in conn.execute(
        "SELECT service_id, day, requests FROM rollup_days WHERE month = ? AND tz = ? ORDER BY service_id, day",
        key,
    ):
        figs.days[(s, day)] = n
    return figs


def store(session: Session, figs: Figures, made_at: float) -> None:
    """Write the figures to the rollup tables (the caller holds a write transaction)."""
    conn = dbapi(session)
    w = figs.window
    key = (w.month, w.tz)
    for table in ("rollup_usage", "rollup_services", "rollup_days", "rollup_months"):
        conn.execute(f"DELETE FROM {table} WHERE month = ? AND tz = ?", key)
    conn.execute(
        "INSERT INTO rollup_months (month, tz, start_at, end_at, made_at) VALUES (?, ?, ?, ?, ?)",
        (*key, w.start, w.end, made_at),
    )
    gpu: dict[tuple[str, str], int] = {}  # the pairs', and the sums of users, services, all (ns)
    for s, shares in sorted(figs.gpu_shares.items()):
        for u, ns in sorted(shares.items()):
            for k in ((u, s), (u, ALL), (ALL, s), (ALL, ALL)):
                gpu[k] = gpu.get(k, 0) + ns
    cols = ", ".join(USAGE_FIELDS)
    marks = ", ".join("?" * (len(USAGE_FIELDS) + 5))
    conn.executemany(
        f"INSERT INTO rollup_usage (month, tz, user_id, service_id, {cols}, gpu_seconds) VALUES ({marks})",
        [
            (*key, u, s, *astuple(figs.usage.get((u, s), Usage())), gpu.get((u, s), 0) / NS_PER_SECOND)
            for u, s in sorted(set(figs.usage) | set(gpu))
        ],
    )
    cols = ", ".join(GPU_FIELDS)
    marks = ", ".join("?" * (len(GPU_FIELDS) + 3))
    conn.executemany(
        f"INSERT INTO rollup_services (month, tz, service_id, {cols}) VALUES ({marks})",
        [(*key, s, *astuple(g)) for s, g in sorted(figs.gpu.items())],
    )
    conn.executemany(
        "INSERT INTO rollup_days (month, tz, service_id, day, requests) VALUES (?, ?, ?, ?, ?)",
        [(*key, s, d, n) for (s, d), n in sorted(figs.days.items())],
    )
