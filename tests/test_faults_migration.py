"""A database left by an older migration, with real data in it, upgraded in place.

Extends tests/test_migrations.py (services only): here the request path and
the CLI wrote rows in every table of the oldest schema, the database is taken
down to the first revision, commands refuse it with a one-line hint, and the
real ``saia-ctl db upgrade`` brings it to head with every row intact.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from saia_ctl.migrate import downgrade, head_revision
from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.paths import REPO
from tests.support.wire import add_ready_job, integrity, parse_http, request_rows, run_inproc

SAIA = str(REPO / ".venv" / "bin" / "saia-ctl")
SBATCH = str(REPO / "examples" / "saia" / "sbatch" / "example-service.sbatch")
TABLES = ("services", "service_states", "jobs", "requests")


def columns(db: Path) -> dict[str, list[str]]:
    with closing(sqlite3.connect(db)) as conn:
        return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in TABLES}


def dump(db: Path, cols: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables, in the given columns (those of the oldest schema)."""
    with closing(sqlite3.connect(db)) as conn:
        return {
            t: conn.execute(f"SELECT {', '.join(cols[t])} FROM {t} ORDER BY 1").fetchall() for t in TABLES
        }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAIA, *args], capture_output=True, text=True, timeout=120)


def test_oldest_schema_with_data_is_upgraded_intact(
    home: Path, engine: Any, import_services: Callable[..., None]
) -> None:
    import_services(service_config("svc-a", sbatch=SBATCH), service_config("svc-b", sbatch=SBATCH))
    with FakeBackend("ok") as b:
        add_ready_job(home, "svc-a", b.port)
        for i in range(5):
            cmd = f"old-{i}\nu{i}@x.de\nsvc-a\n/v1/chat/completions\n -X POST -d {{}}".encode()
            assert parse_http(run_inproc(cmd, home)).status == 200
    rows = request_rows(home)
    assert len(rows) == 5 and all(r["outcome"] == "ok" and r["output_tokens"] == 5 for r in rows)
    db = home / "saia.db"
    at_head = columns(db)
    full = dump(db, at_head)

    downgrade(engine, "0001")
    engine.dispose()
    old = columns(db)  # later migrations add columns: the old schema's are compared
    assert all(set(old[t]) <= set(at_head[t]) for t in TABLES)
    before = dump(db, old)
    assert all(before[t] for t in TABLES)
    # the data of the old schema's columns survived the downgrade
    keep = {t: [at_head[t].index(c) for c in old[t]] for t in TABLES}
    assert {t: [tuple(row[i] for i in keep[t]) for row in full[t]] for t in TABLES} == before

    r = cli("services", "list")
    assert r.returncode == 1 and "db upgrade" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("db", "upgrade")
    assert r.returncode == 0, r.stderr
    r = cli("db", "current")
    assert head_revision() in r.stdout
    assert dump(db, old) == before
    assert integrity(db) == "ok"
    r = cli("services", "list", "--format", "json")
    assert r.returncode == 0 and "svc-b" in r.stdout
    with FakeBackend("ok") as b:  # and the upgraded database serves again
        add_ready_job(home, "svc-b", b.port)
        cmd = b"new-1\nu@x.de\nsvc-b\n/v1/models\n -X GET"
        assert parse_http(run_inproc(cmd, home)).status == 200
    assert len(request_rows(home)) == 6
