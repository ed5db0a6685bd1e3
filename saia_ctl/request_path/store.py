"""The SQL of the request path, run on a ``saia_ctl.rawdb`` connection (no
SQLAlchemy: it costs ~250 ms per process); rows are read by column name.
Column names repeat ``saia_ctl.models``; ``tests/test_schema_agreement.py``
proves the two agree.

Every statement uses named parameters, so bulk users (the accounting bench)
can ``executemany`` them. ``record_start`` / ``record_end`` run inside the
caller's transaction (``rawdb.immediate``) and never commit themselves.
"""

from __future__ import annotations

import time

from .. import rawdb
from ..walltime import REQUEST_PATH_STOP

TYPE_CHECKING = False  # typing costs ~5 ms per request; mypy still sees these
if TYPE_CHECKING:
    from typing import Any

# Ready jobs of a service with their in-flight requests (uses the partial
# index ix_requests_in_flight); the least loaded first. A job whose walltime
# ends within :margin seconds (walltime.REQUEST_PATH_STOP) is left out even
# if no tick has drained it yet (the scheduler drains it earlier; this covers
# the time between ticks): Slurm would kill it mid-answer.
READY_JOBS_SQL = """
SELECT j.id, j.node, j.port, j.secret,
       (SELECT count(*) FROM requests r
         WHERE r.service_id = j.service_id AND r.job_id = j.id AND r.ended_at IS NULL) AS in_flight
  FROM jobs j
 WHERE j.service_id = :service_id AND j.state = 'ready' AND j.ended_at IS NULL
   AND j.node IS NOT NULL
   AND (j.walltime_limit IS NULL OR j.started_at IS NULL
        OR j.started_at + j.walltime_limit > :now + :margin)
 ORDER BY in_flight
"""
# Live jobs per state, to say why there is no backend.
LIVE_STATES_SQL = """
SELECT state, count(*) AS n, min(submitted_at) AS first_submitted FROM jobs
 WHERE service_id = :service_id AND ended_at IS NULL GROUP BY state
"""

# Past submit -> ready times of the service, newest first (Retry-After estimate).
START_TIMES_SQL = """
SELECT ready_at - submitted_at AS took FROM jobs
 WHERE service_id = :service_id AND ready_at IS NOT NULL AND ready_at >= submitted_at
 ORDER BY ready_at DESC LIMIT 20
"""

INSERT_REQUEST_SQL = """
INSERT INTO requests (inference_id, user_id, service_id, job_id, method, path, started_at,
                      bytes_in, bytes_out, handler_host, handler_pid)
VALUES (:inference_id, :user_id, :service_id, :job_id, :method, :path, :started_at,
        :bytes_in, 0, :handler_host, :handler_pid)
"""

# Rows already recorded under this inference id (the original or suffixed).
DUPLICATE_IDS_SQL = """
SELECT count(*) AS n FROM requests WHERE inference_id = :inference_id OR inference_id GLOB :pattern
"""

FINISH_REQUEST_SQL = """
UPDATE requests
   SET job_id = :job_id, first_byte_at = :first_byte_at, ended_at = :ended_at, status = :status,
       outcome = :outcome, bytes_in = :bytes_in, bytes_out = :bytes_out,
       input_tokens = :input_tokens, output_tokens = :output_tokens, error = :error
 WHERE id = :id
"""

PREVIOUS_DEMAND_SQL = "SELECT demand_at FROM service_states WHERE service_id = :service_id"
DEMAND_SQL = "UPDATE service_states SET demand_at = :now WHERE service_id = :service_id"
DEMAND_INSERT_SQL = """
INSERT INTO service_states (service_id, load_avg, target, demand_at) VALUES (:service_id, 0.0, 0, :now)
"""

# Whether any limit is configured: without one, admission costs this one look.
ANY_LIMIT_SQL = "SELECT 1 FROM limits LIMIT 1"

LAST_TICK_SQL = "SELECT max(started_at) AS last FROM ticks"

# For `status`: enabled services with their live jobs per state and last target.
STATUS_SERVICES_SQL = """
SELECT s.id, s.name, s.owned_by, s.input, s.output, s.minimum_number_instances,
       s.maximum_number_instances, coalesce(ss.target, 0) AS target,
       s.inferences_per_instance, s.config_json, ss.context_length, s.admin_state,
       ss.maintenance_until, ss.maintenance_name
  FROM services s LEFT JOIN service_states ss ON ss.service_id = s.id
 WHERE s.enabled = 1 ORDER BY s.id
"""
STATUS_JOBS_SQL = (
    "SELECT service_id, state, count(*) AS n FROM jobs WHERE ended_at IS NULL GROUP BY service_id, state"
)

# Live jobs not ready yet: what the catalogue tells about a queued or loading service.
STATUS_WAITING_SQL = (
    "SELECT service_id, state, slurm_reason, slurm_start, submitted_at, started_at FROM jobs"
    " WHERE ended_at IS NULL AND state IN ('submitting', 'pending', 'starting') ORDER BY id"
)
STATUS_IN_FLIGHT_SQL = (
    "SELECT service_id, count(*) AS n FROM requests WHERE ended_at IS NULL GROUP BY service_id"
)
# A service's recent jobs that became ready: submit-to-ready and start-to-ready.
STATUS_HISTORY_SQL = (
    "SELECT ready_at - submitted_at AS to_ready, ready_at - started_at AS to_load FROM jobs"
    " WHERE service_id = :service AND ready_at IS NOT NULL ORDER BY id DESC LIMIT 10"
)

# The suffix marks a re-used inference id; '~' is outside the id charset, so a
# suffixed id can never be a client's.
DUPLICATE_SEPARATOR = "~"


# An enabled service with the state its operator set (active, draining, disabled).
SERVICE_GATE_SQL = (
    "SELECT request_hold_time, admin_state FROM services WHERE id = :service_id AND enabled = 1"
)


def service_gate(conn: rawdb.Connection, service_id: str) -> tuple[float, str] | None:
    """(request hold time, operator's state) of an enabled service; None if unknown or removed."""
    row = conn.execute(SERVICE_GATE_SQL, {"service_id": service_id}).fetchone()
    return None if row is None else (float(row["request_hold_time"]), str(row["admin_state"]))


MAINTENANCE_SQL = (
    "SELECT maintenance_until, maintenance_name FROM service_states"
    " WHERE service_id = :service_id AND maintenance_until > :now"
)


def maintenance(conn: rawdb.Connection, service_id: str, now: float) -> tuple[float, str] | None:
    """(end, reservation name) of the maintenance window the service is down for now, if any."""
    row = conn.execute(MAINTENANCE_SQL, {"service_id": service_id, "now": now}).fetchone()
    return None if row is None else (float(row["maintenance_until"]), str(row["maintenance_name"] or ""))


def ready_jobs(conn: rawdb.Connection, service_id: str) -> list[rawdb.Row]:
    """Rows (id, node, port, secret, in_flight) of the service's ready jobs, least loaded first."""
    params = {"service_id": service_id, "now": time.time(), "margin": REQUEST_PATH_STOP}
    return list(conn.execute(READY_JOBS_SQL, params))


def record_start(
    conn: rawdb.Connection,
    *,
    inference_id: str,
    user_id: str,
    service_id: str,
    job_id: int | None,
    method: str,
    path: str,
    started_at: float,
    handler_host: str,
    handler_pid: int,
    bytes_in: int = 0,
) -> tuple[int, str]:
    """Insert the row of a request in flight; returns (row id, inference id recorded).

    A re-used inference id is recorded as ``ID~N`` (N = 2, 3, ...) rather than
    refused: the request is real and its tokens must be accounted; the row
    keeps its own user and service, and the suffix shows the re-use.
    """
    params: dict[str, Any] = {
        "inference_id": inference_id,
        "user_id": user_id,
        "service_id": service_id,
        "job_id": job_id,
        "method": method,
        "path": path,
        "started_at": started_at,
        "bytes_in": bytes_in,
        "handler_host": handler_host,
        "handler_pid": handler_pid,
    }
    try:
        cur = conn.execute(INSERT_REQUEST_SQL, params)
    except rawdb.IntegrityError as e:
        if "inference_id" not in str(e):
            raise
        count = conn.execute(
            DUPLICATE_IDS_SQL,
            {"inference_id": inference_id, "pattern": f"{inference_id}{DUPLICATE_SEPARATOR}*"},
        ).fetchone()["n"]
        params["inference_id"] = f"{inference_id}{DUPLICATE_SEPARATOR}{int(count) + 1}"
        cur = conn.execute(INSERT_REQUEST_SQL, params)
    assert cur.lastrowid is not None
    return cur.lastrowid, params["inference_id"]


def record_end(
    conn: rawdb.Connection,
    request_id: int,
    *,
    job_id: int | None,
    first_byte_at: float | None,
    ended_at: float,
    status: int | None,
    outcome: str,
    bytes_in: int,
    bytes_out: int,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    error: str | None = None,
) -> None:
    """Close the row of a request (one UPDATE)."""
    conn.execute(
        FINISH_REQUEST_SQL,
        {
            "id": request_id,
            "job_id": job_id,
            "first_byte_at": first_byte_at,
            "ended_at": ended_at,
            "status": status,
            "outcome": outcome,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "error": error,
        },
    )


def record_demand(conn: rawdb.Connection, service_id: str, now: float) -> float | None:
    """Set ``service_states.demand_at``; returns the previous value."""
    row = conn.execute(PREVIOUS_DEMAND_SQL, {"service_id": service_id}).fetchone()
    params = {"service_id": service_id, "now": now}
    if row is None:
        conn.execute(DEMAND_INSERT_SQL, params)
        return None
    conn.execute(DEMAND_SQL, params)
    return None if row["demand_at"] is None else float(row["demand_at"])


def any_limits(conn: rawdb.Connection) -> bool:
    """Whether admission has anything to decide (``admission.py``)."""
    return conn.execute(ANY_LIMIT_SQL).fetchone() is not None


def last_tick_at(conn: rawdb.Connection) -> float | None:
    row = conn.execute(LAST_TICK_SQL).fetchone()
    return None if row is None or row["last"] is None else float(row["last"])


def live_states(conn: rawdb.Connection, service_id: str) -> dict[str, tuple[int, float]]:
    """state -> (live jobs, earliest submission) of a service."""
    return {
        str(r["state"]): (int(r["n"]), float(r["first_submitted"]))
        for r in conn.execute(LIVE_STATES_SQL, {"service_id": service_id})
    }


def start_times(conn: rawdb.Connection, service_id: str) -> list[float]:
    return [float(r["took"]) for r in conn.execute(START_TIMES_SQL, {"service_id": service_id})]


def status_rows(conn: rawdb.Connection) -> tuple[list[rawdb.Row], list[rawdb.Row]]:
    """(services, live job counts) for the `status` command."""
    return (
        list(conn.execute(STATUS_SERVICES_SQL).fetchall()),
        list(conn.execute(STATUS_JOBS_SQL).fetchall()),
    )


def status_extra(
    conn: rawdb.Connection,
) -> tuple[list[rawdb.Row], list[rawdb.Row]]:
    """(live jobs not ready yet, in-flight requests per service) for the catalogue."""
    return (
        list(conn.execute(STATUS_WAITING_SQL).fetchall()),
        list(conn.execute(STATUS_IN_FLIGHT_SQL).fetchall()),
    )


def status_history(conn: rawdb.Connection, service_id: str) -> list[rawdb.Row]:
    """The service's last ten jobs that became ready (newest first)."""
    return list(conn.execute(STATUS_HISTORY_SQL, {"service": service_id}).fetchall())
