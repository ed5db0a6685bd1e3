"""A tick killed with SIGKILL at random points, many times, on the real Slurm.

Each round gives the tick work (its job was cancelled by hand, so it must
close the row and submit a replacement), starts ``python -m saia_ctl.scheduler``
as the request path does, kills it after a random delay, lets the lease
expire, runs one normal tick and checks what survived: the next tick ran (no
stuck lease), no row has two Slurm jobs and no Slurm job has two rows (never
a duplicate), every Slurm job with our prefix belongs to a live row (never an
orphan), and the service is never above its maximum.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import service_config
from tests.support.paths import PYTHON, REPO

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROUNDS = 20
MAXIMUM = 2


@pytest.fixture
def world(
    cluster: Any, home: Path, import_services: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    from saia_ctl.db import engine_for
    from saia_ctl.scheduler.tick import make_slurm
    from saia_ctl.settings import Settings

    with open(home / "saia.conf", "a") as f:
        f.write(f"SAIA_LEASE_TTL=1\nSAIA_SLURM_CONF={cluster.slurm_conf}\nSAIA_PYTHON={PYTHON}\n")
    monkeypatch.setenv(
        "SAIA_TEST_PYTHON", sys.executable
    )  # the test backend's interpreter (sbatch exports it)
    import_services(
        service_config(
            "svc-kill",
            sbatch=str(REPO / "sbatch" / "test-llm.sbatch"),
            minimum_number_instances=1,
            maximum_number_instances=MAXIMUM,
        )
    )
    settings = Settings(home=str(home))
    ctx = {"home": home, "settings": settings, "engine": engine_for(settings), "slurm": make_slurm(settings)}
    try:
        yield ctx
    finally:
        for _ in range(3):
            try:
                for j in ours(ctx):
                    ctx["slurm"].cancel(j.job_id)
                break
            except Exception:
                time.sleep(2)


def ours(ctx: dict[str, Any]) -> list[Any]:
    from saia_ctl.scheduler.names import name_prefix

    return [j for j in ctx["slurm"].queue(name_prefix(ctx["settings"].job_prefix)) if not j.is_finished]


def live_rows(home: Path) -> list[dict[str, Any]]:
    import sqlite3

    with closing(sqlite3.connect(home / "saia.db")) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM jobs WHERE ended_at IS NULL ORDER BY id")]


def killed_tick(home: Path, delay: float, wait_for_exit: bool = False) -> tuple[int | None, float]:
    env = {**os.environ, "SAIA_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [PYTHON, "-m", "saia_ctl.scheduler"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if wait_for_exit:
        return proc.wait(delay), delay
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return (proc.returncode if not alive else -signal.SIGKILL), delay


def test_tick_killed_at_random_points_leaves_nothing_the_next_tick_does_not_repair(
    world: dict[str, Any],
) -> None:
    from saia_ctl.scheduler.tick import run_tick

    home, slurm = world["home"], world["slurm"]
    rng = random.Random(int(os.environ.get("SAIA_FAULT_SEED", "77")))
    first = run_tick(world["engine"], world["settings"], slurm, watch=False)
    assert first.ran, first.text()
    # Kill points are spread over the time a whole tick process takes on this machine
    # (with work to do: a job cancelled by hand), so that most land inside the tick.
    spans = []
    for _ in range(2):
        for j in ours(world):
            slurm.cancel(j.job_id)
        time.sleep(0.3)
        t0 = time.monotonic()
        code, _ = killed_tick(home, 600.0, wait_for_exit=True)
        spans.append(time.monotonic() - t0)
        assert code == 0, "an unkilled tick failed"
        time.sleep(1.2)
    span = sorted(spans)[0]
    killed = 0
    for n in range(ROUNDS):
        jobs = ours(world)
        if jobs and rng.random() < 0.7:  # work for the killed tick: a job gone by hand
            slurm.cancel(rng.choice(jobs).job_id)
            time.sleep(0.3)
        code, delay = killed_tick(home, rng.uniform(0.05, 0.9 * span))
        killed += code == -signal.SIGKILL
        time.sleep(1.2)  # the killed tick's lease (TTL 1 s) expires
        result = run_tick(world["engine"], world["settings"], slurm, watch=False)
        assert result.ran, (
            f"round {n} (killed after {delay:.2f} s): the next tick did not run: {result.text()}"
        )
        rows = live_rows(home)
        jobs = ours(world)
        ctx = f"round {n}, killed after {delay:.2f} s; rows={[(r['id'], r['state'], r['slurm_job_id']) for r in rows]} slurm={[(j.job_id, j.name) for j in jobs]}"
        slurm_ids = [r["slurm_job_id"] for r in rows if r["slurm_job_id"] is not None]
        assert len(slurm_ids) == len(set(slurm_ids)), "two rows for one Slurm job: " + ctx
        names = Counter(j.name for j in jobs)
        assert all(c == 1 for c in names.values()), "two Slurm jobs for one row: " + ctx
        row_names = {r["name"] for r in rows}
        assert {j.name for j in jobs} <= row_names, "an orphan Slurm job survived the next tick: " + ctx
        assert len(rows) <= MAXIMUM, "above the maximum: " + ctx
        assert rows, "the minimum of 1 is not kept: " + ctx
    assert killed >= ROUNDS // 2, f"only {killed} of {ROUNDS} ticks were killed before they ended"
    print(f"ticks killed with SIGKILL: {killed}/{ROUNDS}, every one repaired by the next tick")
