"""``GET /v1/usage``'s figures read from the user's own rows (accounting/own_month.py) equal
the month report's for that user: months not folded, partly folded, with rows come late, in
another zone; users who share jobs with others; a request still in flight."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.accounting import ledger as L
from saia_ctl.accounting import shares
from saia_ctl.accounting.own_month import own_month
from saia_ctl.accounting.report import monthly_report
from saia_ctl.settings import Settings
from saia_ctl.usage import usage_of_user
from tests.support.accounting import MAY, Rows, random_month
from tests.support.paths import REPO
from tests.support.wire import command, parse_http

DAY = 86400.0
# ids whose JSON form orders them apart from their plain form
ODD = ['q"uote\\\\', "q#", "Zoë", "Zoz", "!first"]
USERS = [f"user{i}" for i in range(12)] + ODD + ["nobody"]


def _fold(db: Path, tz: str, now: float) -> list[str]:
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        return L.fold(conn, tz, now).days


def _month(rows: Rows, now: float) -> None:
    """random_month (users sharing the jobs), its open request closed so days fold, one request
    open in the tail on a shared job, and one long request crossing the cursor."""
    random_month(rows, 7, n_requests=300)
    rows.conn.execute(
        "UPDATE requests SET ended_at = started_at + 5, outcome = 'ok', status = 200 WHERE ended_at IS NULL"
    )
    job = rows.job("svc-b", now - 4 * DAY, None, ready=now - 4 * DAY + 300, gpus=2)  # still running
    for k, user in enumerate(("user3", "user4", "user5", "user3", "user6")):
        start = now - 3 * DAY + k * 40_000
        rows.request(user, "svc-b", job, start, start + 20_000 + k)  # shared, some overlapping
    rows.request("user3", "svc-b", job, now - 600, None)  # in flight: attributed up to now
    rows.request("user4", "svc-b", job, now - 2 * DAY, now - 1000)  # long: from folded days into the tail
    rows.request("user5", "svc-b", job, now - 900, now - 100)
    for k, user in enumerate(ODD):  # in folded days and in the tail, beside the others
        rows.request(user, "svc-b", job, now - 2.5 * DAY + k * 3000, now - 2.5 * DAY + k * 3000 + 7000)
        rows.request(user, "svc-b", job, now - 700 + k, now - 50 - k)


def _compare(home: Path, engine: Any, tz: str, now: float) -> list[float]:
    settings = Settings(home=str(home), environ={})
    gpu = []
    for user in USERS:
        doc = usage_of_user(settings, user, tz, now=now)
        rep = monthly_report(engine, doc["month"], tz=tz, now=now, user=user, by="user")
        totals = rep.data["totals"]
        for key in ("requests", "input_tokens", "output_tokens", "gpu_hours"):
            assert doc[key] == totals[key], (user, key, doc[key], totals[key])
        gpu.append(doc["gpu_hours"])
    return gpu


@pytest.mark.parametrize("block", [shares.BLOCK, 3])  # 3: the users' shares in many blocks
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_usage_equals_the_report_not_folded_partly_folded_and_late(
    rows: Rows, home: Path, engine: Any, tz: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shares, "BLOCK", block)
    now = MAY + 17.3 * DAY
    _month(rows, now)
    db = home / "saia.db"
    gpu = _compare(home, engine, tz, now)  # nothing folded: every row scanned
    assert sum(g > 0 for g in gpu) >= 5  # users share the jobs' GPU time
    assert gpu[-1] == 0.0  # a user without rows
    assert len(_fold(db, tz, now)) >= 10  # the month's closed days folded, the rest scanned
    assert L.cursor(sqlite3.connect(db), tz) is not None
    assert _compare(home, engine, tz, now) == gpu
    rows.request(
        "user5", "svc-a", None, MAY + 2 * DAY, MAY + 2 * DAY + 1, status=503, outcome="error"
    )  # late
    _compare(home, engine, tz, now)


def test_the_request_path_answers_usage_without_sqlalchemy(rows: Rows, home: Path) -> None:
    """The fast path is stdlib only: loading it and answering leaves SQLAlchemy unimported."""
    now = MAY + 17.3 * DAY
    _month(rows, now)
    _fold(home / "saia.db", "UTC", now)
    code = (
        "import sys\n"
        "from saia_ctl.settings import Settings\n"
        "from saia_ctl.usage import usage_of_user\n"
        f"doc = usage_of_user(Settings(home={str(home)!r}, environ={{}}), 'user1', 'UTC', now={now!r})\n"
        "assert doc['requests'] > 0, doc\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# What the request path's usage must not import: each costs milliseconds of every request's
# start (dataclasses with inspect ~12 ms, json with re and enum ~6 ms, zoneinfo ~4 ms for UTC).
COSTLY_IMPORTS = {
    "dataclasses",
    "inspect",
    "json",
    "re",
    "enum",
    "typing",
    "zoneinfo",
    "collections",
    "sqlalchemy",
}


def test_the_request_path_answers_usage_without_costly_imports(rows: Rows, home: Path, engine: Any) -> None:
    """``GET /v1/usage`` as cloud_interface.sh runs it (``python -I -S``, a fresh process) on a
    folded month with a tail, a shared job and a request in flight: the answer is the report's
    figures and the interpreter loaded none of COSTLY_IMPORTS."""
    now = MAY + 17.3 * DAY
    _month(rows, now)
    assert _fold(home / "saia.db", "UTC", now)
    answer = home / "answer"
    cmd = command("usage-1", "user3", "svc-a", "/v1/usage", method="GET", body=None)
    code = (
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"time.time = lambda: {now!r}\n"
        "from saia_ctl.request_path.handler import run\n"
        f"fd = os.open({str(answer)!r}, os.O_WRONLY | os.O_CREAT)\n"
        f"run({cmd!r}, stdout=fd, environ={{'SAIA_HOME': {str(home)!r}}})\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    ans = parse_http(answer.read_bytes())
    assert ans.status == 200, ans.body
    doc = ans.json()
    assert doc["user"] == "user3" and doc["requests"] > 0 and doc["gpu_hours"] > 0, doc
    totals = monthly_report(engine, "2026-05", tz="UTC", now=now, user="user3", by="user").data["totals"]
    assert [doc[k] for k in ("requests", "input_tokens", "output_tokens", "gpu_hours")] == [
        totals[k] for k in ("requests", "input_tokens", "output_tokens", "gpu_hours")
    ]
    assert not set(out.stdout.split()) & COSTLY_IMPORTS


def test_rolled_up_months_follow_the_reports_rules(rows: Rows, home: Path, engine: Any) -> None:
    """A rollup of an earlier month keeps the fast path; a rolled-up month itself, or one pruned in
    another zone, gets the report's answer (its rollup; its error)."""
    from saia_ctl.accounting.report import ReportError

    now = MAY + 17.3 * DAY
    _month(rows, now)
    _fold(home / "saia.db", "UTC", now)
    april = "INSERT INTO rollup_months VALUES ('2026-04', 'UTC', ?, ?, ?)"
    rows.conn.execute(april, (MAY - 30 * DAY, MAY, now))
    gpu = _compare(home, engine, "UTC", now)
    assert sum(gpu) > 0
    with closing(sqlite3.connect(home / "saia.db")) as conn:  # answered from the rows, not the report
        assert own_month(conn, "2026-05", "UTC", now, "user1") is not None
    settings = Settings(home=str(home), environ={})
    with pytest.raises(ReportError, match="pruned"):
        usage_of_user(settings, "user1", "Europe/Berlin", now=now)
    rows.conn.execute(
        "INSERT INTO rollup_months VALUES ('2026-05', 'UTC', ?, ?, ?)", (MAY, MAY + 31 * DAY, now)
    )
    assert _compare(home, engine, "UTC", now) == [0.0] * len(USERS)  # the (empty) rollup's figures
