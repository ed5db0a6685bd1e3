"""One scheduler tick: lease -> read (squeue, probes; no lock) -> plan -> one short write of
intents -> sbatch/scancel outside -> one short write of outcomes -> watch waiting jobs -> log.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlalchemy import Engine

from ..settings import Settings
from ..slurm import SlurmClient, SlurmError, SlurmJob
from .apply import call_slurm, record_intents, record_outcomes
from .catalogue import learn_context_lengths, record_queue_facts
from .lease import begin_tick, new_holder, release_lease, renew_lease
from .maintenance import record_maintenance
from .names import name_prefix
from .observe import probe_targets, read_slurm, read_snapshot
from .plan import plan_tick
from .probes import Prober, probe_all
from .records import fill_late, late_rows, read_records
from .ticklog import finish_tick
from .views import Action, EndReason, JobView, Observation, Plan, ServiceView
from .watch import watch_waiting

# Time kept back from the tick's bound for the final writes.
FINAL_WRITES = 2.0


@dataclass
class TickResult:
    """What one call of ``run_tick`` did."""

    status: str  # "ran", "busy" (another tick holds the lease), "not-due"
    summary: str
    error: str | None = None  # one line
    tick_id: int | None = None
    duration: float = 0.0
    actions: list[Action] = field(default_factory=list)
    traceback: str | None = None  # of an unexpected exception (a bug), also in the tick's log row

    @property
    def ran(self) -> bool:
        return self.status == "ran"

    @property
    def exit_code(self) -> int:
        """0 on success, also when not due or another tick runs; 1 if the tick failed."""
        return 1 if self.error else 0

    def text(self) -> str:
        lines = [self.summary] if self.summary else []
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)


def make_slurm(settings: Settings) -> SlurmClient:
    """The real Slurm client (imported lazily: ``RealSlurm`` lives in ``saia_ctl.slurm``)."""
    from .. import slurm as slurm_module

    real = getattr(slurm_module, "RealSlurm", None)
    if real is None:
        raise RuntimeError("this installation has no RealSlurm client (saia_ctl.slurm.RealSlurm)")
    client: SlurmClient = real(settings)
    return client


def _describe(plan: Plan, dead: int, outcome_actions: list[Action]) -> list[str]:
    lines = list(plan.summary)
    orphans = [a for a in plan.actions if a.reason == EndReason.ORPHAN]
    if orphans:
        lines.append(
            f"cancelling {len(orphans)} Slurm job(s) of ours with no live row: "
            + ", ".join(f"{a.slurm_job_id} ({a.name})" for a in orphans)
        )
    if dead:
        lines.append(f"closed {dead} request(s) whose handler is gone")
    for a in outcome_actions:
        if a.error is not None:
            what = f"{a.service or ''} job {a.job if a.job is not None else a.slurm_job_id}".strip()
            lines.append(f"{what}: {a.kind} failed: {a.error}")
    return lines


def _fold_ledger(engine: Engine, settings: Settings, now: float) -> list[str]:
    """Fold at most one due piece (a closed day, or the open day up to a whole hour) into the
    accounting ledger (its own short transactions).

    Accounting never stops scheduling: a failure is a line in the tick log, and the
    next tick tries again.
    """
    from ..accounting.ledger import fold_engine
    from ..accounting.zones import iso_utc

    try:
        result = fold_engine(engine, settings.accounting_tz, now, max_pieces=1)
    except Exception as e:
        return _failure_lines("accounting ledger not folded", e)
    lines = [f"accounting: folded {p.day} into the ledger, up to {iso_utc(p.end)}" for p in result.pieces]
    return lines + _refresh_gpu_figures(engine, settings, now)


def _failure_lines(what: str, e: Exception) -> list[str]:
    """A failure of the tick's accounting work: one line, and for a bug its traceback too."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..errors import SaiaError
    from ..rawdb import Error as SQLiteError

    line = f"{what}: {e.__class__.__name__}: {e}"
    if isinstance(e, SQLiteError | SQLAlchemyError | SaiaError | OSError):
        return [line]  # the database or the disk: the next tick tries again
    # A bug: the tick log keeps its traceback (`saia-ctl ticks show ID`).
    return [line, *(f"  {t}" for t in traceback.format_exc().rstrip().splitlines())]


def _refresh_gpu_figures(engine: Engine, settings: Settings, now: float) -> list[str]:
    """The GPU-hours figures that GPU-hours limits are checked against (saia_ctl.limits)."""
    from ..db import read_session, write_session
    from ..limits import gpu_figures, has_gpu_limits, write_gpu_figures

    try:
        with read_session(engine) as s:  # the month's figures without the write lock
            if not has_gpu_limits(s):
                return []
            month, figures = gpu_figures(s, settings.accounting_tz, now)
        with write_session(engine) as s:
            write_gpu_figures(s, month, figures, now)
    except Exception as e:
        return _failure_lines("GPU-hours figures of the limits not refreshed", e)
    return []


def _catalogue(
    engine: Engine,
    settings: Settings,
    slurm: SlurmClient,
    jobs: list[JobView],
    queue: list[SlurmJob],
    ask_backends: bool,
) -> list[str]:
    """Pending reasons, expected starts and (when the tick talks to real backends) context
    lengths for `status`; a failure never stops the tick."""
    try:
        record_queue_facts(engine, slurm, jobs, queue)
        if ask_backends:
            learn_context_lengths(engine, settings.probe_timeout)
    except Exception as e:
        return [f"catalogue not updated: {e.__class__.__name__}: {e}"]
    return []


def _maintenance(
    engine: Engine,
    slurm: SlurmClient,
    services: list[ServiceView],
    jobs: list[JobView],
    queue: list[SlurmJob],
    now: float,
    lines: list[str],
) -> tuple[list[ServiceView], dict[int, tuple[str, ...]]]:
    """The services with the maintenance window each is down for now (Slurm MAINT reservations),
    and the ready jobs to replace before a window (``move_off``); unreadable: as last stored,
    none replaced. A failure never stops the tick."""
    try:
        found = record_maintenance(engine, slurm, services, jobs, queue, now)
    except Exception as e:
        lines.append(f"maintenance windows not read: {e.__class__.__name__}: {e}")
        return services, {}
    if found is None:
        return services, {}
    down = found.down
    for sid, (end, name) in sorted(down.items()):
        lines.append(
            f"{sid}: down for maintenance ({name}) until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(end))}"
        )
    return [
        replace(s, maintenance_until=down[s.id][0] if s.id in down else None, hold_until=found.hold.get(s.id))
        for s in services
    ], found.move


def run_tick(
    engine: Engine,
    settings: Settings,
    slurm: SlurmClient,
    clock: Callable[[], float] = time.time,
    if_due: bool = False,
    *,
    prober: Prober | None = None,
    watch: bool = True,
    hostname: str | None = None,
) -> TickResult:
    """Run one tick if the lease is free (and, with ``if_due``, the last tick is old enough)."""
    probe = prober or probe_all
    host = hostname or socket.gethostname()
    t0 = time.monotonic()
    deadline = t0 + settings.tick_timeout
    holder = new_holder()
    prefix = name_prefix(settings.job_prefix)
    begin = begin_tick(engine, holder, clock(), settings.lease_ttl, if_due, settings.tick_interval)
    if begin.status != "run" or begin.tick_id is None:
        return TickResult(begin.status, begin.message)
    tick_id = begin.tick_id
    lines: list[str] = []
    actions: list[Action] = []
    error: str | None = None
    trace: str | None = None
    try:
        now = clock()
        snap = read_snapshot(engine, now, host)
        try:
            queue, info = read_slurm(slurm, prefix, snap.jobs)
        except SlurmError as e:
            # A failed read is never "no jobs": no job changes state this tick.
            error = f"Slurm queue unreadable, no job changed: {e}"
            if snap.dead_requests:
                record_intents(engine, Plan(), settings, now, snap.dead_requests)
                lines.append(f"closed {len(snap.dead_requests)} request(s) whose handler is gone")
        else:
            late = late_rows(engine, now)
            records, records_note = read_records(slurm, snap.jobs, queue, late)
            services, move = _maintenance(engine, slurm, snap.services, snap.jobs, queue, now, lines)
            probes = probe(probe_targets(snap.jobs, queue), settings.probe_timeout)
            now = clock()
            obs = Observation(now, services, snap.jobs, queue, info, probes, records, move)
            plan = plan_tick(obs, prefix)
            new_jobs, port_errors = record_intents(engine, plan, settings, now, snap.dead_requests)
            outcomes = call_slurm(engine, slurm, settings, plan.cancels, new_jobs, deadline - FINAL_WRITES)
            done = record_outcomes(engine, outcomes, clock())
            fill_late(engine, late, records)
            lines += _catalogue(engine, settings, slurm, snap.jobs, queue, prober is None)
            actions = plan.actions + done
            lines = _describe(plan, len(snap.dead_requests), done) + port_errors + lines
            if records_note:
                lines.append(records_note)
            if port_errors:
                error = "; ".join(port_errors)
            if watch:

                def renew() -> None:
                    renew_lease(engine, holder, clock(), settings.lease_ttl)

                actions += watch_waiting(
                    engine,
                    slurm,
                    prefix,
                    clock,
                    probe,
                    deadline - FINAL_WRITES,
                    settings.probe_timeout,
                    renew,
                )
                lines += [f"{a.service}: job {a.job} ready ({a.probe})" for a in actions if a.watch]
        lines += _fold_ledger(engine, settings, clock())
    except Exception as e:
        # A bug, or a failure nobody expected: one line for the user, the traceback in the log row.
        error = f"{e.__class__.__name__}: {e}"
        trace = traceback.format_exc()
    finally:
        duration = time.monotonic() - t0
        summary = "\n".join(lines) if lines else "no services"
        try:
            finish_tick(engine, tick_id, duration, summary, actions, error, trace)
        finally:
            release_lease(engine, holder)
    return TickResult("ran", summary, error, tick_id, duration, actions, trace)
