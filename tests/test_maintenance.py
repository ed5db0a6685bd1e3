"""Maintenance windows (Slurm reservations with the MAINT flag): parsed from
``scontrol show reservation -o``, applied to the services whose nodes they
cover; a service down for maintenance gets nothing submitted, its requests get
503 with Retry-After = the window's end, and `status` shows `maintenance`."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from saia_ctl.scheduler import run_tick
from saia_ctl.scheduler.maintenance import (
    Window,
    expand_hostlist,
    move_off,
    parse_reservations,
    service_maintenance,
)
from saia_ctl.scheduler.probes import ProbeTarget
from saia_ctl.scheduler.views import JobView, ProbeResult, ServiceView
from saia_ctl.settings import Settings
from saia_ctl.slurm import SlurmJob
from saia_ctl.slurm_fake import FakeSlurm
from tests.support.fixtures import Clock, service_config
from tests.support.paths import REPO
from tests.support.wire import command, parse_as_proxy, run_inproc


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%S")


def _line(name: str, start: float, end: float, nodes: str, flags: str) -> str:
    return (
        f"ReservationName={name} StartTime={_iso(start)} EndTime={_iso(end)} Duration=00:10:00"
        f" Nodes={nodes} NodeCnt=1 CoreCnt=16 Features=(null) PartitionName=(null) Flags={flags}"
        " TRES=cpu=16 Users=root Groups=(null) Accounts=(null) Licenses=(null) State=ACTIVE"
        " BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)"
    )


def test_expand_hostlist() -> None:
    assert expand_hostlist("n[01-03,07],gpu1") == ["n01", "n02", "n03", "n07", "gpu1"]
    assert expand_hostlist("vm") == ["vm"] and expand_hostlist("") == []


def test_parse_reservations() -> None:
    now = float(int(time.time()))
    out = "\n".join(
        [
            _line("m1", now, now + 600, "n[1-2]", "MAINT,SPEC_NODES"),
            _line("r2", now, now + 600, "ALL", "IGNORE_JOBS"),
            "No reservations in the system",
        ]
    )
    m1, r2 = parse_reservations(out)
    assert m1 == Window("m1", now, now + 600, frozenset({"n1", "n2"}), True)
    assert r2.nodes is None and not r2.maint


def _svc(sid: str) -> ServiceView:
    return ServiceView(sid, True, "/x", 1, 1, 1, 600, 1800, 900, 120, 3)


@pytest.mark.parametrize(
    ("window_nodes", "running_on", "all_nodes", "down"),
    [
        (None, {"a": "n1"}, None, {"a", "b"}),  # Nodes=ALL: everyone
        (frozenset({"n1"}), {"a": "n1", "b": "n2"}, None, {"a"}),  # b runs outside the window
        (frozenset({"n1"}), {}, frozenset({"n1"}), {"a", "b"}),  # no jobs, the window is the whole cluster
        (frozenset({"n1"}), {}, frozenset({"n1", "n2"}), set()),  # no jobs, n2 is free
    ],
)
def test_service_maintenance(
    window_nodes: frozenset[str] | None,
    running_on: dict[str, str],
    all_nodes: frozenset[str] | None,
    down: set[str],
) -> None:
    now = 1000.0
    jobs, queue = [], []
    for i, (sid, node) in enumerate(running_on.items()):
        jobs.append(JobView(i, f"j{i}", sid, 100 + i, "ready", node, 1 + i, 0.0))
        queue.append(SlurmJob(100 + i, f"j{i}", "RUNNING", node=node))
    windows = [Window("m", 900.0, 2000.0, window_nodes, True), Window("later", 5000.0, 6000.0, None, True)]
    got = service_maintenance(windows, [_svc("a"), _svc("b")], jobs, queue, all_nodes, now)
    assert set(got) == down and all(v == (2000.0, "m") for v in got.values())
    assert service_maintenance(windows, [_svc("a")], jobs, queue, all_nodes, 2000.0) == {}  # it ended


class SlurmWithReservations(FakeSlurm):
    reservations = ""

    def run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        out = {"scontrol": self.reservations, "sinfo": "vm\n"}.get(name, "")
        return subprocess.CompletedProcess([name, *args], 0, out, "")


def _healthy(targets: Any, timeout: float) -> dict[int, ProbeResult]:
    return {t.job_id: ProbeResult(True, f"GET {t.path}: 200") for t in targets if isinstance(t, ProbeTarget)}


def test_down_for_maintenance_submits_nothing_and_answers_503(
    home: Path, engine: Any, settings: Settings, import_services: Any
) -> None:
    clock = Clock(time.time())
    sbatch = str(REPO / "tests" / "data" / "scheduler_backend.sbatch")
    import_services(service_config("svc", sbatch=sbatch, minimum_number_instances=1))
    fake = SlurmWithReservations(clock, time_limit=3600)
    end = float(int(clock() + 300))
    fake.reservations = _line("maint-x", clock() - 60, end, "vm", "MAINT,IGNORE_JOBS") + "\n"
    r = run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    assert r.error is None and "down for maintenance (maint-x)" in r.summary
    assert fake.live() == []  # nothing submitted into the window
    doc = {s["id"]: s for s in json.loads(run_inproc(b"status", home))["services"]}["svc"]
    assert (
        doc["phase"] == "maintenance" and doc["maintenance_until"] == end and doc["maintenance"] == "maint-x"
    )
    assert 290 <= doc["estimated_wait"] <= 300
    raw = run_inproc(
        command(
            "m1", "u", "svc", "/v1/chat/completions", headers={"Content-Type": "application/json"}, body=b"{}"
        ),
        home,
    )
    status, headers, body = parse_as_proxy(raw)
    retry = int(dict((k.lower(), v) for k, v in headers)["retry-after"])
    assert status == 503 and b"down for maintenance until" in body and 290 <= retry <= 300
    # the window ends: the next tick clears it and submits
    fake.reservations = "No reservations in the system\n"
    r = run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    assert len(fake.live()) == 1
    with engine.connect() as c:
        assert c.execute(text("SELECT maintenance_until FROM service_states")).scalar() is None


@pytest.mark.parametrize(
    ("window", "all_nodes", "walltime", "hold"),
    [
        (Window("m", 1100.0, 1200.0, None, True), None, 600, 1200.0),  # Nodes=ALL, walltime reaches it
        (Window("m", 1100.0, 1200.0, None, True), None, 50, None),  # the job ends before it begins
        (Window("m", 1100.0, 1200.0, None, True), None, None, None),  # walltime unknown: Slurm decides
        (Window("m", 1100.0, 1200.0, frozenset({"n1"}), True), frozenset({"n1", "n2"}), 600, None),  # n2 free
        (Window("m", 1100.0, 1200.0, frozenset({"n1", "n2"}), True), frozenset({"n1", "n2"}), 600, 1200.0),
        (Window("m", 900.0, 1200.0, None, True), None, 60, 1200.0),  # active now
        (Window("m", 500.0, 900.0, None, True), None, 600, None),  # over
    ],
)
def test_submit_hold(
    window: Window, all_nodes: frozenset[str] | None, walltime: int | None, hold: float | None
) -> None:
    from saia_ctl.scheduler.maintenance import submit_hold

    assert submit_hold([window], all_nodes, 1000.0, walltime) == hold


def test_no_job_submitted_into_an_upcoming_window(
    home: Path, engine: Any, settings: Settings, import_services: Any
) -> None:
    clock = Clock(time.time())
    sbatch = str(REPO / "tests" / "data" / "scheduler_backend.sbatch")
    import_services(service_config("svc", sbatch=sbatch, minimum_number_instances=1))
    with engine.begin() as c:  # an earlier job had a walltime of ten minutes
        c.execute(
            text(
                "INSERT INTO jobs (name, service_id, state, port, secret, submitted_at, ended_at, end_reason,"
                " walltime_limit, gpus, health_failures) VALUES ('old', 'svc', 'ended', 1, 'x', :t, :t, 'idle',"
                " 600, 0, 0)"
            ),
            {"t": clock() - 3600},
        )
    fake = SlurmWithReservations(clock, time_limit=600)
    fake.reservations = _line("soon", clock() + 120, clock() + 900, "ALL", "MAINT") + "\n"
    r = run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    assert r.error is None and "would run into a maintenance window" in r.summary, r.summary
    assert fake.live() == []
    assert {s["id"]: s for s in json.loads(run_inproc(b"status", home))["services"]}["svc"][
        "phase"
    ] == "offline"
    clock.advance(901)  # the window is over
    run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    assert len(fake.live()) == 1


@pytest.mark.parametrize(
    ("window", "all_nodes", "job", "move"),
    [
        # on n1, the window on n1 starts in 300 s (< job_expiry_time 600), the walltime reaches it, n2 free
        (Window("m", 1300.0, 2000.0, frozenset({"n1"}), True), frozenset({"n1", "n2"}), {}, ("n1",)),
        (
            Window("m", 1300.0, 2000.0, frozenset({"n1", "n2"}), True),
            frozenset({"n1", "n2"}),
            {},
            None,
        ),  # no node outside
        (Window("m", 1300.0, 2000.0, None, True), frozenset({"n1", "n2"}), {}, None),  # Nodes=ALL
        (
            Window("m", 1300.0, 2000.0, frozenset({"n2"}), True),
            frozenset({"n1", "n2"}),
            {},
            None,
        ),  # not its node
        (Window("m", 1700.0, 2000.0, frozenset({"n1"}), True), frozenset({"n1", "n2"}), {}, None),  # not yet
        (
            Window("m", 1300.0, 2000.0, frozenset({"n1"}), True),
            frozenset({"n1", "n2"}),
            {"walltime_limit": 1200},
            None,
        ),
        (
            Window("m", 1300.0, 2000.0, frozenset({"n1"}), True),
            frozenset({"n1", "n2"}),
            {"state": "starting"},
            None,
        ),
        (Window("m", 1300.0, 2000.0, frozenset({"n1"}), True), None, {}, None),  # nodes unknown
        (Window("m", 500.0, 900.0, frozenset({"n1"}), True), frozenset({"n1", "n2"}), {}, None),  # over
    ],
)
def test_move_off(
    window: Window, all_nodes: frozenset[str] | None, job: dict[str, Any], move: tuple[str, ...] | None
) -> None:
    fields: dict[str, Any] = {"state": "ready", "started_at": 0.0, "walltime_limit": 3600, **job}
    view = JobView(
        7,
        "j7",
        "a",
        107,
        fields["state"],
        "n1",
        1,
        0.0,
        fields["started_at"],
        0.0,
        None,
        fields["walltime_limit"],
    )
    queue = [SlurmJob(107, "j7", "RUNNING", node="n1")]
    got = move_off([window], [_svc("a")], [view], queue, all_nodes, 1000.0)
    assert got == ({} if move is None else {7: move})


class TwoNodes(SlurmWithReservations):
    nodes = "n1\nn2\n"

    def run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        out = {"scontrol": self.reservations, "sinfo": self.nodes}.get(name, "")
        return subprocess.CompletedProcess([name, *args], 0, out, "")


@pytest.mark.parametrize("nodes", ["n1\nn2\n", "n1\n"])
def test_job_replaced_before_a_window_on_its_node(
    engine: Any, settings: Settings, import_services: Any, nodes: str
) -> None:
    """The real test cluster has one node: a node outside the window exists only in the fake."""
    clock = Clock(time.time())
    sbatch = str(REPO / "tests" / "data" / "scheduler_backend.sbatch")
    import_services(service_config("svc", sbatch=sbatch, minimum_number_instances=1))  # job_expiry_time 9:00
    fake = TwoNodes(clock, time_limit=3600)
    fake.nodes = nodes
    fake.reservations = "No reservations in the system\n"
    run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    (old,) = fake.live()
    fake.start(old.job_id, "n1")
    run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    fake.reservations = _line("soon", clock() + 300, clock() + 900, "n1", "MAINT") + "\n"
    r = run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    assert r.error is None
    if nodes == "n1\n":  # nowhere else to go: nothing submitted, the job serves on
        assert [j.job_id for j in fake.live()] == [old.job_id]
        return
    (new,) = [j for j in fake.live() if j.job_id != old.job_id]
    assert "--exclude=n1" in fake.jobs[new.job_id].args
    with engine.connect() as c:
        assert (
            c.execute(text("SELECT state FROM jobs WHERE slurm_job_id = :s"), {"s": old.job_id}).scalar()
            == "ready"
        )
    fake.start(new.job_id, "n2")
    run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
    with engine.connect() as c:
        rows = dict(c.execute(text("SELECT slurm_job_id, state FROM jobs WHERE ended_at IS NULL")).all())
        reason = c.execute(
            text("SELECT end_reason FROM jobs WHERE slurm_job_id = :s"), {"s": old.job_id}
        ).scalar()
    assert rows[new.job_id] == "ready" and rows[old.job_id] == "draining" and reason == "rotated"
