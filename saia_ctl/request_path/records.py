"""How the request path writes the rows of requests: decide on the limits, choose
the jobs and insert the start row in one write transaction, close it (and count
its tokens against the limits) in another. ``Records`` does each in a
transaction of its own (one request per process); the tunnel's ``Batcher``
subclasses it to group the rows of concurrent requests."""

from __future__ import annotations

import _socket
import os

from .. import rawdb
from . import store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..settings import Settings
    from .admission import Decision
    from .wire import ParsedRequest


def choose(jobs: list[rawdb.Row]) -> list[rawdb.Row]:
    """Candidates in order of preference: the least in flight first, ties at random."""
    if len(jobs) < 2:
        return jobs
    least = min(j["in_flight"] for j in jobs)
    best = [j for j in jobs if j["in_flight"] == least]
    first = best[int.from_bytes(os.urandom(4), "little") % len(best)]
    return [first] + [j for j in jobs if j is not first]


class Start:
    """What recording a request's start gave: its row and candidate jobs, or the
    refusal of a limit (already recorded: status 429 or 503, nothing consumed)."""

    __slots__ = ("admission", "jobs", "previous_demand", "recorded", "refusal", "row")

    def __init__(self) -> None:
        self.row: int | None = None
        self.recorded = ""  # the inference id as recorded
        self.jobs: list[rawdb.Row] = []
        self.previous_demand: float | None = None  # set only when no job is ready
        self.admission: Decision | None = None  # None: no limit applies anywhere
        self.refusal: bytes | None = None  # the whole answer of a refused request


def start_row(conn: rawdb.Connection, req: ParsedRequest, bytes_in: int, now: float, tz: str) -> Start:
    """Inside the caller's write transaction: the limits' decision (``admission.py``),
    then the jobs chosen and the request's row inserted -- one transaction, so that
    concurrent requests on any number of login nodes never overrun a limit."""
    start = Start()
    if store.any_limits(conn):
        from . import admission

        start.admission = d = admission.admit(conn, req.user_id, req.service_id, now, tz)
        if d.refused is not None:
            start.refusal = _refuse(conn, req, bytes_in, now, d)
            return start
    start.jobs = choose(store.ready_jobs(conn, req.service_id))
    start.row, start.recorded = store.record_start(
        conn,
        inference_id=req.inference_id,
        user_id=req.user_id,
        service_id=req.service_id,
        job_id=start.jobs[0]["id"] if start.jobs else None,
        method=req.method,
        path=req.path,
        started_at=now,
        handler_host=_socket.gethostname(),
        handler_pid=os.getpid(),
        bytes_in=bytes_in,
    )
    if not start.jobs:
        start.previous_demand = store.record_demand(conn, req.service_id, now)
    return start


def _refuse(conn: rawdb.Connection, req: ParsedRequest, bytes_in: int, now: float, d: Decision) -> bytes:
    """Record a refused request whole (status 429, or 503 if a figure is missing) and
    return its answer: an OpenAI-style error naming the limit, with the rate-limit headers."""
    from .wire import error_response

    assert d.refused is not None
    message = d.message()
    extra: dict[str, object] = {
        "limit": d.refused.kind,
        "subject": d.refused.subject,
        "retry_after": d.retry_after,
    }
    if d.refused.service_id:
        extra["service"] = d.refused.service_id
    data = error_response(d.status, message, tuple(d.headers), extra)
    row, _recorded = store.record_start(
        conn,
        inference_id=req.inference_id,
        user_id=req.user_id,
        service_id=req.service_id,
        job_id=None,
        method=req.method,
        path=req.path,
        started_at=now,
        handler_host=_socket.gethostname(),
        handler_pid=os.getpid(),
        bytes_in=bytes_in,
    )
    store.record_end(
        conn,
        row,
        job_id=None,
        first_byte_at=None,
        ended_at=now,
        status=d.status,
        outcome="error",
        bytes_in=bytes_in,
        bytes_out=len(data) - data.index(b"\r\n\r\n") - 4,
        error=message,
    )
    return data


def end_row(conn: rawdb.Connection, row: int, record: dict[str, Any], admission: Decision | None) -> None:
    """Inside the caller's write transaction: close the row; its tokens count against the
    token limits that applied to it."""
    store.record_end(conn, row, **record)
    tokens = (record.get("input_tokens") or 0) + (record.get("output_tokens") or 0)
    if admission is not None and tokens:
        from .admission import add_tokens

        add_tokens(conn, admission, tokens)


class Records:
    """How request rows are written: here each in a transaction of its own (one
    request per process); the tunnel groups those of concurrent requests."""

    def open(self, settings: Settings) -> rawdb.Connection | None:
        """The request's own connection (DatabaseUnavailable if there is none); None:
        every read and write goes through ``gate``/``start``/``end``."""
        return rawdb.connect(
            settings.db_path, journal_mode=settings.journal_mode, busy_timeout=settings.busy_timeout
        )

    def gate(self, conn: rawdb.Connection | None, service_id: str) -> tuple[float, str] | None:
        """(hold time, operator's state) of the service; None: unknown or removed
        (``store.service_gate``)."""
        assert conn is not None
        return store.service_gate(conn, service_id)

    def start(
        self, conn: rawdb.Connection | None, req: ParsedRequest, bytes_in: int, now: float, tz: str
    ) -> Start:
        """``start_row`` in a write transaction; rawdb.Error if it cannot be written."""
        assert conn is not None
        with rawdb.immediate(conn):
            return start_row(conn, req, bytes_in, now, tz)

    def end(
        self, conn: rawdb.Connection | None, row: int, record: dict[str, Any], admission: Decision | None
    ) -> None:
        """``end_row`` in a write transaction; rawdb.Error if it cannot be written."""
        assert conn is not None
        with rawdb.immediate(conn):
            end_row(conn, row, record, admission)


RECORDS = Records()
