"""Migrations: empty to head, one head, models and migrations agree, round trip with data."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError

from saia_ctl.accounting.ledger import read_gpu_shares
from saia_ctl.db import engine_for, write_session
from saia_ctl.migrate import MIGRATIONS_DIR, current_revision, downgrade, head_revision, upgrade
from saia_ctl.models import Job, JobState, Request
from saia_ctl.settings import Settings


def _cfg() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def test_single_head_and_cheap_head_reader_agree() -> None:
    heads = ScriptDirectory.from_config(_cfg()).get_heads()
    assert len(heads) == 1
    assert head_revision() == heads[0]


def test_empty_database_to_head_and_models_match(tmp_path: Path) -> None:
    eng = engine_for(Settings(home=str(tmp_path), environ={}))
    assert current_revision(eng) is None
    upgrade(eng)
    assert current_revision(eng) == head_revision()
    cfg = _cfg()
    with eng.connect() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)  # raises if the models and the migrations differ


def test_downgrade_and_upgrade_round_trip_with_data(tmp_path: Path, import_services, engine) -> None:  # type: ignore[no-untyped-def]
    import_services(
        {
            "name": "S",
            "id": "svc",
            "owned_by": "o",
            "sbatch": __file__,
            "inferences_per_instance": 1,
            "maximum_number_instances": 1,
            "minimum_number_instances": 0,
            "job_expiry_time": "5:00",
        }
    )
    db = Path(engine.url.database)
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT id, name, sbatch FROM services").fetchall()
    for rev in reversed(_revisions()[:-1]):  # down step by step to the first, then up again
        downgrade(engine, rev)
    upgrade(engine)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, name, sbatch FROM services").fetchall() == before
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_0007_converts_the_ledgers_gpu_shares_and_back(tmp_path: Path) -> None:
    """The JSON object of GPU seconds per user becomes nanoseconds in split order, read
    by the same code as a fold writes them; downgrading gives the seconds back."""
    eng = engine_for(Settings(home=str(tmp_path), environ={}))
    upgrade(eng, "0006")
    seconds = {"bob": 12.5, 'q"uote': 0.25, "alice": 3600.000000001, "zero": 0.0}
    db = Path(str(eng.url.database))
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO ledger_services (tz, month, service_id, durations, ttfbs, user_gpu_seconds, requests,"
            " ok, errors, errors_4xx, errors_5xx, aborted, in_flight, input_tokens, output_tokens)"
            " VALUES ('UTC', '2026-05', 'svc', X'', X'', ?, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
            (json.dumps(seconds),),
        )
    upgrade(eng)
    with sqlite3.connect(db) as conn:
        shares = read_gpu_shares(conn, ("UTC", "2026-05"))
    assert shares == {"svc": {"alice": 3_600_000_000_001, "bob": 12_500_000_000, 'q"uote': 250_000_000}}
    downgrade(eng, "0006")
    with sqlite3.connect(db) as conn:
        (blob,) = conn.execute("SELECT user_gpu_seconds FROM ledger_services").fetchone()
    assert json.loads(blob) == {k: v for k, v in seconds.items() if v}


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(_cfg())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _job(sid: str, port: int, name: str, ended: bool = False) -> Job:
    now = time.time()
    return Job(
        name=name,
        service_id=sid,
        state=JobState.ENDED if ended else JobState.PENDING,
        port=port,
        secret="s",
        submitted_at=now,
        ended_at=now if ended else None,
    )


SVC = {
    "name": "S",
    "id": "svc",
    "owned_by": "o",
    "sbatch": __file__,
    "inferences_per_instance": 1,
    "maximum_number_instances": 1,
    "minimum_number_instances": 0,
    "job_expiry_time": "5:00",
}


def test_database_enforces_one_live_job_per_port(import_services, engine) -> None:  # type: ignore[no-untyped-def]
    import_services(SVC)
    with write_session(engine) as s:
        s.add(_job("svc", 61001, "a", ended=True))
        s.add(_job("svc", 61001, "b"))  # an ended job does not hold its port
    with pytest.raises(IntegrityError), write_session(engine) as s:
        s.add(_job("svc", 61001, "c"))


def test_database_enforces_unique_inference_ids(import_services, engine) -> None:  # type: ignore[no-untyped-def]
    import_services(SVC)

    def req() -> Request:
        return Request(
            inference_id="same",
            user_id="u",
            service_id="svc",
            method="POST",
            path="/v1/x",
            started_at=time.time(),
            handler_host="h",
            handler_pid=1,
        )

    with write_session(engine) as s:
        s.add(req())
    with pytest.raises(IntegrityError), write_session(engine) as s:
        s.add(req())


def test_connections_use_configured_pragmas(tmp_path: Path) -> None:
    eng = engine_for(Settings(home=str(tmp_path), environ={"SAIA_BUSY_TIMEOUT": "7"}))
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
    wal = engine_for(Settings(home=str(tmp_path / "w"), environ={"SAIA_JOURNAL_MODE": "wal"}))
    with wal.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
