"""What the tick stores for the live catalogue (the `status` answer): Slurm's
reason for each pending job of ours and its expected start (``squeue --start``),
and a service's context length, asked once from a ready job's own ``/v1/models``.

One short write, only when something changed; the expected start costs one
``squeue --start`` per tick, and only while a job of ours is pending.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Engine, text

from ..db import read_session, write_session
from ..slurm import SlurmError, SlurmJob
from .views import JobView

_UPDATE = text("UPDATE jobs SET slurm_reason = :reason, slurm_start = :start WHERE id = :id")
_READ = text("SELECT id, slurm_reason, slurm_start FROM jobs WHERE ended_at IS NULL")


def parse_start_times(stdout: str) -> dict[int, float]:
    """``squeue --start -h -o %i|%S`` lines -> {job id: expected start (epoch)};
    N/A and unparsable lines are skipped (no estimate is not an error)."""
    out: dict[int, float] = {}
    for line in stdout.splitlines():
        job, _, start = line.strip().partition("|")
        if not job.isdigit():
            continue
        try:
            out[int(job)] = datetime.fromisoformat(start.strip()).astimezone().timestamp()
        except ValueError:
            continue
    return out


def start_times(slurm: object, job_ids: Sequence[int]) -> dict[int, float]:
    """Slurm's expected start of pending jobs, when the client can run squeue (else none)."""
    run: Callable[..., subprocess.CompletedProcess[str]] | None = getattr(slurm, "run", None)
    if run is None or not job_ids:
        return {}
    try:
        proc = run("squeue", "--start", "-h", "-o", "%i|%S", "-j", ",".join(str(j) for j in job_ids))
    except SlurmError:
        return {}
    return parse_start_times(proc.stdout) if proc.returncode == 0 else {}


def queue_facts(
    jobs: Sequence[JobView], queue: Sequence[SlurmJob], starts: dict[int, float]
) -> dict[int, tuple[str | None, float | None]]:
    """{job row id: (pending reason, expected start)} for our live jobs; (None, None) once running."""
    by_id = {j.job_id: j for j in queue}
    facts: dict[int, tuple[str | None, float | None]] = {}
    for job in jobs:
        sj = by_id.get(job.slurm_job_id) if job.slurm_job_id is not None else None
        if sj is None:
            continue
        if sj.is_pending:
            facts[job.id] = (sj.reason, starts.get(sj.job_id))
        else:
            facts[job.id] = (None, None)
    return facts


def record_queue_facts(
    engine: Engine, slurm: object, jobs: Sequence[JobView], queue: Sequence[SlurmJob]
) -> int:
    """Store the pending reasons and expected starts that changed; the number of rows written."""
    pending = [j.job_id for j in queue if j.is_pending and any(v.slurm_job_id == j.job_id for v in jobs)]
    facts = queue_facts(jobs, queue, start_times(slurm, pending))
    if not facts:
        return 0
    with read_session(engine) as s:  # the write lock only when something changed
        stored = {int(r[0]): (r[1], r[2]) for r in s.execute(_READ)}
    changed = [
        {"id": jid, "reason": reason, "start": start}
        for jid, (reason, start) in facts.items()
        if jid in stored and stored[jid] != (reason, start)
    ]
    if changed:
        with write_session(engine) as s:
            s.execute(_UPDATE, changed)
    return len(changed)


# Ready jobs of services whose context length is not known yet: one per service.
_UNLEARNED = text(
    """
    SELECT s.id AS service_id, s.config_json, min(j.id) AS job_id
    FROM jobs j JOIN services s ON s.id = j.service_id
         LEFT JOIN service_states ss ON ss.service_id = s.id
    WHERE j.ended_at IS NULL AND j.state = 'ready' AND ss.context_length IS NULL
    GROUP BY s.id
    """
)
_JOB = text("SELECT node, port, secret FROM jobs WHERE id = :id")
_LEARNED = text(
    "INSERT INTO service_states (service_id, load_avg, target, context_length) VALUES (:sid, 0, 0, :n)"
    " ON CONFLICT (service_id) DO UPDATE SET context_length = excluded.context_length"
)
# Keys under which backends tell their context length in /v1/models (vLLM: max_model_len).
CONTEXT_KEYS = ("max_model_len", "context_length", "max_context_length", "context_window")


def context_from_models(body: bytes) -> int:
    """The context length a backend's ``/v1/models`` answer tells (its first model), 0 if none."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return 0
    models = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        return 0
    for model in models:
        if not isinstance(model, dict):
            continue
        for key in CONTEXT_KEYS:
            value = model.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 0


def fetch_models(host: str, port: int, secret: str, timeout: float) -> bytes | None:
    """``GET /v1/models`` of a backend with its bearer token; None when it does not answer 200."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {secret}"})
        resp = conn.getresponse()
        body = resp.read(1 << 20)
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def learn_context_lengths(
    engine: Engine, timeout: float, fetch: Callable[[str, int, str, float], bytes | None] = fetch_models
) -> dict[str, int]:
    """Ask one ready job of each service whose context length is unknown (and not in its
    config); store what it tells, 0 when it tells none (asked once, not every tick)."""
    with read_session(engine) as s:
        rows = [dict(r._mapping) for r in s.execute(_UNLEARNED)]
        todo = []
        for r in rows:
            try:
                config = json.loads(r["config_json"] or "{}")
            except ValueError:
                config = {}
            if isinstance(config, dict) and config.get("contextLength"):
                continue
            job = s.execute(_JOB, {"id": r["job_id"]}).one()
            todo.append((str(r["service_id"]), str(job.node or ""), int(job.port), str(job.secret)))
    learned: dict[str, int] = {}
    for sid, node, port, secret in todo:
        if not node:
            continue
        body = fetch(node, port, secret, timeout)
        if body is None:
            continue  # not answering now: ask again next tick
        learned[sid] = context_from_models(body)
    if learned:
        with write_session(engine) as s:
            s.execute(_LEARNED, [{"sid": k, "n": v} for k, v in learned.items()])
    return learned
