"""The live catalogue and changes to services on the real single-node Slurm
(``-m cluster``): a pending job shows `queued` with Slurm's reason; a changed
batch script is replaced rolling under a steady request stream with no failed
request; a service removed from config.json drains and its requests complete;
a MAINT reservation puts a service in `maintenance` with the right Retry-After.

Shared cluster: nothing here holds the node; the reservation is short, named
uniquely and deleted at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from saia_ctl.db import engine_for
from saia_ctl.scheduler.names import name_prefix
from saia_ctl.scheduler.tick import TickResult, make_slurm, run_tick
from saia_ctl.settings import Settings
from saia_ctl.slurm import SlurmError
from tests.support.fixtures import service_config
from tests.support.paths import REPO
from tests.support.wire import chat_body, command, parse_as_proxy, run_process

pytestmark = pytest.mark.cluster
BACKEND = REPO / "tests" / "data" / "scheduler_backend.sbatch"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def real(cluster: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("SAIA_TEST_PYTHON", sys.executable)
    monkeypatch.setenv("SAIA_TEST_BACKEND", str(REPO / "tests" / "support" / "backend.py"))
    monkeypatch.setenv("SLURM_CONF", cluster.slurm_conf)
    settings = Settings(home=str(home))
    slurm = make_slurm(settings)
    try:
        yield {"settings": settings, "engine": engine_for(settings), "slurm": slurm, "home": home}
    finally:
        for _ in range(3):
            try:
                for j in slurm.queue(name_prefix(settings.job_prefix)):
                    if not j.is_finished:
                        slurm.cancel(j.job_id)
                break
            except SlurmError:
                time.sleep(2)


def rows(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as c:
        out = [dict(r) for r in c.execute(text("SELECT * FROM jobs ORDER BY id")).mappings()]
        c.rollback()
    return out


def ticker(real: dict[str, Any]) -> Callable[[], TickResult]:
    return lambda: run_tick(real["engine"], real["settings"], real["slurm"], watch=False)


def wait_for(
    pred: Callable[[], bool], tick: Callable[[], TickResult], seconds: float, every: float = 1.0
) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick()
        if pred():
            return True
        time.sleep(every)
    return False


def status(home: Path) -> dict[str, dict[str, Any]]:
    out = run_process(b"status", home).stdout
    return {s["id"]: s for s in json.loads(out)["services"]}


def script(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / name
    path.write_text(BACKEND.read_text().replace("#SBATCH --ntasks=1", "#SBATCH --ntasks=1" + extra))
    return path


def test_pending_job_shows_queued_with_slurms_reason(
    real: dict[str, Any], import_services: Any, tmp_path: Path
) -> None:
    # A start time an hour away: PENDING with reason BeginTime, without holding the node.
    later = script(tmp_path, "later.sbatch", "\n#SBATCH --begin=now+3600")
    import_services(service_config("svc", sbatch=str(later)))
    tick = ticker(real)
    assert wait_for(lambda: any(r["slurm_reason"] for r in rows(real["engine"])), tick, 30)
    s = status(real["home"])["svc"]
    assert (s["phase"], s["reason"], s["state"]) == ("queued", "BeginTime", "starting")
    # Slurm's own estimate: it cannot start before its begin time
    assert s["slurm_start"] >= time.time() + 3000 and s["estimated_wait"] >= 3000


def _stream(
    home: Path, service: str, stop: threading.Event, stats: dict[str, Any], body: bytes, pause: float
) -> None:
    while not stop.is_set():
        rid = f"c{uuid.uuid4().hex[:12]}"
        try:
            p = run_process(
                command(rid, "u", service, "/v1/chat/completions", headers=JSON, body=body), home, timeout=60
            )
            code, _h, payload = parse_as_proxy(p.stdout)
        except Exception as e:  # a failed request, whatever the cause
            stats["failed"].append(f"{rid}: {type(e).__name__}: {e}")
            continue
        if code == 200:
            stats["ok"] += 1
        else:
            stats["failed"].append(f"{rid}: {code} {payload[:200]!r}")
        stop.wait(pause)


def test_rolling_change_under_load_fails_no_request(
    real: dict[str, Any], import_services: Any, tmp_path: Path
) -> None:
    path = script(tmp_path, "svc.sbatch")
    config = service_config("svc", sbatch=str(path), minimum_number_instances=1, maximum_number_instances=1)
    import_services(config)
    engine, tick = real["engine"], ticker(real)
    assert wait_for(lambda: any(r["state"] == "ready" for r in rows(engine)), tick, 120), rows(engine)
    first = rows(engine)[0]
    stats: dict[str, Any] = {"ok": 0, "failed": []}
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_stream, args=(real["home"], "svc", stop, stats, chat_body(), 0.0), daemon=True
        )
        for _ in range(3)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        path.write_text(path.read_text() + "\n# model version 2\n")
        import_services(config)
        replaced = wait_for(
            lambda: (
                rows(engine)[0]["ended_at"] is not None
                and any(r["state"] == "ready" and r["id"] != first["id"] for r in rows(engine))
            ),
            tick,
            120,
            every=1.0,
        )
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(70)
    seconds = time.monotonic() - t0
    print(f"rolling change: {stats['ok']} requests in {seconds:.1f} s, {len(stats['failed'])} failed")
    all_rows = rows(engine)
    assert replaced, all_rows
    assert all_rows[0]["end_reason"] == "rotated" and all_rows[1]["replaces_job_id"] == first["id"]
    assert all_rows[1]["spec"] != first["spec"]
    assert stats["failed"] == [], stats["failed"][:5]
    assert stats["ok"] / seconds >= 5, (stats["ok"], seconds)


def test_removed_service_drains_and_its_requests_complete(
    real: dict[str, Any], import_services: Any, tmp_path: Path
) -> None:
    import_services(
        service_config("gone", sbatch=str(BACKEND)),
        service_config("stays", sbatch=str(BACKEND), minimum_number_instances=0),
    )
    engine, tick = real["engine"], ticker(real)
    assert wait_for(lambda: any(r["state"] == "ready" for r in rows(engine)), tick, 120), rows(engine)
    slow = chat_body(stream=True, max_tokens=16, token_delay=0.5)  # about 8 s each
    results: list[tuple[int, bytes]] = []

    def one(i: int) -> None:
        p = run_process(
            command(
                f"slow{i}{uuid.uuid4().hex[:6]}", "u", "gone", "/v1/chat/completions", headers=JSON, body=slow
            ),
            real["home"],
            timeout=60,
        )
        code, _h, payload = parse_as_proxy(p.stdout)
        results.append((code, payload))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)  # the requests are in flight
    import_services(service_config("stays", sbatch=str(BACKEND), minimum_number_instances=0))
    tick()
    job = rows(engine)[0]
    assert job["state"] == "draining" and job["end_reason"] == "disabled"
    assert wait_for(lambda: rows(engine)[0]["ended_at"] is not None, tick, 60, every=2.0), rows(engine)
    for t in threads:
        t.join(30)
    assert [c for c, _ in results] == [200, 200, 200], results
    assert all(b"[DONE]" in p for _, p in results)
    with engine.connect() as c:
        n = c.execute(
            text("SELECT count(*) FROM requests WHERE service_id = 'gone' AND outcome = 'ok'")
        ).scalar()
        c.rollback()
    assert n == 3  # its history stays
    assert "gone" not in status(real["home"])


def test_maint_reservation_puts_service_in_maintenance(
    real: dict[str, Any], import_services: Any, cluster: Any
) -> None:
    import_services(service_config("svc", sbatch=str(BACKEND), minimum_number_instances=0))
    name = f"saia-j16-{uuid.uuid4().hex[:8]}"
    # Short, so that other users of the shared node wait at most this long.
    created = subprocess.run(
        [
            "scontrol",
            "create",
            "reservation",
            f"ReservationName={name}",
            "StartTime=now",
            "Duration=1",
            "Nodes=ALL",
            "Users=root",
            "Flags=MAINT,IGNORE_JOBS",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert created.returncode == 0, created.stderr
    try:
        shown = subprocess.run(
            ["scontrol", "show", "reservation", "-o", name], capture_output=True, text=True, timeout=30
        )
        end_text = shown.stdout.split("EndTime=", 1)[1].split()[0]
        from datetime import datetime

        end = datetime.fromisoformat(end_text).astimezone().timestamp()
        r = run_tick(real["engine"], real["settings"], real["slurm"], watch=False)
        assert r.error is None and f"down for maintenance ({name})" in r.summary, r.summary
        s = status(real["home"])["svc"]
        assert s["phase"] == "maintenance" and s["maintenance"] == name and s["maintenance_until"] == end
        p = run_process(
            command("maint1", "u", "svc", "/v1/chat/completions", headers=JSON, body=chat_body()),
            real["home"],
        )
        code, headers, payload = parse_as_proxy(p.stdout)
        retry = int(dict((k.lower(), v) for k, v in headers)["retry-after"])
        assert code == 503 and b"down for maintenance until" in payload
        assert abs(time.time() + retry - end) <= 3
        assert [
            j for j in real["slurm"].queue(name_prefix(real["settings"].job_prefix)) if not j.is_finished
        ] == []
    finally:
        subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True, timeout=30)
    r = run_tick(real["engine"], real["settings"], real["slurm"], watch=False)
    assert status(real["home"])["svc"]["phase"] != "maintenance"
