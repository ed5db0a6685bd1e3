"""`saia-ctl db prune`: rollups first, then delete; pruned months report byte-identically."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.accounting.prune import PruneError, prune
from tests.support.accounting import JUNE, MAY, NOW, Rows, cli, random_month

VARIANTS = [
    [],
    ["--by", "user"],
    ["--by", "service"],
    ["--service", "svc-a"],
    ["--user", "user3"],
    ["--user", "user3", "--service", "svc-b"],
    ["--anonymize"],
]


def outputs(months: list[str]) -> dict[tuple[str, ...], str]:
    out = {}
    combos = [(fmt, []) for fmt in ("table", "csv", "markdown", "html")] + [("json", v) for v in VARIANTS]
    for month in months:
        for fmt, extra in combos:
            args = ("report", "--month", month, "--format", fmt, *extra)
            r = cli(*args)
            assert r.exit_code == 0, r.stderr
            out[args] = r.stdout
    return out


def test_pruned_months_report_byte_identically(rows: Rows, engine: Any, home: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("time.time", lambda: NOW)
    random_month(rows, 11, n_requests=300)
    before = outputs(["2026-04", "2026-05", "2026-06"])
    metrics_before = cli("metrics").stdout
    count = rows.conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    r = cli("db", "prune", "--before", "2026-06")
    assert r.exit_code == 0, r.stderr
    assert "rolled up: 2026-05;" in r.stdout
    left = rows.conn.execute("SELECT COUNT(*), MIN(started_at) FROM requests").fetchone()
    assert 0 < left[0] < count
    # kept: rows still open, or that ended in June (June's report needs them)
    assert (
        rows.conn.execute(
            "SELECT COUNT(*) FROM requests WHERE started_at < ? AND ended_at IS NOT NULL AND ended_at < ?",
            (JUNE, JUNE),
        ).fetchone()[0]
        == 0
    )
    assert rows.conn.execute("SELECT COUNT(*) FROM requests WHERE ended_at IS NULL").fetchone()[0] == 1
    after = outputs(["2026-04", "2026-05", "2026-06"])
    for key, text in before.items():
        assert after[key] == text, key
    # the counters do not go down
    assert cli("metrics").stdout == metrics_before
    # again: nothing new to roll up, still identical
    r = cli("db", "prune", "--before", "2026-06")
    assert r.exit_code == 0 and "rolled up: none" in r.stdout
    assert outputs(["2026-05"]) == {k: v for k, v in before.items() if k[2] == "2026-05"}


def test_prune_refuses_future_months_and_other_zones(rows: Rows, engine: Any) -> None:
    rows.request("u", "svc-a", None, MAY + 10, MAY + 11)
    with pytest.raises(PruneError, match="has not begun"):
        prune(engine, "2026-08", "UTC", NOW)
    prune(engine, "2026-06", "UTC", NOW)
    with pytest.raises(PruneError, match="zone UTC"):
        prune(engine, "2026-07", "Europe/Berlin", NOW)
    r = cli("report", "--month", "2026-05", "--tz", "Europe/Berlin")
    assert r.exit_code == 1 and "were pruned" in r.stderr
    r = cli("db", "prune", "--before", "26-05")
    assert r.exit_code == 1 and r.stderr.startswith("Error: not a month")


def test_rollup_tables_hold_the_month(rows: Rows, engine: Any, home: Path) -> None:
    random_month(rows, 5, n_requests=50)
    prune(engine, "2026-06", "UTC", NOW)
    conn = sqlite3.connect(home / "saia.db")
    months = [r[0] for r in conn.execute("SELECT month FROM rollup_months ORDER BY month")]
    assert months[-1] == "2026-05"
    total = conn.execute(
        "SELECT requests FROM rollup_usage WHERE month='2026-05' AND user_id='' AND service_id=''"
    ).fetchone()[0]
    cells = conn.execute(
        "SELECT SUM(requests) FROM rollup_usage WHERE month='2026-05' AND user_id!='' AND service_id!=''"
    ).fetchone()[0]
    days = conn.execute("SELECT SUM(requests) FROM rollup_days WHERE month='2026-05'").fetchone()[0]
    assert total == cells == days > 0
