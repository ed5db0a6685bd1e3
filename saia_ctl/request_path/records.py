"""How the request path writes the rows of requests: choose the jobs and insert
the start row in one write transaction, close it in another. ``Records`` does
each in a transaction of its own (one request per process); the tunnel's
``Batcher`` subclasses it to group the rows of concurrent requests."""

from __future__ import annotations

import _socket
import os

from .. import rawdb
from . import store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..settings import Settings
    from .wire import ParsedRequest


def choose(jobs: list[rawdb.Row]) -> list[rawdb.Row]:
    """Candidates in order of preference: the least in flight first, ties at random."""
    if len(jobs) < 2:
        return jobs
    least = min(j["in_flight"] for j in jobs)
    best = [j for j in jobs if j["in_flight"] == least]
    first = best[int.from_bytes(os.urandom(4), "little") % len(best)]
    return [first] + [j for j in jobs if j is not first]


def start_row(
    conn: rawdb.Connection, req: ParsedRequest, bytes_in: int, now: float
) -> tuple[int, str, list[rawdb.Row], float | None]:
    """Inside the caller's write transaction: choose the jobs and insert the request's row.

    Returns (row id, inference id recorded, candidate jobs, previous demand time
    -- set only when no job is ready).
    """
    jobs = choose(store.ready_jobs(conn, req.service_id))
    row, recorded = store.record_start(
        conn,
        inference_id=req.inference_id,
        user_id=req.user_id,
        service_id=req.service_id,
        job_id=jobs[0]["id"] if jobs else None,
        method=req.method,
        path=req.path,
        started_at=now,
        handler_host=_socket.gethostname(),
        handler_pid=os.getpid(),
        bytes_in=bytes_in,
    )
    previous_demand = store.record_demand(conn, req.service_id, now) if not jobs else None
    return row, recorded, jobs, previous_demand


class Records:
    """How request rows are written: here each in a transaction of its own (one
    request per process); the tunnel groups those of concurrent requests."""

    def open(self, settings: Settings) -> rawdb.Connection | None:
        """The request's own connection (DatabaseUnavailable if there is none); None:
        every read and write goes through ``hold_time``/``start``/``end``."""
        return rawdb.connect(
            settings.db_path, journal_mode=settings.journal_mode, busy_timeout=settings.busy_timeout
        )

    def hold_time(self, conn: rawdb.Connection | None, service_id: str) -> float | None:
        """The service's hold time; None: unknown or disabled (``store.service_hold_time``)."""
        assert conn is not None
        return store.service_hold_time(conn, service_id)

    def start(
        self, conn: rawdb.Connection | None, req: ParsedRequest, bytes_in: int, now: float
    ) -> tuple[int, str, list[rawdb.Row], float | None]:
        """``start_row`` in a write transaction; rawdb.Error if it cannot be written."""
        assert conn is not None
        with rawdb.immediate(conn):
            return start_row(conn, req, bytes_in, now)

    def end(self, conn: rawdb.Connection | None, row: int, record: dict[str, Any]) -> None:
        """Close the row; rawdb.Error if it cannot be written."""
        assert conn is not None
        with rawdb.immediate(conn):
            store.record_end(conn, row, **record)  # type: ignore[arg-type]


RECORDS = Records()
