"""Retention: keep a month's figures in the rollup tables, then delete its request rows.

One write transaction per month: compute the month's figures, store them,
count the rows to delete into ``pruned_totals`` (so metrics counters never go
down) and delete them. Rows still open, or that ended at or after the cut,
are kept: later months need them to attribute GPU time.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ..db import read_session, write_session
from ..errors import SaiaError
from . import figures as F
from .ledger import drop_month
from .months import month_window, next_month
from .report import month_figures
from .scan import Progress
from .zones import month_of


class PruneError(SaiaError):
    pass


@dataclass
class PruneResult:
    months: list[str]  # months rolled up now
    deleted: int


_DELETABLE = "started_at < ? AND ended_at IS NOT NULL AND ended_at < ?"


def prune(engine: Engine, before: str, tz: str, now: float, progress: Progress | None = None) -> PruneResult:
    """Roll up and prune every month before ``before``; ``progress`` gets (months done, months)."""
    cut = month_window(before, tz)
    if cut.start > now:
        raise PruneError(f"{before} has not begun yet in {tz}: only past months can be pruned")
    with read_session(engine) as s:
        mark = F.pruned_before(s)
        row = F.named(F.dbapi(s)).execute("SELECT MIN(started_at) AS first FROM requests").fetchone()
        first = row["first"]
    if mark is not None and mark[1] != tz:
        raise PruneError(f"earlier prunes kept months in zone {mark[1]}; prune with --tz {mark[1]}")
    result = PruneResult([], 0)
    if first is None or first >= cut.start:
        return result
    months = _months_between(month_of(float(first), tz), cut.month)
    for done, month in enumerate(months, 1):
        w = month_window(month, tz)
        with write_session(engine) as s:
            if not F.has_rollup(s, w):
                F.store(s, month_figures(s, w, now, None, None, all_pairs=True), made_at=now)
                result.months.append(month)
            drop_month(F.dbapi(s), tz, month)  # its reports come from the rollups now
            result.deleted += _delete(s, w.end, cut.start)
        if progress is not None:
            progress(done, len(months))
    return result


def _months_between(first: str, stop: str) -> list[str]:
    """The months from ``first`` up to, not including, ``stop``."""
    out = []
    while first < stop:
        out.append(first)
        first = next_month(first)
    return out


def _delete(session: Session, upto: float, cut: float) -> int:
    """Delete the closed rows that started before ``upto`` and ended before ``cut``."""
    conn = F.dbapi(session)
    params = (upto, cut)
    rows = conn.execute(
        "SELECT service_id, outcome, COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0)"
        f" FROM requests WHERE {_DELETABLE} GROUP BY service_id, outcome",
        params,
    ).fetchall()
    conn.executemany(
        "INSERT INTO pruned_totals (service_id, outcome, requests, input_tokens, output_tokens)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (service_id, outcome) DO UPDATE SET"
        " requests = requests + excluded.requests, input_tokens = input_tokens + excluded.input_tokens,"
        " output_tokens = output_tokens + excluded.output_tokens",
        rows,
    )
    return conn.execute(f"DELETE FROM requests WHERE {_DELETABLE}", params).rowcount
