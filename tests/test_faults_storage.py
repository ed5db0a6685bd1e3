"""Storage faults: the database on a filesystem that turns read-only, or fills up.

The database lives on its own small tmpfs (``SAIA_DB_URL``), as it would on a
shared filesystem; the logs stay in the state directory. During the fault the
request path answers (``status``, ``keep-alive``) or refuses a request with a
complete 503 and a log line (accounting is exact or the request does not
run), and a tick fails cleanly (exit 1, one line, no traceback). After the
fault is cleared nothing recorded earlier is missing or changed, the file
passes ``PRAGMA integrity_check``, and requests and ticks work again.
Needs root (mount); as root, file modes would not make anything read-only.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.paths import PYTHON, REPO
from tests.support.wire import (
    add_ready_job,
    assert_error_answer,
    integrity,
    parse_http,
    run_process,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

SERVICE = "svc-storage"
SBATCH = str(REPO / "examples" / "saia" / "sbatch" / "example-service.sbatch")


def sh(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{argv}: {r.stderr}"


@pytest.fixture
def dbfs(home: Path, tmp_path: Path, engine: Any, import_services: Callable[..., None]) -> Iterator[Path]:
    """The migrated database moved onto a 4 MiB tmpfs; saia.conf points SAIA_DB_URL at it."""
    # A short hold: with no job the request is held for a backend before its 503.
    import_services(service_config(SERVICE, sbatch=SBATCH, minimum_number_instances=0, request_hold_time=1))
    engine.dispose()  # no connection of this process may keep the file open (remount would be busy)
    mnt = tmp_path / "dbfs"
    mnt.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt))
    try:
        shutil.move(str(home / "saia.db"), str(mnt / "saia.db"))
        fake_bin = tmp_path / "slurm-bin"  # an empty queue: the tick reaches its writes
        fake_bin.mkdir()
        for name in ("squeue", "sbatch", "scancel", "scontrol"):
            (fake_bin / name).write_text("#!/bin/sh\nexit 0\n")
            (fake_bin / name).chmod(0o755)
        with open(home / "saia.conf", "a") as f:
            f.write(f"SAIA_DB_URL=sqlite:///{mnt / 'saia.db'}\nSAIA_SLURM_BIN={fake_bin}\n")
            f.write("SAIA_BUSY_TIMEOUT=2\nSAIA_TICK_INTERVAL=0\n")
        yield mnt
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True, timeout=30)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def request(n: str) -> bytes:
    return f'{n}\njdoe@uni-x.de\n{SERVICE}\n/v1/chat/completions\n -X POST -H "content-type: application/json" -d {{"n":1}}'.encode()


def snapshot(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn, conn:
        rows = conn.execute("SELECT * FROM requests ORDER BY id").fetchall()
        rows += conn.execute("SELECT id, state, port, secret, ended_at FROM jobs ORDER BY id").fetchall()
        rows += conn.execute("SELECT * FROM services ORDER BY id").fetchall()
    return rows


def tick(home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "SAIA_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [PYTHON, "-m", "saia_ctl.scheduler"], env=env, capture_output=True, text=True, timeout=120
    )


def ticks(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn, conn:
        return int(conn.execute("SELECT count(*) FROM ticks").fetchone()[0])


def serve_some(home: Path, prefix: str, n: int = 5) -> None:
    for i in range(n):
        r = run_process(request(f"{prefix}-{i}"), home)
        assert parse_http(r.stdout).status == 200, r.stdout[:300]


def route_log(home: Path) -> str:
    p = home / "logs" / "route.log"
    return p.read_text() if p.exists() else ""


def check_during_fault(home: Path, db: Path, before: list[tuple[object, ...]], what: str) -> None:
    log_before = route_log(home)
    r = run_process(request(f"during-{what}"), home)
    ans = parse_http(r.stdout, complete=False)
    if ans.status != 200:  # refused: a complete 503 and a log line saying why
        assert_error_answer(r.stdout, (503,))
        new_log = route_log(home)[len(log_before) :]
        assert "503" in new_log and "request" in new_log, new_log
    assert b"Traceback" not in r.stdout + r.stderr
    # status and keep-alive still answer
    r = run_process(b"status", home)
    assert b"Traceback" not in r.stdout + r.stderr and r.stdout.strip(), r.stderr
    assert run_process(b"keep-alive", home).stdout == b"OK\n"
    # a tick fails cleanly: exit status 0/1, at most a line or two, never a traceback
    t = tick(home)
    assert t.returncode in (0, 1), t.stderr
    assert "Traceback" not in t.stderr + t.stdout, t.stderr
    # nothing recorded earlier changed
    assert snapshot(db)[: len(before)] == before or snapshot(db) == before


def check_after_fault(home: Path, db: Path, before: list[tuple[object, ...]], what: str) -> None:
    assert integrity(db) == "ok"
    after = snapshot(db)
    old_requests = [r for r in before if isinstance(r[1], str) and r[1].startswith("pre-")]
    assert all(r in after for r in old_requests) and len(old_requests) == 5
    serve_some(home, f"post-{what}", 3)
    n = ticks(db)
    t = tick(home)
    assert t.returncode == 0, t.stderr  # the lease is not stuck
    assert ticks(db) > n  # (a tick started by keep-alive may run too)


def test_read_only_database(home: Path, dbfs: Path) -> None:
    db = dbfs / "saia.db"
    with FakeBackend("ok") as b:
        _add_job(db, b.port)
        serve_some(home, "pre")
        before = snapshot(db)
        sh("mount", "-o", "remount,ro", str(dbfs))
        try:
            with pytest.raises(OSError):
                (dbfs / "probe").write_text("x")  # really read-only, even for root
            check_during_fault(home, db, before, "ro")
            assert snapshot(db) == before  # nothing could change
        finally:
            sh("mount", "-o", "remount,rw", str(dbfs))
        check_after_fault(home, db, before, "ro")


def test_disk_full(home: Path, dbfs: Path) -> None:
    db = dbfs / "saia.db"
    with FakeBackend("ok") as b:
        _add_job(db, b.port)
        serve_some(home, "pre")
        before = snapshot(db)
        filler = dbfs / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        try:
            check_during_fault(home, db, before, "full")
            assert integrity(db) == "ok"
        finally:
            filler.unlink()
        check_after_fault(home, db, before, "full")


def _add_job(db: Path, port: int) -> None:
    """add_ready_job against the database on the tmpfs."""
    home_like = db.parent
    add_ready_job(home_like, SERVICE, port)
