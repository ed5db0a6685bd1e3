"""The request path's raw SQL and the SQLAlchemy models describe the same schema.

Every statement of ``saia_ctl.request_path.store`` is compiled by SQLite against a
database migrated to head (a missing table or column fails there); every
column they name exists in ``Base.metadata`` with a type that fits what the
request path stores; the INSERT supplies every NOT NULL column that has no
server default (ORM-side defaults do not apply to raw SQL); and rows written
by ``record_start``/``record_end`` read back through the ORM.
"""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Boolean, Float, Integer, String, Text, select

from saia_ctl import rawdb
from saia_ctl.db import read_session
from saia_ctl.models import Base, Request, UTCTimestamp
from saia_ctl.request_path import admission, store
from tests.support.fixtures import service_config

STATEMENTS = {
    name: value
    for module in (store, admission)
    for name, value in vars(module).items()
    if name.endswith("_SQL") and isinstance(value, str)
}

# The Python type the request path writes (or reads) per column it names.
WRITTEN: dict[str, dict[str, type]] = {
    "requests": {
        "inference_id": str,
        "user_id": str,
        "service_id": str,
        "job_id": int,
        "method": str,
        "path": str,
        "started_at": float,
        "first_byte_at": float,
        "ended_at": float,
        "status": int,
        "outcome": str,
        "bytes_in": int,
        "bytes_out": int,
        "input_tokens": int,
        "output_tokens": int,
        "error": str,
        "handler_host": str,
        "handler_pid": int,
    },
    "service_states": {
        "service_id": str,
        "demand_at": float,
        "load_avg": float,
        "target": int,
        "context_length": int,
        "maintenance_until": float,
        "maintenance_name": str,
    },
    "jobs": {
        "id": int,
        "node": str,
        "port": int,
        "secret": str,
        "state": str,
        "service_id": str,
        "ended_at": float,
        "submitted_at": float,
        "ready_at": float,
        "started_at": float,
        "walltime_limit": int,
        "slurm_reason": str,
        "slurm_start": float,
    },
    "services": {
        "id": str,
        "name": str,
        "owned_by": str,
        "input": str,
        "output": str,
        "enabled": bool,
        "request_hold_time": float,
        "minimum_number_instances": int,
        "maximum_number_instances": int,
        "inferences_per_instance": int,
        "config_json": str,
        "admin_state": str,
    },
    "ticks": {"started_at": float},
    "limits": {"scope": str, "subject": str, "service_id": str, "kind": str, "value": float},
    "project_members": {"project": str, "member": str},
    "limit_counters": {"subject": str, "service_id": str, "kind": str, "window": str, "value": float},
}


def _fits(column_type: Any, py: type) -> bool:
    if isinstance(column_type, UTCTimestamp):
        return py is float
    if isinstance(column_type, Boolean):
        return py is bool
    if isinstance(column_type, Float):
        return py is float
    if isinstance(column_type, Integer):
        return py is int
    if isinstance(column_type, (String, Text)):
        return py is str
    return False


def test_every_statement_compiles_against_the_migrated_schema(home: Path) -> None:
    assert len(STATEMENTS) >= 10
    conn = sqlite3.connect(home / "saia.db")
    try:
        for name, sql in STATEMENTS.items():
            try:
                conn.execute(f"EXPLAIN {sql}", {p: None for p in re.findall(r":(\w+)", sql)})
            except sqlite3.Error as e:
                pytest.fail(f"store.{name} does not fit the migrated schema: {e}")
    finally:
        conn.close()


def test_named_columns_exist_in_the_models_with_fitting_types() -> None:
    tables = Base.metadata.tables
    for table, columns in WRITTEN.items():
        assert table in tables, table
        for column, py in columns.items():
            assert column in tables[table].c, f"{table}.{column} is not in the models"
            col_type = tables[table].c[column].type
            assert _fits(col_type, py), f"{table}.{column}: {col_type!r} does not hold a {py.__name__}"
    # Every identifier the statements use is one of those columns (or a table, alias, keyword).
    known = {c for cols in WRITTEN.values() for c in cols} | set(WRITTEN)
    for name, sql in STATEMENTS.items():
        for table in re.findall(r"\b(?:FROM|INTO|(?<!DO )UPDATE|JOIN)\s+(\w+)", sql):
            assert table in WRITTEN, f"store.{name} uses table {table} that the test does not check"
        for column in re.findall(r"\b(?:[a-z]{1,2})\.(\w+)", sql):
            assert column in known, f"store.{name} uses column {column} not checked here"


def _columns(sql: str) -> list[str]:
    return [c.strip() for c in re.search(r"\(([^)]*)\)\s*VALUES", sql, re.S).group(1).split(",")]  # type: ignore[union-attr]


def test_inserts_supply_every_required_column() -> None:
    for sql, table in ((store.INSERT_REQUEST_SQL, "requests"), (store.DEMAND_INSERT_SQL, "service_states")):
        given = set(_columns(sql))
        for col in Base.metadata.tables[table].c:
            required = not col.nullable and col.server_default is None and col.autoincrement is not True
            if required and not col.primary_key:
                assert col.name in given, f"{table}.{col.name} is NOT NULL without a server default"
            assert col.name in given or col.nullable or col.primary_key or col.server_default is not None
    update_cols = set(re.findall(r"(\w+) = :", store.FINISH_REQUEST_SQL))
    assert update_cols >= {
        "first_byte_at",
        "ended_at",
        "status",
        "outcome",
        "bytes_out",
        "input_tokens",
        "output_tokens",
    }


def test_rows_written_raw_read_back_through_the_orm(home: Path, engine: Any, import_services: Any) -> None:
    import_services(service_config("svc"))
    conn = rawdb.connect(str(home / "saia.db"), journal_mode="delete", busy_timeout=5)
    now = time.time()
    try:
        with rawdb.immediate(conn):
            rid, recorded = store.record_start(
                conn, inference_id="i1", user_id="u@x", service_id="svc", job_id=None, method="POST",
                path="/v1/chat/completions", started_at=now, handler_host="login1", handler_pid=42, bytes_in=17,
            )  # fmt: skip
            prev = store.record_demand(conn, "svc", now)
        with rawdb.immediate(conn):
            store.record_end(
                conn, rid, job_id=None, first_byte_at=now + 0.5, ended_at=now + 1.0, status=200, outcome="ok",
                bytes_in=17, bytes_out=99, input_tokens=3, output_tokens=4,
            )  # fmt: skip
        # A re-used id is kept under a suffix.
        with rawdb.immediate(conn):
            _, again = store.record_start(
                conn, inference_id="i1", user_id="u@x", service_id="svc", job_id=None, method="GET",
                path="/", started_at=now, handler_host="login1", handler_pid=42,
            )  # fmt: skip
    finally:
        conn.close()
    assert recorded == "i1" and again == "i1~2" and prev is None
    with read_session(engine) as s:
        row = s.scalars(select(Request).where(Request.id == rid)).one()
        assert isinstance(row.started_at, datetime) and row.started_at.tzinfo is not None
        assert abs(row.started_at.timestamp() - now) < 1e-3
        assert (row.status, row.outcome, row.bytes_in, row.bytes_out, row.input_tokens, row.output_tokens) == (
            200, "ok", 17, 99, 3, 4,
        )  # fmt: skip
        assert row.ended_at is not None and row.first_byte_at is not None
        assert row.handler_host == "login1" and row.handler_pid == 42


def test_bulk_executemany_through_the_constants(home: Path, import_services: Any) -> None:
    """The accounting bench writes rows in bulk with the same statements."""
    import_services(service_config("svc"))
    conn = sqlite3.connect(home / "saia.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            store.INSERT_REQUEST_SQL,
            [
                {"inference_id": f"b{i}", "user_id": "u", "service_id": "svc", "job_id": None, "method": "POST",
                 "path": "/p", "started_at": 1.0 + i, "bytes_in": 1, "handler_host": "h", "handler_pid": 1}
                for i in range(100)
            ],
        )  # fmt: skip
        ids = [r[0] for r in conn.execute("SELECT id FROM requests ORDER BY id")]
        conn.executemany(
            store.FINISH_REQUEST_SQL,
            [
                {"id": i, "job_id": None, "first_byte_at": 2.0, "ended_at": 3.0, "status": 200, "outcome": "ok",
                 "bytes_in": 1, "bytes_out": 2, "input_tokens": 1, "output_tokens": 1, "error": None}
                for i in ids
            ],
        )  # fmt: skip
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM requests WHERE outcome = 'ok'").fetchone() == (100,)
    finally:
        conn.close()


def test_sqlite_module_loaded_without_functools_still_works() -> None:
    """rawdb loads _sqlite3 with a stand-in functools when nothing imported it yet (saves ~3 ms):
    in a fresh interpreter, statements past the cache size work and the real functools follows."""
    import subprocess
    import sys

    from tests.support.paths import REPO

    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from saia_ctl.request_path import store  # noqa: F401\n"
        "from saia_ctl import rawdb\n"
        "assert 'functools' not in sys.modules and 'collections' not in sys.modules\n"
        "c = rawdb.sqlite3.connect(':memory:')\n"
        "assert [c.execute(f'select {i}').fetchone()[0] for i in range(300)] == list(range(300))\n"
        "import functools\n"
        "assert functools.reduce(lambda a, b: a + b, [1, 2, 3]) == 6 and hasattr(functools, 'partial')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
