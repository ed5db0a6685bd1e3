"""Rolling replacement after a service's batch script changed: the named planner
step ``rolling_step`` (table-driven) and whole ticks against FakeSlurm, where the
number of ready jobs never drops below what it was."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from saia_ctl.config import job_spec
from saia_ctl.scheduler import run_tick
from saia_ctl.scheduler.plan import DRAIN_GRACE, RollingStep, rolling_step
from saia_ctl.scheduler.probes import ProbeTarget
from saia_ctl.scheduler.views import ProbeResult
from saia_ctl.settings import Settings
from saia_ctl.slurm_fake import FakeSlurm
from tests.support.fixtures import Clock, service_config
from tests.support.paths import REPO

NEW, OLD = "new", "old"


@pytest.mark.parametrize(
    ("spec", "jobs", "replace", "cancel"),
    [
        # no spec known (an old database): nothing happens
        (None, [(1, "ready", OLD, None)], set(), ()),
        # all current, or submitted before fingerprints: nothing
        (NEW, [(1, "ready", NEW, None), (2, "ready", None, None)], set(), ()),
        # two old ready jobs: the oldest first, one at a time
        (NEW, [(2, "ready", OLD, None), (1, "ready", OLD, None)], {1}, ()),
        # its replacement is on its way: keep replacing it, not the next
        (NEW, [(1, "ready", OLD, None), (2, "ready", OLD, None), (3, "pending", NEW, 1)], {1}, ()),
        (NEW, [(1, "ready", OLD, None), (2, "ready", OLD, None), (3, "starting", NEW, 2)], {2}, ()),
        # old jobs that serve nothing yet are submitted anew
        (NEW, [(1, "pending", OLD, None), (2, "starting", OLD, None)], set(), (1, 2)),
        # a replacement of the old spec (the script changed twice) goes; its job is picked again
        (NEW, [(1, "ready", OLD, None), (2, "pending", OLD, 1), (3, "ready", OLD, None)], {1}, (2,)),
        # draining old jobs are left to drain
        (NEW, [(1, "draining", OLD, None)], set(), ()),
    ],
)
def test_rolling_step(
    spec: str | None,
    jobs: Sequence[tuple[int, str, str | None, int | None]],
    replace: set[int],
    cancel: tuple[int, ...],
) -> None:
    assert rolling_step(spec, jobs) == RollingStep(frozenset(replace), cancel)


def _healthy(targets: Sequence[ProbeTarget], timeout: float) -> dict[int, ProbeResult]:
    return {t.job_id: ProbeResult(True, f"GET {t.path}: 200") for t in targets}


def _jobs(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(text("SELECT * FROM jobs ORDER BY id")).mappings().all()
        c.rollback()
    return [dict(r) for r in rows]


def test_changed_batch_script_replaces_jobs_rolling(
    tmp_path: Path, engine: Any, settings: Settings, clock: Clock, import_services: Any
) -> None:
    script = tmp_path / "svc.sbatch"
    shutil.copy(REPO / "tests" / "data" / "scheduler_backend.sbatch", script)
    config = service_config("svc", sbatch=str(script), minimum_number_instances=2, maximum_number_instances=2)
    import_services(config)
    fake = FakeSlurm(clock, time_limit=86400)

    def tick() -> None:
        r = run_tick(engine, settings, fake, clock, prober=_healthy, watch=False, hostname="h")
        assert r.error is None, r.text()
        for j in fake.live():
            if j.state == "PENDING":
                fake.start(j.job_id)
        clock.advance(DRAIN_GRACE + 1)

    for _ in range(3):
        tick()
    old = [j for j in _jobs(engine) if j["state"] == "ready"]
    assert len(old) == 2 and {j["spec"] for j in old} == {job_spec(str(script))}

    script.write_text(script.read_text() + "\n# a new model version\n")
    import_services(config)
    new_spec = job_spec(str(script))
    assert new_spec != old[0]["spec"]
    ready_counts, counted = [], []
    for _ in range(12):
        tick()
        rows = _jobs(engine)
        ready_counts.append(sum(1 for j in rows if j["state"] == "ready"))
        live = [j for j in rows if j["ended_at"] is None]
        counted.append(sum(1 for j in live if j["state"] != "draining"))
        if all(j["spec"] == new_spec for j in live) and ready_counts[-1] == 2:
            break
    assert min(ready_counts) >= 2, ready_counts  # never fewer ready jobs than before
    rows = _jobs(engine)
    assert {j["end_reason"] for j in rows if j["id"] in {o["id"] for o in old}} == {"rotated"}
    assert [j["spec"] for j in rows if j["ended_at"] is None] == [new_spec, new_spec]
    # one replacement at a time: never more than one job above the two wanted
    assert max(counted) == 3, counted
