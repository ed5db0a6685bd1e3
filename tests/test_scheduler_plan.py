"""The pure planner: load average, targets, victim choice, rotation, reconcile; no database."""

from __future__ import annotations

import math
from typing import Any

import pytest

from saia_ctl.scheduler.names import job_name, name_prefix, parse_job_name
from saia_ctl.scheduler.plan import (
    DRAIN_GRACE,
    ScaleDown,
    Wanted,
    end_reason_from_slurm,
    plan_tick,
    scale_down_now,
    seconds_to_wait,
    summary_line,
    target_from_load,
    update_load_avg,
    wanted_count,
)
from saia_ctl.scheduler.views import (
    UNSET,
    Action,
    ActionKind,
    EndReason,
    JobChange,
    JobView,
    Observation,
    ProbeResult,
    ServiceView,
    SubmitReason,
)
from saia_ctl.slurm import SlurmJob

SCALE_UP, DEMAND = SubmitReason.SCALE_UP, SubmitReason.DEMAND

NOW = 1_780_000_000.0
PREFIX = "tp_"


def svc(**kw: Any) -> ServiceView:
    base: dict[str, Any] = dict(
        id="svc",
        enabled=True,
        sbatch="/x.sbatch",
        inferences_per_instance=1,
        minimum=1,
        maximum=3,
        job_expiry_time=120,
        ready_timeout=600,
        idle_timeout=900,
        scale_down_cooldown=120,
        health_failures=3,
        sampled_at=NOW - 10,
    )
    base.update(kw)
    return ServiceView(**base)


def job(jid: int, state: str = "ready", **kw: Any) -> JobView:
    base: dict[str, Any] = dict(
        id=jid,
        name=job_name("tp", jid, kw.get("service_id", "svc")),
        service_id="svc",
        slurm_job_id=1000 + jid,
        state=state,
        node="n1",
        port=30000 + jid,
        submitted_at=NOW - 100,
        started_at=NOW - 50 if state in ("starting", "ready", "draining") else None,
        ready_at=NOW - 40 if state == "ready" else None,
        walltime_limit=3600,
    )
    base.update(kw)
    return JobView(**base)


def running(j: JobView, elapsed: float = 50, limit: int | None = 3600) -> SlurmJob:
    return SlurmJob(j.slurm_job_id or 0, j.name, "RUNNING", node="n1", elapsed=int(elapsed), time_limit=limit)


def pending(j: JobView) -> SlurmJob:
    return SlurmJob(j.slurm_job_id or 0, j.name, "PENDING", time_limit=3600)


def obs(services: list[ServiceView], jobs: list[JobView], queue: list[SlurmJob], **kw: Any) -> Observation:
    return Observation(NOW, services, jobs, queue, **kw)


# --- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tp_12_svc", (12, "svc")),
        ("tp_7_my_service.v2+x", (7, "my_service.v2+x")),
        ("tpx_12_svc", None),  # another installation's prefix
        ("tp_0_svc", None),
        ("tp_12_", None),
        ("tp_abc_svc", None),
        ("other", None),
    ],
)
def test_parse_job_name(name: str, expected: tuple[int, str] | None) -> None:
    assert parse_job_name(name, "tp") == expected


def test_job_name_round_trips() -> None:
    assert parse_job_name(job_name("saia", 42, "llama-3.1_8b"), "saia") == (42, "llama-3.1_8b")
    assert name_prefix("saia") == "saia_"


# --- load average and target


def test_first_sample_is_taken_as_is() -> None:
    assert update_load_avg(0.0, None, 3, NOW) == 3.0


@pytest.mark.parametrize("gap", [5.0, 10.0, 30.0])
def test_average_weight_scales_with_elapsed_time(gap: float) -> None:
    # Two 5 s steps equal one 10 s step: the window does not depend on the tick interval.
    stepwise = 0.0
    t = NOW
    for _ in range(int(gap / 5)):
        stepwise = update_load_avg(stepwise, t, 4, t + 5)
        t += 5
    assert update_load_avg(0.0, NOW, 4, NOW + gap) == pytest.approx(stepwise)
    # one 5-s step: the original (10 * 0 + 2 * 4) / 12
    assert update_load_avg(0.0, NOW, 4, NOW + 5) == pytest.approx((10 * 0 + 2 * 4) / 12)


def test_average_converges_and_decays() -> None:
    avg, t = 0.0, NOW
    for _ in range(60):  # 10 minutes of 2 requests in flight, sampled every 10 s
        avg = update_load_avg(avg, t, 2, t + 10)
        t += 10
    assert avg == pytest.approx(2.0, abs=0.01)
    for _ in range(60):
        avg = update_load_avg(avg, t, 0, t + 10)
        t += 10
    assert avg < 0.01


@pytest.mark.parametrize(
    ("avg", "per", "lo", "hi", "target"),
    [
        (0.0, 1, 0, 3, 0),
        (0.0009, 1, 0, 3, 0),  # a decayed average does not keep a job alive forever
        (0.01, 1, 0, 3, 1),  # the original rounds down only within 0.001
        (0.2, 1, 0, 3, 1),
        (1.0, 1, 0, 3, 1),
        (1.7, 1, 1, 3, 2),
        (1.7, 2, 1, 3, 1),
        (5.0, 1, 1, 3, 3),  # clamped to the maximum
        (0.0, 1, 2, 3, 2),  # and the minimum
        (4.0, 1, 0, 0, 0),  # max 0: no automatic starts
    ],
)
def test_target_from_load(avg: float, per: int, lo: int, hi: int, target: int) -> None:
    assert target_from_load(avg, per, lo, hi) == target


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ("COMPLETED", "completed"),
        ("CANCELLED", "cancelled"),
        ("CANCELLED+", "cancelled"),
        ("TIMEOUT", "timeout"),
        ("NODE_FAIL", "node-failure"),
        ("OUT_OF_MEMORY", "out-of-memory"),
        ("FAILED", "failed"),
    ],
)
def test_end_reasons(state: str, reason: str) -> None:
    assert end_reason_from_slurm(SlurmJob(1, "x", state)) == reason


# --- table-driven planner cases


def test_pending_and_starting_count_toward_target() -> None:
    s = svc(minimum=0, load_avg=2.0, sampled_at=NOW - 10, in_flight=2)
    jobs = [job(1, "pending", node=None), job(2, "starting")]
    plan = plan_tick(obs([s], jobs, [pending(jobs[0]), running(jobs[1])]), PREFIX)
    assert plan.submits == []
    assert plan.service_updates[0].target == 2


def test_scale_up_submits_the_difference() -> None:
    s = svc(load_avg=2.9, in_flight=3)
    jobs = [job(1)]
    plan = plan_tick(obs([s], jobs, [running(jobs[0])], probes={1: ProbeResult(True, "200")}), PREFIX)
    assert len(plan.submits) == 2
    assert "target 3" in plan.summary[0] and "submitting 2" in plan.summary[0]


@pytest.mark.parametrize(
    ("jobs", "in_flight", "drained", "cancelled"),
    [
        # two ready: the one with fewer requests goes (drained, cancelled later)
        ([job(1), job(2)], {1: 2, 2: 0}, [2], []),
        # one ready + one pending, min 1: the ready one may not go (it is the last ready);
        # the surplus pending job is cancelled outright
        ([job(1), job(2, "pending", node=None, started_at=None)], {}, [2], [2]),
        # one ready + one starting: the loading job goes, the ready one stays
        ([job(1), job(2, "starting")], {}, [2], [2]),
    ],
)
def test_scale_down_victims(
    jobs: list[JobView], in_flight: dict[int, int], drained: list[int], cancelled: list[int]
) -> None:
    jobs = [JobView(**{**j.__dict__, "in_flight": in_flight.get(j.id, 0)}) for j in jobs]
    s = svc(lower_since=NOW - 200, load_avg=0.0, in_flight=sum(in_flight.values()))
    queue = [pending(j) if j.state == "pending" else running(j) for j in jobs]
    probes = {j.id: ProbeResult(j.state == "ready", "x") for j in jobs}
    plan = plan_tick(obs([s], jobs, queue, probes=probes), PREFIX)
    assert sorted(i for i, c in plan.job_changes.items() if c.state == "draining") == drained
    assert sorted(c.job_id for c in plan.cancels if c.job_id is not None) == cancelled


def test_scale_down_waits_for_cooldown() -> None:
    jobs = [job(1), job(2)]
    s = svc(lower_since=None, load_avg=0.0)
    probes = {1: ProbeResult(True, "200"), 2: ProbeResult(True, "200")}
    plan = plan_tick(obs([s], jobs, [running(j) for j in jobs], probes=probes), PREFIX)
    assert not any(c.state == "draining" for c in plan.job_changes.values())
    assert plan.service_updates[0].lower_since == NOW
    assert "cool-down 120s left" in plan.summary[0]


def test_draining_job_cancelled_only_when_idle_and_after_grace() -> None:
    base = job(1, "draining", draining_at=NOW - DRAIN_GRACE - 1, end_reason="scale-down")
    s = svc(minimum=0, load_avg=0.0)
    busy = JobView(**{**base.__dict__, "in_flight": 1})
    assert plan_tick(obs([s], [busy], [running(busy)]), PREFIX).cancels == []
    fresh = JobView(**{**base.__dict__, "draining_at": NOW - 1})
    assert plan_tick(obs([s], [fresh], [running(fresh)]), PREFIX).cancels == []
    cancels = plan_tick(obs([s], [base], [running(base)]), PREFIX).cancels
    assert [(c.job_id, c.graceful) for c in cancels] == [(1, True)]


def test_draining_job_cancelled_before_walltime_even_with_requests() -> None:
    j = job(1, "draining", draining_at=NOW - 60, end_reason="rotated", in_flight=2, walltime_limit=100)
    j = JobView(**{**j.__dict__, "started_at": NOW - 90})
    s = svc(in_flight=2)
    cancels = plan_tick(obs([s], [j], [running(j, elapsed=90, limit=100)]), PREFIX).cancels
    assert [(c.job_id, c.graceful) for c in cancels] == [(1, False)]


def test_rotation_submits_replacement_and_keeps_old_serving() -> None:
    old = job(1, started_at=NOW - 3500, walltime_limit=3600)  # 100 s left < expiry 120
    s = svc()
    plan = plan_tick(obs([s], [old], [running(old, 3500)], probes={1: ProbeResult(True, "200")}), PREFIX)
    assert [(x.reason, x.replaces_job_id) for x in plan.submits] == [("rotation", 1)]
    assert 1 not in plan.job_changes or plan.job_changes[1].state is UNSET
    # Next tick: the replacement is pending; nothing more is submitted, the old job still serves.
    new = job(2, "pending", node=None, started_at=None, replaces_job_id=1)
    plan = plan_tick(
        obs([s], [old, new], [running(old, 3510), pending(new)], probes={1: ProbeResult(True, "200")}), PREFIX
    )
    assert plan.submits == [] and plan.cancels == []
    # The replacement answers: the old job is drained (cancelled once idle, after the grace).
    new = job(2, "starting", replaces_job_id=1)
    probes = {1: ProbeResult(True, "200"), 2: ProbeResult(True, "200")}
    plan = plan_tick(obs([s], [old, new], [running(old, 3520), running(new, 5)], probes=probes), PREFIX)
    assert plan.job_changes[2].state == "ready"
    assert plan.job_changes[1].state == "draining" and plan.job_changes[1].end_reason == "rotated"
    assert plan.submits == []


def test_demand_starts_one_job_per_demand_never_above_max() -> None:
    s = svc(minimum=0, load_avg=0.0, demand_at=NOW - 1, last_submit_at=None)
    assert len(plan_tick(obs([s], [], []), PREFIX).submits) == 1
    s2 = svc(minimum=0, load_avg=0.0, demand_at=NOW - 1, last_submit_at=NOW - 0.5)
    assert plan_tick(obs([s2], [], []), PREFIX).submits == []  # already answered
    s3 = svc(minimum=0, maximum=0, load_avg=0.0, demand_at=NOW - 1, waiting=2)
    assert plan_tick(obs([s3], [], []), PREFIX).submits == []  # max 0 disables automatic starts


def test_waiting_requests_want_one_job() -> None:
    s = svc(minimum=0, load_avg=0.0, sampled_at=None, in_flight=1, waiting=1, last_submit_at=NOW - 5)
    plan = plan_tick(obs([s], [], []), PREFIX)
    assert [x.reason for x in plan.submits] == ["demand"]


def test_orphans_cancelled_foreign_jobs_left_alone() -> None:
    ours_live = job(1)
    queue = [
        running(ours_live),
        SlurmJob(555, "tp_99_svc", "RUNNING", node="n1"),  # no live row
        SlurmJob(556, "tp_98_svc", "COMPLETED"),  # finished: nothing to do
    ]
    plan = plan_tick(obs([svc()], [ours_live], queue, probes={1: ProbeResult(True, "200")}), PREFIX)
    assert [(c.slurm_job_id, c.reason) for c in plan.cancels] == [(555, "orphan")]


def test_requeued_job_goes_back_to_pending() -> None:
    j = job(1)
    plan = plan_tick(obs([svc()], [j], [pending(j)]), PREFIX)
    assert plan.job_changes[1].state == "pending" and plan.job_changes[1].node is None


def test_summary_line_reads_like_the_issue() -> None:
    s = svc(load_avg=1.7, sampled_at=NOW - 0.0001, in_flight=2)
    jobs = [job(1)]
    plan = plan_tick(obs([s], jobs, [running(jobs[0])], probes={1: ProbeResult(True, "200")}), PREFIX)
    line = plan.summary[0]
    assert line.startswith("svc: target 2 (avg 1.70 in flight / 1 per instance")
    assert "1 ready, 0 starting, 0 pending, submitting 1" in line
    assert math.isfinite(plan.service_updates[0].load_avg)


# --- found by the soak: rotation under falling load, walltime end, failing starts


def test_pending_replacement_is_not_cancelled_as_surplus_while_its_old_job_serves() -> None:
    # Load fell to one job's worth while job 1 was being rotated: the replacement 3 must stay,
    # or job 1 would serve until Slurm kills it at its walltime.
    old = job(1, started_at=NOW - 3500, walltime_limit=3600)  # expiring, not counted
    other = job(2, started_at=NOW - 100)
    repl = job(3, "pending", node=None, started_at=None, replaces_job_id=1, submitted_at=NOW - 5)
    s = svc(minimum=0, load_avg=1.0, sampled_at=NOW - 5, lower_since=NOW - 1000, in_flight=1)
    queue = [running(old, 3500), running(other, 100), pending(repl)]
    probes = {1: ProbeResult(True, "200"), 2: ProbeResult(True, "200")}
    plan = plan_tick(obs([s], [old, other, repl], queue, probes=probes), PREFIX)
    assert 3 not in {c.job_id for c in plan.cancels}
    assert plan.job_changes.get(3, JobChange()).state != "draining"


def test_surplus_pending_job_without_a_job_to_replace_is_cancelled() -> None:
    a = job(1, started_at=NOW - 100)
    extra = job(2, "pending", node=None, started_at=None, submitted_at=NOW - 5)
    s = svc(minimum=0, load_avg=1.0, sampled_at=NOW - 5, lower_since=NOW - 1000, in_flight=1)
    plan = plan_tick(
        obs([s], [a, extra], [running(a, 100), pending(extra)], probes={1: ProbeResult(True, "200")}), PREFIX
    )
    assert plan.job_changes[2].state == "draining" and plan.job_changes[2].end_reason == "surplus"


def test_ready_job_near_its_walltime_leaves_routing_even_without_replacement() -> None:
    old = job(1, started_at=NOW - 3570, walltime_limit=3600)  # 30 s left, replacement not ready
    repl = job(2, "pending", node=None, started_at=None, replaces_job_id=1)
    s = svc()
    plan = plan_tick(
        obs([s], [old, repl], [running(old, 3570), pending(repl)], probes={1: ProbeResult(True, "200")}),
        PREFIX,
    )
    assert plan.job_changes[1].state == "draining"
    assert plan.job_changes[1].end_reason == "walltime-ending"
    assert any("walltime ending" in line for line in plan.summary)


@pytest.mark.parametrize(
    ("failed", "ago", "submits"),
    [
        (0, 0, 1),
        (1, 5, 0),  # 10 s back-off after the first failed start
        (1, 11, 1),
        (3, 30, 0),  # 40 s after three
        (3, 41, 1),
        (12, 500, 0),  # capped at 600 s
        (12, 601, 1),
    ],
)
def test_back_off_after_jobs_that_never_became_ready(failed: int, ago: float, submits: int) -> None:
    s = svc(minimum=1, failed_starts=failed, last_failed_at=NOW - ago if failed else None)
    plan = plan_tick(obs([s], [], []), PREFIX)
    assert len(plan.submits) == submits
    if not submits:
        assert any("backing off" in line for line in plan.summary)


# --- a reused Slurm id (the planner's side of tests/test_faults_daemons.py's controller crash)


def test_a_reused_slurm_id_is_not_taken_for_our_lost_job() -> None:
    """After a controller crash our job 1001 is gone and someone else's job got its id."""
    ours = job(1, "ready")
    theirs = SlurmJob(1001, "someone-else", "RUNNING", node="n1", elapsed=5, time_limit=3600)
    plan = plan_tick(obs([svc(minimum=1)], [ours], [], job_info={1001: theirs}), PREFIX)
    assert plan.job_changes[1].state == "ended" and plan.job_changes[1].end_reason == "gone"
    assert plan.job_changes[1].ended_at == NOW
    assert [c.slurm_job_id for c in plan.cancels] == [] and len(plan.submits) == 1


# --- the named steps of planning one service


@pytest.mark.parametrize(
    ("service", "base", "counted", "latest_ready", "last_busy", "expected"),
    [
        # the load's target as it is
        (dict(minimum=0), 2, 2, None, NOW, Wanted(2, SCALE_UP, False, ())),
        (dict(minimum=1), 1, 1, None, None, Wanted(1, SCALE_UP, False, ("min 1",))),
        # disabled: zero, whatever the load
        (dict(enabled=False, waiting=3), 3, 2, None, NOW, Wanted(0, SCALE_UP, False, ("disabled",))),
        # waiting requests or on-demand start one job; they also make it a "demand" start
        (dict(minimum=0, waiting=2), 0, 0, None, None, Wanted(1, DEMAND, False, ("2 waiting",))),
        (dict(minimum=0, demand_at=NOW - 1), 0, 0, None, None, Wanted(1, DEMAND, False, ("on demand",))),
        (
            dict(minimum=0, demand_at=NOW - 9, last_submit_at=NOW - 5),
            0,
            0,
            None,
            None,
            Wanted(0, SCALE_UP, False, ()),
        ),
        (dict(minimum=0, maximum=0, waiting=1), 0, 0, None, None, Wanted(0, DEMAND, False, ())),
        # requests in flight keep one job
        (dict(minimum=0, in_flight=1), 0, 1, None, NOW, Wanted(1, SCALE_UP, False, ("1 in flight",))),
        # idle: kept until idle_timeout, then straight to zero
        (
            dict(minimum=0, idle_timeout=900),
            0,
            1,
            NOW - 100,
            NOW - 300,
            Wanted(1, SCALE_UP, False, ("idle 100s of 900s",)),
        ),
        (
            dict(minimum=0, idle_timeout=900),
            1,
            1,
            NOW - 1000,
            NOW - 950,
            Wanted(0, SCALE_UP, True, ("idle for 900s or more: scale to zero",)),
        ),
        (
            dict(minimum=0, idle_timeout=900),
            0,
            1,
            None,
            None,
            Wanted(0, SCALE_UP, True, ("idle for 900s or more: scale to zero",)),
        ),
        # with no job counted there is nothing to scale to zero
        (dict(minimum=0, idle_timeout=900), 0, 0, None, None, Wanted(0, SCALE_UP, False, ())),
    ],
)
def test_wanted_count(
    service: dict[str, Any],
    base: int,
    counted: int,
    latest_ready: float | None,
    last_busy: float | None,
    expected: Wanted,
) -> None:
    assert wanted_count(svc(**service), base, counted, latest_ready, last_busy, NOW) == expected


@pytest.mark.parametrize(
    ("states", "notes", "did", "line"),
    [
        ([], (), [], "svc: target 1 (avg 0.50 in flight / 1 per instance), 0 ready, 0 starting, 0 pending"),
        (
            ["ready", "starting", "pending", "submitting", "draining"],
            ("min 1",),
            ["submitting 1", "cancelling 1"],
            "svc: target 1 (avg 0.50 in flight / 1 per instance; min 1), 1 ready, 1 starting, 2 pending, "
            "1 draining, submitting 1, cancelling 1",
        ),
    ],
)
def test_summary_line(states: list[str], notes: tuple[str, ...], did: list[str], line: str) -> None:
    assert summary_line(svc(), Wanted(1, SCALE_UP, False, notes), 0.5, states, did) == line


# --- the contracts


def test_end_reasons_keep_their_stored_strings() -> None:
    """The values are in the database and in reports: renaming one breaks both."""
    assert {r.name: r.value for r in EndReason} == {
        "COMPLETED": "completed",
        "CANCELLED": "cancelled",
        "TIMEOUT": "timeout",
        "FAILED": "failed",
        "NODE_FAILURE": "node-failure",
        "PREEMPTED": "preempted",
        "OUT_OF_MEMORY": "out-of-memory",
        "BOOT_FAILURE": "boot-failure",
        "DEADLINE": "deadline",
        "GONE": "gone",
        "SUBMIT_FAILED": "submit-failed",
        "NOT_SUBMITTED": "not-submitted",
        "READY_TIMEOUT": "ready-timeout",
        "UNHEALTHY": "unhealthy",
        "SURPLUS": "surplus",
        "SCALE_DOWN": "scale-down",
        "IDLE": "idle",
        "DISABLED": "disabled",
        "ROTATED": "rotated",
        "OUTDATED": "outdated",
        "EXPIRING": "expiring",
        "WALLTIME_ENDING": "walltime-ending",
        "DRAINED": "drained",
        "ORPHAN": "orphan",
    }
    assert f"{EndReason.SCALE_DOWN}" == "scale-down" and EndReason.IDLE == "idle"


def test_unknown_slurm_end_state_is_kept_in_lower_case() -> None:
    assert end_reason_from_slurm(SlurmJob(1, "x", "SPECIAL_EXIT")) == "special-exit"


@pytest.mark.parametrize(
    ("action", "logged"),
    [
        (
            Action(ActionKind.END, service="svc", job=1, reason=EndReason.SUBMIT_FAILED),
            {"action": "end", "service": "svc", "job": 1, "slurm_job_id": None, "reason": "submit-failed"},
        ),
        (
            Action(ActionKind.DRAIN, service="svc", job=2, reason=EndReason.UNHEALTHY, detail="3 failed"),
            {"action": "drain", "service": "svc", "job": 2, "reason": "unhealthy", "detail": "3 failed"},
        ),
        (
            Action(ActionKind.CANCEL, slurm_job_id=7, name="tp_9_svc", reason=EndReason.ORPHAN),
            {"action": "cancel", "slurm_job_id": 7, "name": "tp_9_svc", "reason": "orphan"},
        ),
        (
            Action(
                ActionKind.SUBMIT,
                service="svc",
                job=3,
                slurm_job_id=8,
                port=30003,
                reason="rotation",
                replaces=1,
            ),
            {
                "action": "submit",
                "service": "svc",
                "job": 3,
                "slurm_job_id": 8,
                "port": 30003,
                "reason": "rotation",
                "replaces": 1,
            },
        ),
        (
            Action(ActionKind.BACKOFF, service="svc", failed_starts=2, seconds=12.5),
            {"action": "backoff", "service": "svc", "failed_starts": 2, "seconds": 12.5},
        ),
    ],
)
def test_actions_are_logged_as_before(action: Action, logged: dict[str, Any]) -> None:
    out = action.as_dict()
    assert out == logged and list(out) == list(logged)


def test_a_misspelt_job_change_is_refused_while_planning() -> None:
    change = JobChange()
    with pytest.raises(AttributeError):
        change.stat = "ready"  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        JobChange(stat="ready")  # type: ignore[call-arg]
    assert not change and JobChange(node=None) and JobChange(node=None).columns() == {"node": None}


@pytest.mark.parametrize(
    ("service", "idle_to_zero", "expected"),
    [
        # the first tick with a surplus starts the cool-down
        (dict(lower_since=None), False, ScaleDown(NOW, None, 120)),
        (dict(lower_since=NOW - 100), False, ScaleDown(NOW - 100, None, 20)),
        (dict(lower_since=NOW - 120), False, ScaleDown(NOW - 120, EndReason.SCALE_DOWN, 0)),
        # idle long enough or disabled: at once
        (dict(lower_since=None), True, ScaleDown(NOW, EndReason.IDLE, 120)),
        (dict(lower_since=None, enabled=False), False, ScaleDown(NOW, EndReason.DISABLED, 120)),
    ],
)
def test_scale_down_now(service: dict[str, Any], idle_to_zero: bool, expected: ScaleDown) -> None:
    wanted = Wanted(0 if idle_to_zero else 1, SCALE_UP, idle_to_zero, ())
    assert scale_down_now(svc(scale_down_cooldown=120, **service), wanted, NOW) == expected


@pytest.mark.parametrize(
    ("failed", "last", "left"),
    [
        (0, None, 0.0),
        (0, NOW - 1, 0.0),
        (1, NOW - 4, 6.0),
        (2, NOW, 20.0),
        (5, NOW - 200, -40.0),
        (30, NOW, 600.0),
    ],
)
def test_seconds_to_wait(failed: int, last: float | None, left: float) -> None:
    assert seconds_to_wait(failed, last, NOW) == pytest.approx(left)


@pytest.mark.parametrize(("stored", "slurm", "change"), [(0, 2, 2), (2, 2, UNSET), (2, 4, 4), (0, 0, UNSET)])
def test_gpus_recorded_when_slurm_reports_other_than_stored(stored: int, slurm: int, change: object) -> None:
    j = job(1, gpus=stored)
    sj = SlurmJob(1001, j.name, "RUNNING", node="n1", elapsed=50, time_limit=3600, gpus=slurm)
    plan = plan_tick(obs([svc()], [j], [sj], probes={1: ProbeResult(True, "200")}), PREFIX)
    assert plan.job_changes.get(1, JobChange()).gpus == change


def test_job_a_maintenance_window_will_end_is_rotated_off_its_node() -> None:
    """The tick's move_off (maintenance.py) names a ready job: it is replaced like one near its
    walltime end, the replacement excluding the window's nodes; the old one serves until then."""
    old = job(1)  # plenty of walltime left
    s = svc()
    probes = {1: ProbeResult(True, "200")}
    plan = plan_tick(obs([s], [old], [running(old)], probes=probes), PREFIX)
    assert plan.submits == []  # without a window: nothing
    plan = plan_tick(obs([s], [old], [running(old)], probes=probes, move_off={1: ("n1", "n3")}), PREFIX)
    assert [(x.reason, x.replaces_job_id, x.extra_args) for x in plan.submits] == [
        ("rotation", 1, ("--exclude=n1,n3",))
    ]
    assert 1 not in plan.job_changes or plan.job_changes[1].state is UNSET
    new = job(2, "starting", node="n2", replaces_job_id=1)
    probes = {1: ProbeResult(True, "200"), 2: ProbeResult(True, "200")}
    queue = [running(old), running(new, 5)]
    plan = plan_tick(obs([s], [old, new], queue, probes=probes, move_off={1: ("n1", "n3")}), PREFIX)
    assert plan.job_changes[2].state == "ready" and plan.submits == []
    assert plan.job_changes[1].state == "draining" and plan.job_changes[1].end_reason == "rotated"
