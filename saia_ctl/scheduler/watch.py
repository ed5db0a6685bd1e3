"""Watching for readiness while requests wait: squeue about every second, ``GET /`` every 0.25 s.

A request for a scaled-to-zero service waits (in flight, no job yet) while its
job queues and loads. Probing only once per tick would add up to a whole tick
interval to that wait; instead the tick keeps watching those jobs within its
time bound and commits ``ready`` the moment ``GET /`` answers, so the request
path (which polls the jobs table) sees it at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, text

from ..db import read_session, write_session
from ..models import JobState
from ..slurm import SlurmClient, SlurmError
from .probes import Prober, ProbeTarget
from .views import Action, ActionKind

QUEUE_EVERY = 1.0
PROBE_EVERY = 0.25
WATCH_PROBE_TIMEOUT = 1.0

_QUEUED = (JobState.SUBMITTING.value, JobState.PENDING.value)  # not running yet
_WATCHED = text(
    """
    SELECT j.id, j.slurm_job_id, j.state, j.node, j.port, j.service_id FROM jobs j
    WHERE j.ended_at IS NULL AND j.state IN (:submitting, :pending, :starting)
      AND j.service_id IN (SELECT r.service_id FROM requests r WHERE r.ended_at IS NULL AND r.job_id IS NULL)
      AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.service_id = j.service_id AND k.ended_at IS NULL
                      AND k.state = :ready)
    """
)
_STATES = {
    "submitting": JobState.SUBMITTING.value,
    "pending": JobState.PENDING.value,
    "starting": JobState.STARTING.value,
    "ready": JobState.READY.value,
}


def watch_waiting(
    engine: Engine,
    slurm: SlurmClient,
    prefix: str,
    clock: Callable[[], float],
    prober: Prober,
    deadline: float,
    probe_timeout: float,
    renew: Callable[[], None],
    sleep: Callable[[float], None] = time.sleep,
) -> list[Action]:
    """Follow jobs that requests wait for until they are ready, gone, or the deadline; returns actions."""
    actions: list[Action] = []
    last_queue = -1e9
    last_renew = time.monotonic()
    timeout = min(probe_timeout, WATCH_PROBE_TIMEOUT)
    while time.monotonic() + timeout < deadline:
        with read_session(engine) as s:
            rows = s.execute(_WATCHED, _STATES).all()
        if not rows:
            break
        started = time.monotonic()
        nodes: dict[int, str] = {r.id: r.node for r in rows if r.state == JobState.STARTING.value and r.node}
        if started - last_queue >= QUEUE_EVERY:
            last_queue = started
            try:
                queue = {j.job_id: j for j in slurm.queue(prefix)}
            except SlurmError:
                break  # the next tick records it
            now = clock()
            begun = []
            for r in rows:
                sj = queue.get(r.slurm_job_id) if r.slurm_job_id is not None else None
                if sj is None or sj.is_finished:
                    continue
                if sj.is_running and sj.node and r.state in _QUEUED:
                    begun.append(
                        {
                            "id": r.id,
                            "node": sj.node,
                            "start": sj.started_at(now),
                            "limit": sj.time_limit,
                        }
                    )
                    nodes[r.id] = sj.node
            if begun:
                with write_session(engine) as s:
                    for b in begun:
                        s.execute(
                            text(
                                "UPDATE jobs SET state = :starting, node = :node, started_at = :start, "
                                "walltime_limit = :limit WHERE id = :id AND ended_at IS NULL "
                                "AND state IN (:submitting, :pending)"
                            ),
                            {**b, **_STATES},
                        )
        port_of = {r.id: int(r.port) for r in rows}
        service_of = {r.id: r.service_id for r in rows}
        targets = [ProbeTarget(jid, node, port_of[jid], "/") for jid, node in nodes.items()]
        results = prober(targets, timeout)
        ready = [jid for jid, res in results.items() if res.ok]
        if ready:
            now = clock()
            with write_session(engine) as s:
                for jid in ready:
                    n = (
                        s.connection()
                        .execute(
                            text(
                                "UPDATE jobs SET state = :ready, ready_at = :now, health_failures = 0 "
                                "WHERE id = :id AND ended_at IS NULL AND state = :starting"
                            ),
                            {"now": now, "id": jid, **_STATES},
                        )
                        .rowcount
                    )
                    if n:
                        actions.append(
                            Action(
                                ActionKind.READY,
                                service=service_of[jid],
                                job=jid,
                                probe=results[jid].detail,
                                watch=True,
                            )
                        )
        if time.monotonic() - last_renew > 10:
            renew()
            last_renew = time.monotonic()
        pause = PROBE_EVERY - (time.monotonic() - started)
        if pause > 0:
            sleep(pause)
    return actions
