"""The planner: from one observation to the decisions of one tick. Pure: no I/O, no clock.

Order of reasoning, per tick:

1. Reconcile every live row with what Slurm says (adopt by name, follow
   pending -> starting, close jobs that left the queue with their end reason).
2. Readiness and health from the probes (ready, ready timeout, unhealthy).
3. Per service (``plan_service``), in named steps: the load average and the
   wanted number of jobs (``wanted_count``, pure); rotation (``rotate``: a
   ready replacement takes over, a job near its walltime end leaves
   routing); filling (``fill``: revive drained jobs, back off or submit up
   to the wanted count, rotation replacements first) or shrinking
   (``shrink``: drain the surplus after the cool-down); retiring expiring
   jobs; cancelling drained jobs once they carry no request
   (``cancel_drained``); the summary line (``summary_line``, pure).
4. Slurm jobs of ours that no live row owns (orphans) are cancelled.

The result is a ``Plan`` of typed decisions (``views.py``): a ``JobChange``
per changed row, submits, cancels, service updates and ``Action`` log lines,
with ``EndReason`` members as reasons.

Scale-down victim choice (issue 3 says "a job that is still pending or loading
is not the one chosen to go"): ready jobs go first (fewest requests in flight,
then the soonest walltime end), drained gracefully, as long as another ready
job remains or the service goes to zero. Only when no ready job may go is a
surplus pending (then starting) job cancelled outright, newest first: nothing
is routed to it, so nothing waits for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..models import JobState
from ..sacct import SacctRecord
from ..slurm import SlurmJob
from ..walltime import CANCEL_BEFORE_END, DRAIN_BEFORE_END
from .views import (
    UNSET,
    Action,
    ActionKind,
    Cancel,
    EndReason,
    JobChange,
    JobView,
    Observation,
    Plan,
    ServiceUpdate,
    ServiceView,
    Submit,
    SubmitReason,
)

# The original's moving average: a window of 60 s sampled every 5 s (12
# intervals) with the newest sample weighted 2 (avg = (10 * avg + 2 * sample) / 12),
# i.e. weight 2/12 for the newest sample per 5 s; scaled to the real time
# between samples so that the tick interval does not change the window.
EWMA_ALPHA = 2.0 / 12.0
EWMA_STEP = 5.0
EWMA_MAX_GAP = 600.0
# A target of ceil(avg / per_instance) would never reach 0 on a decaying
# average; the original computed int((avg + per_instance - 0.001) // per_instance),
# i.e. averages within 0.001 requests above a multiple round down.
TARGET_TOLERANCE = 0.001
# A drained job is cancelled only after this many seconds out of routing, so a
# request that picked the job just before it was drained is seen in flight.
DRAIN_GRACE = 5.0
# End reasons that cancel a draining job at once, requests in flight or not.
FORCED_REASONS = frozenset({EndReason.READY_TIMEOUT, EndReason.UNHEALTHY, EndReason.SURPLUS})
# Drains for lack of load: such a job still running is taken back when load returns.
REVIVABLE_REASONS = frozenset({EndReason.SCALE_DOWN, EndReason.IDLE})
# Ends that mean the job itself failed before it ever answered (a broken script,
# a model that cannot load, a bad node image): these make the service back off.
# A job cancelled by someone, lost with the controller, or ended by us is no
# such sign.
FAILED_START_REASONS = frozenset(
    {
        EndReason.FAILED,
        EndReason.COMPLETED,
        EndReason.TIMEOUT,
        EndReason.OUT_OF_MEMORY,
        EndReason.BOOT_FAILURE,
        EndReason.DEADLINE,
        EndReason.READY_TIMEOUT,
    }
)
# Back-off after jobs that ended without ever becoming ready (a broken script, a bad
# node, a model that cannot load): wait BACKOFF_BASE * 2**(n-1) seconds, at most
# BACKOFF_MAX, before the next submission, instead of flooding the queue every tick.
BACKOFF_BASE = 10.0
BACKOFF_MAX = 600.0


def start_backoff(failed_starts: int) -> float:
    """Seconds to wait after ``failed_starts`` failed starts in a row before submitting again."""
    if failed_starts <= 0:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** min(failed_starts - 1, 16)))


_SLURM_END_REASONS = {
    "COMPLETED": EndReason.COMPLETED,
    "CANCELLED": EndReason.CANCELLED,
    "TIMEOUT": EndReason.TIMEOUT,
    "FAILED": EndReason.FAILED,
    "NODE_FAIL": EndReason.NODE_FAILURE,
    "PREEMPTED": EndReason.PREEMPTED,
    "OUT_OF_MEMORY": EndReason.OUT_OF_MEMORY,
    "BOOT_FAIL": EndReason.BOOT_FAILURE,
    "DEADLINE": EndReason.DEADLINE,
}
# Job states as plain strings: an enum member's ``.value`` costs a property
# call, and the planner compares states a few times per job.
_SUBMITTING, _PENDING, _STARTING = JobState.SUBMITTING.value, JobState.PENDING.value, JobState.STARTING.value
_READY, _DRAINING, _ENDED = JobState.READY.value, JobState.DRAINING.value, JobState.ENDED.value
_COUNTED = (_SUBMITTING, _PENDING, _STARTING, _READY)


def end_reason_from_slurm(job: SlurmJob) -> str:
    """Our end reason for a finished Slurm job (``completed``, ``timeout``, ...).

    A state with no ``EndReason`` member is kept, in lower case with dashes.
    """
    return end_reason_of_state(job.state)


def end_reason_of_state(state: str) -> str:
    """Our end reason for a Slurm state as squeue or sacct print it (``CANCELLED by 0``)."""
    base = state.split()[0].rstrip("+") if state.split() else ""
    return _SLURM_END_REASONS.get(base, base.lower().replace("_", "-") or EndReason.GONE)


def update_load_avg(avg: float, sampled_at: float | None, sample: float, now: float) -> float:
    """The exponentially weighted moving average of in-flight requests, scaled by elapsed time."""
    if sampled_at is None:
        return float(sample)
    gap = min(max(now - sampled_at, 0.0), EWMA_MAX_GAP)
    weight = 1.0 - (1.0 - EWMA_ALPHA) ** (gap / EWMA_STEP)
    return float(avg + weight * (sample - avg))


def target_from_load(avg: float, per_instance: int, minimum: int, maximum: int) -> int:
    """ceil(avg / per_instance), clamped to [minimum, maximum]."""
    raw = max(0, math.ceil((avg - TARGET_TOLERANCE) / per_instance))
    return max(minimum, min(maximum, raw))


def remaining_walltime(job: _Work, now: float) -> float | None:
    if job.walltime_limit is None or job.started_at is None:
        return None
    return job.walltime_limit - (now - job.started_at)


@dataclass(frozen=True)
class Wanted:
    """How many jobs a service wants now, and why (the first step of planning a service)."""

    count: int
    start_reason: SubmitReason  # why a job would be submitted: SCALE_UP or DEMAND
    idle_to_zero: bool  # idle for idle_timeout: going to zero at once, no cool-down
    notes: tuple[str, ...]  # the why, for the summary line


def last_busy_at(svc: ServiceView, now: float) -> float | None:
    """When the service last had a request in flight (now, if it has one)."""
    if svc.in_flight:
        return now
    return max((t for t in (svc.last_busy_at, svc.last_request_at) if t is not None), default=None)


def wanted_count(
    svc: ServiceView,
    base: int,
    counted: int,
    latest_ready: float | None,
    last_busy: float | None,
    now: float,
) -> Wanted:
    """The wanted number of jobs: the load's target ``base``, raised for waiting requests,
    demand or requests in flight, lowered to zero when idle long enough or disabled.

    ``counted`` is the number of jobs that count towards the target, ``latest_ready``
    when the newest live job became ready.
    """
    if not svc.enabled:
        return Wanted(0, SubmitReason.SCALE_UP, False, ("disabled",))
    wanted = base
    notes: list[str] = []
    idle_to_zero = False
    demand = svc.demand_at is not None and (svc.last_submit_at is None or svc.demand_at > svc.last_submit_at)
    start_reason = SubmitReason.DEMAND if svc.waiting > 0 or demand else SubmitReason.SCALE_UP
    if svc.maximum >= 1 and wanted < 1 and (svc.waiting > 0 or demand):
        wanted = 1
        notes.append(f"{svc.waiting} waiting" if svc.waiting else "on demand")
    elif svc.maximum >= 1 and wanted < 1 and svc.in_flight:
        wanted = 1  # requests are being served right now
        notes.append(f"{svc.in_flight} in flight")
    if svc.minimum == 0 and counted and svc.waiting == 0 and not demand:
        # Scale to zero: no request in flight for idle_timeout wins over the decaying
        # average; until then a running job is kept even when the average says 0.
        refs = [t for t in (last_busy, svc.demand_at, latest_ready or None) if t is not None]
        idle_since = max(refs, default=None)
        if idle_since is None or now - idle_since >= svc.idle_timeout:
            wanted = 0
            idle_to_zero = True
            notes.append(f"idle for {svc.idle_timeout}s or more: scale to zero")
        elif wanted == 0 and svc.maximum >= 1:
            wanted = 1
            notes.append(f"idle {now - idle_since:.0f}s of {svc.idle_timeout}s")
    if svc.minimum and wanted == svc.minimum and base == svc.minimum:
        notes.append(f"min {svc.minimum}")
    return Wanted(wanted, start_reason, idle_to_zero, tuple(notes))


@dataclass(frozen=True)
class RollingStep:
    """A rolling replacement after the service's batch script changed (``rolling_step``)."""

    replace: frozenset[int]  # ready jobs of the old spec that leave the count: each gets a replacement
    cancel: tuple[int, ...]  # jobs of the old spec not serving yet: drained now, submitted anew


def rolling_step(spec: str | None, jobs: Sequence[tuple[int, str, str | None, int | None]]) -> RollingStep:
    """Which jobs of an older spec to replace now: ``jobs`` are the service's live jobs as
    (id, state, spec, replaces_job_id).

    One ready job at a time: the one whose replacement is on its way, else the oldest.
    It stays ready (and routed to) until its replacement is ready, then drains
    (``rotate``), so the service never has fewer ready jobs than before. Jobs of the
    old spec that serve nothing yet (pending or loading) are drained at once and
    submitted anew. A job with no spec (submitted before fingerprints) counts as current.
    """
    if spec is None:
        return RollingStep(frozenset(), ())
    old = [j for j in jobs if j[2] is not None and j[2] != spec]
    cancel = tuple(j[0] for j in old if j[1] in (_PENDING, _STARTING))
    ready = sorted(j[0] for j in old if j[1] == _READY)
    replaced = {j[3] for j in jobs if j[3] is not None and j[1] in _COUNTED and j[0] not in cancel}
    in_flight = [i for i in ready if i in replaced]
    return RollingStep(frozenset(in_flight or ready[:1]), cancel)


def seconds_to_wait(failed_starts: int, last_failed_at: float | None, now: float) -> float:
    """Back-off left before the next submission (<= 0: none) after failed starts in a row."""
    if failed_starts and last_failed_at is not None:
        return last_failed_at + start_backoff(failed_starts) - now
    return 0.0


@dataclass(frozen=True)
class ScaleDown:
    """Whether a service with more jobs than wanted drains its surplus now."""

    lower_since: float  # since when it has had more jobs than wanted
    reason: EndReason | None  # drain now, for this reason; None: the cool-down still runs
    cooldown_left: float


def scale_down_now(svc: ServiceView, wanted: Wanted, now: float) -> ScaleDown:
    """After the cool-down, or at once when the service is disabled or idle long enough."""
    lower_since = now if svc.lower_since is None else svc.lower_since
    left = svc.scale_down_cooldown - (now - lower_since)
    if not svc.enabled:
        reason: EndReason | None = EndReason.DISABLED
    elif wanted.idle_to_zero:
        reason = EndReason.IDLE
    else:
        reason = EndReason.SCALE_DOWN if left <= 0 else None
    return ScaleDown(lower_since, reason, left)


def summary_line(svc: ServiceView, wanted: Wanted, avg: float, states: list[str], did: list[str]) -> str:
    """The service's line of the tick summary; ``states`` are those of its live jobs."""
    counts = (
        f"{states.count(_READY)} ready, {states.count(_STARTING)} starting, "
        f"{states.count(_PENDING) + states.count(_SUBMITTING)} pending"
    )
    draining = states.count(_DRAINING)
    if draining:
        counts += f", {draining} draining"
    why = f"avg {avg:.2f} in flight / {svc.inferences_per_instance} per instance"
    if wanted.notes:
        why += "; " + "; ".join(wanted.notes)
    line = f"{svc.id}: target {wanted.count} ({why}), {counts}"
    if did:
        line += ", " + ", ".join(did)
    return line


# The JobChange fields the planner also reads back while planning.
_TRACKED = frozenset(
    {"state", "node", "slurm_job_id", "started_at", "walltime_limit", "end_reason", "draining_at"}
)


@dataclass
class _Work:
    """A live job as the planner changes it during the tick."""

    view: JobView
    state: str
    node: str | None
    slurm_job_id: int | None
    started_at: float | None
    walltime_limit: int | None
    end_reason: str | None
    draining_at: float | None
    change: JobChange | None = None  # made at the first change (most rows have none)
    ended: bool = False
    doomed: bool = False  # a cancel is planned this tick

    @property
    def id(self) -> int:
        return self.view.id

    def set(self, **values: Any) -> None:
        """Change columns of the row; a name that is no JobChange field raises AttributeError."""
        change = self.change
        if change is None:
            change = self.change = JobChange()
        for key, value in values.items():
            setattr(change, key, value)
            if key in _TRACKED:
                setattr(self, key, value)


class _Planner:
    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.now = obs.now
        self.plan = Plan()
        self.work = [
            _Work(
                j,
                j.state,
                j.node,
                j.slurm_job_id,
                j.started_at,
                j.walltime_limit,
                j.end_reason,
                j.draining_at,
            )
            for j in obs.jobs
        ]
        self.services = {s.id: s for s in obs.services}
        self.rolling: set[int] = set()  # ready jobs being replaced after a change of the batch script

    def act(self, action: Action) -> None:
        self.plan.actions.append(action)

    # --- 1. reconcile with Slurm
    def end(
        self, w: _Work, reason: str, record: SacctRecord | None = None, ended_at: float | None = None
    ) -> None:
        """End the row: ``ended_at`` is Slurm's end time when squeue still showed it (never
        after this tick), else this tick's time (the first tick that saw the job gone)."""
        at = self.now if ended_at is None else min(ended_at, self.now)
        w.set(state=_ENDED, ended_at=at, end_reason=reason)
        if record is not None:
            # Slurm's own record, next to what the ticks observed (started_at, ended_at, gpus).
            w.set(
                slurm_state=record.state,
                slurm_exit_code=record.exit_code,
                slurm_started_at=record.start,
                slurm_ended_at=record.end,
                slurm_gpus=record.gpus,
                slurm_account=record.account or None,
            )
        w.ended = True
        self.act(
            Action(
                ActionKind.END,
                service=w.view.service_id,
                job=w.id,
                slurm_job_id=w.slurm_job_id,
                reason=reason,
            )
        )

    def reconcile(self) -> None:
        by_id: dict[int, SlurmJob] = {}
        by_name: dict[str, SlurmJob] = {}
        for q in self.obs.queue:
            by_id[q.job_id] = q
            known = by_name.get(q.name)
            if known is None or (known.is_finished and not q.is_finished):
                by_name[q.name] = q
        for w in self.work:
            sj: SlurmJob | None = (
                by_id.get(w.slurm_job_id) if w.slurm_job_id is not None else by_name.get(w.view.name)
            )
            if sj is None and w.slurm_job_id is not None:
                sj = self.obs.job_info.get(w.slurm_job_id)
            if sj is not None and sj.name != w.view.name:
                # Not our job: a controller that crashed (SIGKILL) forgets jobs it had not saved
                # and hands their ids out again, to anyone. Ours is gone; never adopt (or later
                # cancel) the job that now has its id.
                sj = None
            if sj is None:
                if w.slurm_job_id is None:
                    # Written before sbatch by a tick that died or failed to submit: never reached Slurm.
                    self.end(w, w.end_reason or EndReason.SUBMIT_FAILED)
                else:
                    # Gone from the queue and from scontrol: sacct tells why, if it can.
                    record = self.final_record(w)
                    reason = end_reason_of_state(record.state) if record else EndReason.GONE
                    self.end(w, w.end_reason or reason, record)
                continue
            if w.slurm_job_id is None:
                w.set(slurm_job_id=sj.job_id)
                self.act(
                    Action(ActionKind.ADOPT, service=w.view.service_id, job=w.id, slurm_job_id=sj.job_id)
                )
            if sj.is_finished:
                record = self.final_record(w)
                reason = end_reason_of_state(record.state) if record else end_reason_from_slurm(sj)
                self.end(w, w.end_reason or reason, record, sj.end_time)
            elif sj.is_pending:
                if w.state in (_SUBMITTING, _STARTING, _READY):
                    if w.state != _SUBMITTING:  # requeued by Slurm
                        w.set(node=None, started_at=None, ready_at=None)
                    w.set(state=_PENDING)
            else:
                self.follow_running(w, sj)

    def final_record(self, w: _Work) -> SacctRecord | None:
        """Slurm's final accounting record of this row's job; None when there is none (no
        sacct, not written yet, or the id now belongs to another job's name)."""
        if w.slurm_job_id is None:
            return None
        record = self.obs.records.get(w.slurm_job_id)
        if record is None or not record.is_final or record.name != w.view.name:
            return None
        return record

    def follow_running(self, w: _Work, sj: SlurmJob) -> None:
        if w.state in (_SUBMITTING, _PENDING):
            w.set(state=_STARTING)
        if w.node != sj.node and sj.node:
            w.set(node=sj.node)
        # Slurm's StartTime corrects an estimate made without it (a watcher's, an older row's).
        if w.started_at is None or (sj.start_time is not None and w.started_at != sj.start_time):
            w.set(started_at=sj.started_at(self.now))
        if w.walltime_limit != sj.time_limit:
            w.set(walltime_limit=sj.time_limit)
        if sj.gpus and sj.gpus != w.view.gpus:
            w.set(gpus=sj.gpus)  # written once, not every tick

    # --- 2. readiness and health
    def readiness(self) -> None:
        for w in self.work:
            if w.ended:
                continue
            svc = self.services.get(w.view.service_id)
            probe = self.obs.probes.get(w.id)
            if w.state == _STARTING:
                if probe is not None and probe.ok:
                    w.set(state=_READY, ready_at=self.now, health_failures=0)
                    self.act(
                        Action(ActionKind.READY, service=w.view.service_id, job=w.id, probe=probe.detail)
                    )
                elif (
                    svc is not None
                    and w.started_at is not None
                    and self.now - w.started_at > svc.ready_timeout
                ):
                    self.drain(w, EndReason.READY_TIMEOUT, detail=probe.detail if probe else None)
            elif w.state == _READY and probe is not None:
                if probe.ok:
                    if w.view.health_failures:
                        w.set(health_failures=0)
                    continue
                failures = w.view.health_failures + 1
                w.set(health_failures=failures, last_error=f"health check: {probe.detail}")
                limit = svc.health_failures if svc is not None else 1
                if failures >= limit:
                    self.drain(
                        w, EndReason.UNHEALTHY, detail=f"{failures} failed health checks: {probe.detail}"
                    )

    def drain(self, w: _Work, reason: EndReason, detail: str | None = None) -> None:
        """Take a job out of routing (state draining); it is cancelled later (or now, if forced)."""
        w.set(state=_DRAINING, draining_at=self.now, end_reason=reason)
        self.act(
            Action(
                ActionKind.DRAIN, service=w.view.service_id, job=w.id, reason=reason, detail=detail or None
            )
        )

    # --- 3. per service
    def services_pass(self) -> None:
        jobs_of: dict[str, list[_Work]] = {}
        self.work_of: dict[str, list[_Work]] = {}  # ended this tick included
        for w in self.work:
            self.work_of.setdefault(w.view.service_id, []).append(w)
            if not w.ended:
                jobs_of.setdefault(w.view.service_id, []).append(w)
        for svc in self.obs.services:
            jobs = jobs_of.get(svc.id, [])
            if not svc.enabled and not jobs:
                continue
            self.plan_service(svc, jobs)

    def plan_service(self, svc: ServiceView, jobs: list[_Work]) -> None:
        """Wanted count, rotation, filling or shrinking, retiring, cancelling, summary."""
        now = self.now
        avg = update_load_avg(svc.load_avg, svc.sampled_at, svc.in_flight, now)
        last_busy = last_busy_at(svc, now)
        base = target_from_load(avg, svc.inferences_per_instance, svc.minimum, svc.maximum)
        live = [w for w in jobs if not w.doomed]
        did = self.roll(svc, live) if svc.enabled else []
        counted = [w for w in live if w.state in _COUNTED and not self.expiring(svc, w)]
        latest_ready = max((w.view.ready_at or 0.0 for w in jobs), default=0.0)
        wanted = wanted_count(svc, base, len(counted), latest_ready, last_busy, now)

        did += self.rotate(live)
        deficit = wanted.count - len(counted)
        if deficit >= 0:
            lower_since = None  # enough jobs, or too few: no cool-down runs
            if deficit > 0:
                deficit = self.fill(svc, wanted, live, deficit, did)
        else:
            lower_since = self.shrink(svc, wanted, counted, -deficit, did)
        self.retire_expiring(svc, wanted, live, counted, deficit)
        cancelled = self.cancel_drained(svc, jobs)
        if cancelled:
            did.append(f"cancelling {cancelled}")

        self.plan.service_updates.append(
            ServiceUpdate(svc.id, avg, now, wanted.count, lower_since, last_busy)
        )
        states = [w.state for w in jobs if not w.ended]
        self.plan.summary.append(summary_line(svc, wanted, avg, states, did))

    def roll(self, svc: ServiceView, live: list[_Work]) -> list[str]:
        """Rolling replacement after a change of the batch script (``rolling_step``)."""
        step = rolling_step(svc.spec, [(w.id, w.state, w.view.spec, w.view.replaces_job_id) for w in live])
        did = []
        for w in live:
            if w.id in step.cancel:
                self.drain(w, EndReason.OUTDATED)
        if step.cancel:
            did.append(f"batch script changed: {len(step.cancel)} job(s) not serving yet submitted anew")
        self.rolling |= step.replace
        if step.replace:
            did.append(f"batch script changed: replacing job {min(step.replace)} rolling")
        return did

    def expiring(self, svc: ServiceView, w: _Work, ready_only: bool = True) -> bool:
        """Ready (or, with ``ready_only=False``, any) and within job_expiry_time of its walltime end,
        or being replaced rolling after its service's batch script changed or before a
        maintenance window on its node (``Observation.move_off``)."""
        if ready_only and w.state != _READY:
            return False
        if (w.id in self.rolling or w.id in self.obs.move_off) and w.state == _READY:
            return True
        left = remaining_walltime(w, self.now)
        return left is not None and left < svc.job_expiry_time

    def rotate(self, live: list[_Work]) -> list[str]:
        """Rotation: a ready replacement takes over; a job near its walltime end leaves routing."""
        did: list[str] = []
        for w in live:
            if w.state == _READY and w.view.replaces_job_id is not None:
                old = next((o for o in live if o.id == w.view.replaces_job_id), None)
                if old is not None and old.state == _READY:
                    self.drain(old, EndReason.ROTATED)
                    did.append(f"rotated job {old.id} -> {w.id}")
        # Slurm kills a job at its walltime whatever it serves: stop routing to it shortly before.
        for w in live:
            left = remaining_walltime(w, self.now)
            if w.state == _READY and left is not None and left < DRAIN_BEFORE_END:
                self.drain(w, EndReason.WALLTIME_ENDING)
                did.append(f"job {w.id} walltime ending in {max(left, 0):.0f}s")
        return did

    def fill(self, svc: ServiceView, wanted: Wanted, live: list[_Work], deficit: int, did: list[str]) -> int:
        """Too few jobs: revive drained ones, then submit (unless backing off). Returns the
        deficit left after reviving."""
        now = self.now
        if svc.enabled:
            # A job drained for lack of load that still runs comes back before anything is submitted.
            for w in live:
                if deficit <= 0:
                    break
                if (
                    w.state == _DRAINING
                    and w.end_reason in REVIVABLE_REASONS
                    and w.view.ready_at is not None
                    and w.started_at is not None
                    and not self.expiring(svc, w, ready_only=False)
                ):
                    w.set(state=_READY, draining_at=None, end_reason=None)
                    self.act(Action(ActionKind.REVIVE, service=svc.id, job=w.id))
                    did.append(f"revived job {w.id}")
                    deficit -= 1
        if deficit <= 0:
            return deficit
        if svc.maintenance_until is not None and now < svc.maintenance_until:
            did.append(f"down for maintenance: nothing submitted for {svc.maintenance_until - now:.0f}s")
            return deficit
        if svc.hold_until is not None and now < svc.hold_until:
            did.append(
                f"a new job would run into a maintenance window: none submitted before it ends in {svc.hold_until - now:.0f}s"
            )
            return deficit
        failed_starts, last_failed_at = svc.failed_starts, svc.last_failed_at
        for w in self.work_of.get(svc.id, ()):  # failed starts noticed this tick count at once
            never_ready = w.view.ready_at is None and (w.change is None or w.change.ready_at is UNSET)
            ending = w.ended or (w.doomed and w.end_reason == EndReason.READY_TIMEOUT)
            if ending and never_ready and (w.end_reason or "") in FAILED_START_REASONS:
                failed_starts, last_failed_at = failed_starts + 1, now
        backoff_left = seconds_to_wait(failed_starts, last_failed_at, now)
        if backoff_left > 0:
            did.append(
                f"backing off: {svc.failed_starts} job(s) in a row ended before becoming ready, "
                f"next submission in {backoff_left:.0f}s"
            )
            self.act(
                Action(
                    ActionKind.BACKOFF,
                    service=svc.id,
                    failed_starts=svc.failed_starts,
                    seconds=round(backoff_left, 1),
                )
            )
            return deficit
        replaced_ids = {w.view.replaces_job_id for w in live if w.view.replaces_job_id is not None}
        orphans_of_rotation = [w for w in live if self.expiring(svc, w) and w.id not in replaced_ids]
        for i in range(deficit):
            if i < len(orphans_of_rotation):
                self.submit(svc, SubmitReason.ROTATION, replaces=orphans_of_rotation[i].id)
            else:
                self.submit(svc, wanted.start_reason)
        did.append(f"submitting {deficit}")
        return deficit

    def shrink(
        self, svc: ServiceView, wanted: Wanted, counted: list[_Work], surplus: int, did: list[str]
    ) -> float | None:
        """Too many jobs: after the cool-down (at once when disabled or idle), drain the surplus.
        Returns the service's new ``lower_since``."""
        decision = scale_down_now(svc, wanted, self.now)
        if decision.reason is None:
            did.append(f"{surplus} surplus, cool-down {decision.cooldown_left:.0f}s left")
            return decision.lower_since
        gone = self.scale_down(counted, surplus, wanted.count, decision.reason)
        if gone:
            did.append(f"scaling down {gone} ({decision.reason})")
            return None
        return decision.lower_since

    def retire_expiring(
        self, svc: ServiceView, wanted: Wanted, live: list[_Work], counted: list[_Work], deficit: int
    ) -> None:
        """Ready jobs near their walltime end (not counted) go when the service goes to zero,
        or when nobody needs to replace them while another job serves."""
        if wanted.count == 0:
            for w in live:
                if self.expiring(svc, w):
                    self.drain(w, EndReason.DISABLED if not svc.enabled else EndReason.IDLE)
        elif deficit <= 0:
            replaced_ids = {w.view.replaces_job_id for w in live if w.view.replaces_job_id is not None}
            others_ready = [w for w in counted if w.state == _READY]
            for w in live:
                if others_ready and self.expiring(svc, w) and w.id not in replaced_ids:
                    self.drain(w, EndReason.EXPIRING)

    def submit(self, svc: ServiceView, reason: SubmitReason, replaces: int | None = None) -> None:
        nodes = self.obs.move_off.get(replaces) if replaces is not None else None
        extra = (f"--exclude={','.join(nodes)}",) if nodes else ()
        self.plan.submits.append(Submit(svc.id, svc.sbatch, reason, replaces, extra))

    def scale_down(self, counted: list[_Work], surplus: int, wanted: int, reason: EndReason) -> int:
        def walltime_end(w: _Work) -> float:
            left = remaining_walltime(w, self.now)
            return math.inf if left is None else left

        ready = sorted(
            (w for w in counted if w.state == _READY),
            key=lambda w: (w.view.in_flight, walltime_end(w), w.id),
        )
        waiting = sorted(
            (w for w in counted if w.state in (_SUBMITTING, _PENDING)),
            key=lambda w: -w.view.submitted_at,
        )
        loading = sorted((w for w in counted if w.state == _STARTING), key=lambda w: -w.view.submitted_at)
        gone = 0
        ready_left = len(ready)
        for w in ready:
            if gone >= surplus:
                break
            if wanted > 0 and ready_left <= 1:
                break
            self.drain(w, reason)
            ready_left -= 1
            gone += 1
        serving = {w.id for w in self.work if w.state == _READY and not w.doomed}
        for w in waiting + loading:
            if gone >= surplus:
                break
            if wanted > 0 and w.view.replaces_job_id in serving:
                # It stands in for a job about to reach its walltime: cancelling it would
                # leave that job serving until Slurm kills it. The rotation finishes first;
                # the surplus is taken from ready jobs on a later tick.
                continue
            self.drain(w, EndReason.SURPLUS)
            gone += 1
        return gone

    def cancel_drained(self, svc: ServiceView, jobs: list[_Work]) -> int:
        n = 0
        for w in jobs:
            if w.ended or w.doomed or w.state != _DRAINING or w.slurm_job_id is None:
                continue
            reason = w.end_reason or EndReason.DRAINED
            left = remaining_walltime(w, self.now)
            never_ran = w.started_at is None
            if reason in FORCED_REASONS or never_ran:
                graceful = False
            elif left is not None and left < CANCEL_BEFORE_END:
                graceful = False
                reason = f"{reason}, walltime ending"
            elif w.view.in_flight == 0 and (w.draining_at or self.now) <= self.now - DRAIN_GRACE:
                graceful = True
            else:
                continue
            w.doomed = True
            self.plan.cancels.append(Cancel(w.slurm_job_id, reason, w.id, graceful))
            self.act(
                Action(
                    ActionKind.CANCEL, service=svc.id, job=w.id, slurm_job_id=w.slurm_job_id, reason=reason
                )
            )
            n += 1
        return n

    # --- 4. orphans
    def orphans(self, prefix: str) -> None:
        owned = {w.view.name for w in self.work if not w.ended}
        owned_ids = {w.slurm_job_id for w in self.work if not w.ended and w.slurm_job_id is not None}
        for sj in self.obs.queue:
            if sj.is_finished or sj.job_id in owned_ids or sj.name in owned:
                continue
            if not sj.name.startswith(prefix):
                continue
            self.plan.cancels.append(Cancel(sj.job_id, EndReason.ORPHAN))
            self.act(Action(ActionKind.CANCEL, slurm_job_id=sj.job_id, name=sj.name, reason=EndReason.ORPHAN))

    def finish(self) -> Plan:
        for w in self.work:
            if w.change is not None:
                self.plan.job_changes[w.id] = w.change
        return self.plan


def plan_tick(obs: Observation, prefix: str) -> Plan:
    """Decide one tick. ``prefix`` is the job-name prefix including its ``_``."""
    p = _Planner(obs)
    p.reconcile()
    p.readiness()
    p.services_pass()
    p.orphans(prefix)
    return p.finish()
