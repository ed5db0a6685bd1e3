"""Request and job rows for the accounting tests: a few services, jobs as the
scheduler writes them, requests through the request path's own statements,
and a random month of them whose jobs and requests cross the month edges."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saia_ctl.cli.main import app
from saia_ctl.request_path.store import FINISH_REQUEST_SQL, INSERT_REQUEST_SQL
from tests.support.fixtures import service_config

__all__ = ["JUNE", "MAY", "NOW", "Rows", "cli", "random_month", "rows"]

MAY = datetime(2026, 5, 1, tzinfo=UTC).timestamp()
JUNE = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
NOW = datetime(2026, 7, 15, tzinfo=UTC).timestamp()


class Rows:
    """Writes jobs (as the scheduler does) and requests (through the request path's own statements)."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.n = 0

    def job(
        self,
        service: str,
        started: float | None,
        ended: float | None = None,
        *,
        ready: float | None = None,
        draining: float | None = None,
        submitted: float | None = None,
        gpus: int = 1,
        state: str | None = None,
        walltime: int | None = None,
        end_reason: str | None = None,
        slurm_id: int | None = None,
    ) -> int:
        self.n += 1
        st = state or ("ended" if ended is not None else ("ready" if ready is not None else "starting"))
        cur = self.conn.execute(
            "INSERT INTO jobs (name, service_id, slurm_job_id, state, node, port, secret, submitted_at, started_at,"
            " ready_at, draining_at, ended_at, walltime_limit, gpus, end_reason, health_failures)"
            " VALUES (?, ?, ?, ?, 'node1', ?, 's', ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (
                f"t_{self.n}_{service}",
                service,
                slurm_id if slurm_id is not None else 1000 + self.n,
                st,
                30000 + self.n,
                submitted if submitted is not None else (started or 0) - 10,
                started,
                ready,
                draining,
                ended,
                walltime,
                gpus,
                end_reason,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def slurm_record(
        self, job: int, start: float | None, end: float, state: str = "COMPLETED", gpus: int | None = None
    ) -> None:
        """Slurm's record of an ended job, as the tick fills it in from sacct (GPUs: the row's)."""
        self.conn.execute(
            "UPDATE jobs SET slurm_state = ?, slurm_exit_code = '0:0', slurm_started_at = ?, slurm_ended_at = ?,"
            " slurm_gpus = COALESCE(?, gpus) WHERE id = ?",
            (state, start, end, gpus, job),
        )

    def request(
        self,
        user: str,
        service: str,
        job: int | None,
        start: float,
        end: float | None = None,
        *,
        status: int = 200,
        outcome: str = "ok",
        tin: int | None = 10,
        tout: int | None = 20,
        ttfb: float | None = 0.1,
        error: str | None = None,
    ) -> int:
        self.n += 1
        cur = self.conn.execute(
            INSERT_REQUEST_SQL,
            {
                "inference_id": f"inf-{self.n}",
                "user_id": user,
                "service_id": service,
                "job_id": job,
                "method": "POST",
                "path": "/v1/chat/completions",
                "started_at": start,
                "bytes_in": 100,
                "handler_host": "login1",
                "handler_pid": 4242,
            },
        )
        rid = cur.lastrowid
        if end is not None:
            self.conn.execute(
                FINISH_REQUEST_SQL,
                {
                    "id": rid,
                    "job_id": job,
                    "first_byte_at": None if ttfb is None else start + ttfb,
                    "ended_at": end,
                    "status": status,
                    "outcome": outcome,
                    "bytes_in": 100,
                    "bytes_out": 200,
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "error": error,
                },
            )
        assert rid is not None
        return rid


@pytest.fixture
def rows(home: Path, import_services: Any, tmp_path: Path) -> Rows:
    """Services svc-a, svc-b, svc-c in the test home, and a writer of their rows."""
    batch = tmp_path / "job.sbatch"
    batch.write_text("#!/bin/sh\n")
    import_services(*(service_config(s, sbatch=str(batch)) for s in ("svc-a", "svc-b", "svc-c")))
    return Rows(home / "saia.db")


def cli(*args: str) -> Any:
    """Run ``saia-ctl ARGS`` in this process; the CliRunner result."""
    result = CliRunner().invoke(app, list(args))
    return result


def random_month(rows: Rows, seed: int, n_requests: int = 400) -> list[tuple[Any, ...]]:
    """Jobs and overlapping requests of several users; some cross the month edges."""
    rng = random.Random(seed)
    jobs = []
    for svc in ("svc-a", "svc-b"):
        for _k in range(3):
            start = MAY - 3 * 86400 + rng.uniform(0, 40) * 86400
            end = start + rng.uniform(0.1, 5) * 86400
            ready = start + rng.uniform(60, 900)
            jobs.append(
                (
                    rows.job(svc, start, min(end, NOW), ready=ready, gpus=rng.choice([1, 2, 4])),
                    svc,
                    start,
                    end,
                )
            )
    users = [f"user{i}" for i in range(12)]
    for _ in range(n_requests):
        jid, svc, js, je = rng.choice(jobs)
        start = rng.uniform(js, je)
        end = start + rng.expovariate(1 / 300)
        outcome, status = rng.choice(
            [("ok", 200)] * 6 + [("error", 404), ("error", 503), ("error", 200), ("aborted", 200)]
        )
        rows.request(
            rng.choice(users), svc, jid, start, end, outcome=outcome, status=status, tin=rng.randint(0, 900)
        )
    # requests that never reached a job, and one still in flight
    rows.request(
        "user1", "svc-c", None, MAY + 5000, MAY + 5001, status=503, outcome="error", tin=None, tout=None
    )
    rows.request("user2", "svc-a", jobs[0][0], MAY + 7000, None)
    return jobs


LONG_USER = "firstname.middlename.lastname@department.institute.example.org"


def busy_month(rows: Rows) -> None:
    """random_month plus what a real month has: long user ids, a month-long 8-GPU job and
    token counts in the hundreds of millions."""
    random_month(rows, 5, n_requests=300)
    job = rows.job("svc-a", MAY - 86400, JUNE + 86400, ready=MAY - 86000, gpus=8)
    for i, user in enumerate((LONG_USER, "a" * 40 + "@example.org", "svc-account-batch-0001")):
        for k in range(5):
            start = MAY + 86400 * (3 + 5 * k) + 600 * i
            rows.request(user, "svc-a", job, start, start + 1800.5 + k, tin=123_456_789, tout=98_765_432)
