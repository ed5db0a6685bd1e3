"""The accounting ledger: each month's figures, kept up to date a piece of a day at a time.

A month's report needs every request of the month, and reading a million rows
into Python takes longer than the report may. So time that is over (and has
no request still open) is *folded* once into small per-month tables: counters
per user and per service, each with all its durations and times to first byte
as one sorted run (``sorted_runs``); per service the GPU time attributed to
each user, and its requests per day; per job its idle GPU time. A report
(``assemble``) reads those tables for the folded part of its month and scans
the rows only for the rest (the *tail*: the last hour or so, or a month nobody
folded yet) with the same code the fold uses (``scan``), so the figures are
the same whichever way they were made.

What adds up exactly, and why: counters are integers; durations are kept whole
(nearest-rank percentiles are picked from the union of sorted runs, never
estimated); job, idle and ready times are sums of differences of timestamps,
which are exact in binary floating point for epoch times in 2004-2038. Only an
attributed share (time divided by the requests in flight) is rounded, so a
user's unrounded GPU seconds may differ in the last binary digit from a single
pass over the month; the report rounds to thousandths of a GPU-hour.

The ledger keeps one zone's days (``SAIA_ACCOUNTING_TZ``, a cursor per zone):
everything before the cursor is folded. The fold goes in *pieces*: the next one
starts at the cursor and ends at the latest point that is at most the end of
the cursor's local day, at most the watermark (``MARGIN`` seconds ago, and no
later than the start of the oldest request still open), and a whole epoch hour
or that day's end. So a closed day is folded whole in one piece and the open
day up to its last due whole hour: the tail is at most about an hour plus
``MARGIN`` long (unless a request stays open). Every table adds a piece to what
its month has (counters and days add up, sorted runs are merged), so a day
folded in pieces is the day folded whole. A piece is folded in one short write
transaction that checks and moves the cursor, so two folds at once, or a fold
killed half-way, never count a piece twice. The cursor also keeps the highest
request id seen: a row with a higher id that started before the cursor came
late (a backfill); reports then scan its month, and the next fold rewinds the
ledger to that month and folds it again.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field

from ..rawdb import deferred, immediate
from . import shares
from .figures import COUNT_FIELDS
from .months import Window, month_window
from .row_sql import CURSOR_SQL, JOB_START_SQL
from .scan import Progress, Span, scan
from .sorted_runs import pack, unpack
from .zones import month_of

TYPE_CHECKING = False  # typing is not imported at run time: the request path's usage reads this module
if TYPE_CHECKING:  # annotations only: stdlib at run time
    from typing import Any

    from sqlalchemy import Engine

# A day is folded this long after it ended at the earliest: the scheduler may still correct a
# job's end time a little after the fact, and a request's row is written right after its start
# time was taken (at most the busy timeout later).
MARGIN = 900.0

LEDGER_TABLES = ("ledger_users", "ledger_services", "ledger_gpu_blocks", "ledger_days", "ledger_jobs")

_OPEN_SQL = "SELECT MIN(started_at) FROM requests WHERE ended_at IS NULL"
_FIRST_SQL = f"SELECT MIN(t) FROM (SELECT MIN(started_at) AS t FROM requests UNION ALL SELECT MIN({JOB_START_SQL}) FROM jobs)"

# Rows that arrived after the last fold but started before its end: read through the rowid
# range (the rows inserted since that fold), never the started_at index (millions of rows).
_LATE_SQL = "SELECT MIN(started_at) FROM requests NOT INDEXED WHERE id > ? AND started_at < ?"


def _scalar(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The one value a one-column aggregate query returns."""
    return conn.execute(sql, params).fetchone()[0]


@dataclass(frozen=True)
class Cursor:
    """Where the ledger of a zone stands: the time before ``folded_to`` is folded, from the
    request rows up to id ``max_id`` (a row with a higher id arrived after; if it started
    before ``folded_to``, it came late and the ledger must be rewound to fold it in)."""

    folded_to: float
    max_id: int


def read_cursor(conn: sqlite3.Connection, tz: str) -> Cursor | None:
    row = conn.execute(CURSOR_SQL, (tz,)).fetchone()
    return None if row is None else Cursor(float(row[0]), int(row[1]))


def cursor(conn: sqlite3.Connection, tz: str) -> float | None:
    """Up to where zone ``tz`` is folded (None: not begun)."""
    c = read_cursor(conn, tz)
    return None if c is None else c.folded_to


def _watermark(conn: sqlite3.Connection, now: float) -> float:
    """Pieces ending at or before this can be folded."""
    oldest_open = _scalar(conn, _OPEN_SQL)
    w = now - MARGIN
    return w if oldest_open is None else min(w, float(oldest_open))


def _start(conn: sqlite3.Connection, tz: str, at: float | None) -> float | None:
    """Where folding starts: the cursor, or the first month of the rows (None: no rows)."""
    if at is not None:
        return at
    first = _scalar(conn, _FIRST_SQL)
    return None if first is None else month_window(month_of(float(first), tz), tz).start


# The open day is folded in pieces that end on whole epoch hours (or at the day's end), so
# the unfolded tail a report or a usage answer scans is at most about an hour plus MARGIN.
HOUR = 3600.0


@dataclass(frozen=True)
class Piece:
    """A span [start, end) of one local day of ``month``, to fold (or folded) in one step."""

    month: str
    day: str
    start: float
    end: float


def _piece_in(w: Window, at: float, upto: float) -> Piece | None:
    """The piece of window ``w`` that starts at ``at``: up to the end of its local day if that
    is at most ``upto``, else up to the last whole epoch hour at most ``upto`` (None: empty)."""
    bounds = [*w.day_starts[1:], w.end]
    for (day, a), b in zip(w.days, bounds, strict=True):
        if a <= at < b:
            end = b if b <= upto else math.floor(upto / HOUR) * HOUR
            return Piece(w.month, day, at, end) if end > at else None
    return None  # not reached: the cursor is always inside its month


def next_piece(conn: sqlite3.Connection, tz: str, at: float | None, now: float) -> Piece | None:
    """The piece of zone ``tz`` that starts at the cursor ``at``, if one may be folded now."""
    at = _start(conn, tz, at)
    if at is None:
        return None
    return _piece_in(month_window(month_of(at, tz), tz), at, _watermark(conn, now))


def pieces_due(conn: sqlite3.Connection, tz: str, now: float) -> int:
    """How many pieces a fold at ``now`` would fold (rewinds for late rows aside)."""
    with deferred(conn):
        seen = read_cursor(conn, tz)
        at = _start(conn, tz, None if seen is None else seen.folded_to)
        if at is None:
            return 0
        upto = _watermark(conn, now)
        n = 0
        w = month_window(month_of(at, tz), tz)
        while (p := _piece_in(w, at, upto)) is not None:
            n += 1
            at = p.end
            if at >= w.end:
                w = month_window(month_of(at, tz), tz)
        return n


@dataclass
class FoldResult:
    pieces: list[Piece] = field(default_factory=list)  # folded, in order (a day may take several)
    rewound: list[str] = field(default_factory=list)  # months refolded for rows that came late
    seconds: float = 0.0  # wall time
    writes: list[float] = field(default_factory=list)  # each step's write transaction (seconds)

    @property
    def days(self) -> list[str]:
        """The local days the pieces folded were of, in order, each once."""
        return list(dict.fromkeys(p.day for p in self.pieces))


if TYPE_CHECKING:
    Statements = list[tuple[str, list[tuple[Any, ...]]]]


@dataclass
class _Step:
    """One fold step, prepared in a read transaction: fold a piece, or rewind for late rows."""

    seen: Cursor | None
    new: Cursor
    statements: Statements
    piece: Piece | None = None
    rewind_month: str | None = None


_MOVE_CURSOR_SQL = (
    "INSERT INTO ledger_cursors (tz, folded_to, max_request_id, folded_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (tz) DO UPDATE SET folded_to = excluded.folded_to,"
    " max_request_id = excluded.max_request_id, folded_at = excluded.folded_at"
)


def fold(
    conn: sqlite3.Connection,
    tz: str,
    now: float,
    *,
    max_pieces: int | None = None,
    progress: Progress | None = None,
) -> FoldResult:
    """Fold the due pieces of zone ``tz`` (at most ``max_pieces``): each closed day whole, and
    the open day up to its last due whole hour.

    ``conn`` is a plain sqlite3 connection in autocommit mode (isolation_level None): each
    piece is scanned in a read transaction and written in one short BEGIN IMMEDIATE
    transaction, which first checks that the cursor is still where the scan saw it.
    ``progress`` gets (pieces folded, pieces to fold).
    """
    result = FoldResult()
    t0 = time.monotonic()
    total = 0
    if progress is not None:
        total = pieces_due(conn, tz, now)
        if max_pieces is not None:
            total = min(total, max_pieces)
    while max_pieces is None or len(result.pieces) < max_pieces:
        step = _scan_next(conn, tz, now)
        if step is None:
            break
        t1 = time.monotonic()
        with immediate(conn):
            moved = read_cursor(conn, tz) != step.seen
            if not moved:
                _write(conn, step.statements)
                conn.execute(_MOVE_CURSOR_SQL, (tz, step.new.folded_to, step.new.max_id, now))
        if moved:  # another fold moved it meanwhile (nothing written): look again
            continue
        result.writes.append(time.monotonic() - t1)
        if step.piece is not None:
            result.pieces.append(step.piece)
            if progress is not None:
                total = max(total, len(result.pieces))
                progress(len(result.pieces), total)
        if step.rewind_month is not None:
            result.rewound.append(step.rewind_month)
            if result.rewound.count(step.rewind_month) > 1:
                break  # rows keep arriving late: leave it to the next fold
            if progress is not None:  # the rewound month's pieces are to fold again
                total = len(result.pieces) + pieces_due(conn, tz, now)
                if max_pieces is not None:
                    total = min(total, max_pieces)
    result.seconds = time.monotonic() - t0
    return result


def _scan_next(conn: sqlite3.Connection, tz: str, now: float) -> _Step | None:
    """The next step and its writes, read in one read transaction (one snapshot)."""
    with deferred(conn):
        seen = read_cursor(conn, tz)
        due = next_piece(conn, tz, None if seen is None else seen.folded_to, now)
        if due is None:  # nothing due (rows that came late wait for the next due piece)
            return None
        max_id = int(_scalar(conn, "SELECT IFNULL(MAX(id), 0) FROM requests"))
        if seen is not None:
            late = _scalar(conn, _LATE_SQL, (seen.max_id, seen.folded_to))
            if late is not None:  # refold from the month of the earliest late row
                month = month_of(float(late), tz)
                start = month_window(month, tz).start
                deletes: Statements = [
                    (f"DELETE FROM {table} WHERE tz = ? AND month >= ?", [(tz, month)])
                    for table in LEDGER_TABLES
                ]
                return _Step(seen, Cursor(start, max_id), deletes, rewind_month=month)
        step = _Step(seen, Cursor(due.end, max_id), [], piece=due)
        rolled_up = "SELECT 1 FROM rollup_months WHERE month = ? AND tz = ?"
        if not conn.execute(rolled_up, (due.month, tz)).fetchone():  # pruned: its rollup answers
            span = scan(conn, month_window(due.month, tz), due.start, due.end, now)
            step.statements = _prepare(conn, tz, due, span)
        return step


def drop_month(conn: sqlite3.Connection, tz: str, month: str) -> None:
    """Forget a month's folded figures (once its rollup keeps them; the cursor stays)."""
    for table in LEDGER_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE tz = ? AND month = ?", (tz, month))


def fold_engine(
    engine: Engine, tz: str, now: float, *, max_pieces: int | None = None, progress: Progress | None = None
) -> FoldResult:
    """``fold`` on a connection of ``engine`` (the tick and `saia-ctl db ledger`)."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, sqlite3.Connection)
        return fold(conn, tz, now, max_pieces=max_pieces, progress=progress)
    finally:
        raw.close()


COUNT_NAMES = ", ".join(COUNT_FIELDS)
_ADD_COUNTS = ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNT_FIELDS)
_N = len(COUNT_FIELDS)


def _level_rows(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    key: tuple[str, str],
    counts: dict[str, list[int]],
    lat: dict[str, tuple[list[float], list[float]]],
) -> tuple[str, list[tuple[Any, ...]]]:
    """The upsert adding a piece's counters to the users' (or services') rows, durations merged in."""
    ids = sorted(counts)
    old: dict[str, tuple[bytes, bytes]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        sql = (
            f"SELECT {column}, durations, ttfbs FROM {table} WHERE tz = ? AND month = ?"
            f" AND {column} IN ({', '.join('?' * len(chunk))})"
        )
        for k, durations, ttfbs in conn.execute(sql, (*key, *chunk)):  # thousands: plain tuples
            old[k] = (durations, ttfbs)

    def merged(blob: bytes, new: list[float]) -> bytes:
        return pack(sorted([*unpack(blob), *new])) if new else blob

    rows: list[tuple[Any, ...]] = []
    for k in ids:
        d_new, f_new = lat.get(k, ([], []))
        d_old, f_old = old.get(k, (b"", b""))
        rows.append((*key, k, *counts[k], merged(d_old, d_new), merged(f_old, f_new)))
    sql = (
        f"INSERT INTO {table} (tz, month, {column}, {COUNT_NAMES}, durations, ttfbs)"
        f" VALUES (?, ?, ?, {', '.join('?' * _N)}, ?, ?) ON CONFLICT (tz, month, {column})"
        f" DO UPDATE SET {_ADD_COUNTS}, durations = excluded.durations, ttfbs = excluded.ttfbs"
    )
    return sql, rows


def _prepare(conn: sqlite3.Connection, tz: str, due: Piece, span: Span) -> Statements:
    """The writes that fold ``span`` into the ledger, computed in the read transaction (the
    write transaction then only runs them: merging durations holds no lock)."""
    key = (tz, due.month)
    out: Statements = []
    out.append(_level_rows(conn, "ledger_users", "user_id", key, span.users, span.user_lat))
    out.append(_level_rows(conn, "ledger_services", "service_id", key, span.services, span.service_lat))
    out += _gpu_rows(conn, key, span.gpu)
    out.append(
        (
            "INSERT INTO ledger_days (tz, month, service_id, day, requests) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (tz, month, service_id, day) DO UPDATE SET requests = requests + excluded.requests",
            [(*key, sv, day, n) for (sv, day), n in sorted(span.days.items())],
        )
    )
    out.append(
        (
            "INSERT INTO ledger_jobs (tz, month, job_id, idle_gpu_seconds, idle_ready_gpu_seconds)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tz, month, job_id) DO UPDATE SET"
            " idle_gpu_seconds = idle_gpu_seconds + excluded.idle_gpu_seconds,"
            " idle_ready_gpu_seconds = idle_ready_gpu_seconds + excluded.idle_ready_gpu_seconds",
            [(*key, j, idle, ready) for j, (idle, ready) in sorted(span.idle.items())],
        )
    )
    return out


def read_gpu_shares(conn: sqlite3.Connection, key: tuple[str, str]) -> dict[str, dict[str, int]]:
    """A month's folded GPU time per service and user, in ns (``key``: zone, month)."""
    sql = (
        "SELECT service_id, keys, running FROM ledger_gpu_blocks WHERE tz = ? AND month = ?"
        " ORDER BY service_id, first_key"
    )
    blocks: defaultdict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for sv, keys, blob in conn.execute(sql, key):
        blocks[sv].append((keys, blob))
    return {sv: shares.unpack(b) for sv, b in blocks.items()}


def _gpu_rows(
    conn: sqlite3.Connection, key: tuple[str, str], gpu: dict[tuple[str, str], float]
) -> Statements:
    """The writes adding a piece's attributed GPU time to each service's users: the
    services' blocks made anew (a user added shifts every block after it)."""
    by_service: defaultdict[str, dict[str, float]] = defaultdict(dict)
    for (u, sv), secs in gpu.items():
        by_service[sv][u] = secs
    old = read_gpu_shares(conn, key) if by_service else {}
    rows: list[tuple[Any, ...]] = []
    for sv, add in sorted(by_service.items()):
        have = old.get(sv, {})
        for u, secs in add.items():
            have[u] = have.get(u, 0) + shares.to_ns(secs)
        rows += [(*key, sv, *block) for block in shares.pack(have)]
    return [
        (
            "DELETE FROM ledger_gpu_blocks WHERE tz = ? AND month = ? AND service_id = ?",
            [(*key, sv) for sv in sorted(by_service)],
        ),
        (
            "INSERT INTO ledger_gpu_blocks (tz, month, service_id, first_key, before_ns, keys, running)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        ),
    ]


def _write(conn: sqlite3.Connection, statements: Statements) -> None:
    for sql, rows in statements:
        conn.executemany(sql, rows)
