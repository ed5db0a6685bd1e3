"""The report ledger: folded days give the same report as the rows, a day is folded once."""

from __future__ import annotations

import json
import random
import sqlite3
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from saia_ctl.accounting import ledger as L
from saia_ctl.accounting import sorted_runs as R
from saia_ctl.accounting.months import month_window
from saia_ctl.accounting.render import render
from saia_ctl.accounting.report import build, monthly_report
from saia_ctl.accounting.scan import days_in
from tests.support.accounting import JUNE, MAY, NOW, Rows, cli, random_month
from tests.support.accounting_oracle import reference_figures

DAY = 86400.0
FILTERS: list[dict[str, Any]] = [
    {},
    {"by": "service"},
    {"user": "user3"},
    {"service": "svc-b"},
    {"user": "user4", "service": "svc-a"},
]


def fold(db: Path, tz: str, now: float, **limits: Any) -> L.FoldResult:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return L.fold(conn, tz, now, **limits)
    finally:
        conn.close()


def cursor(db: Path, tz: str) -> float | None:
    conn = sqlite3.connect(db)
    try:
        return L.cursor(conn, tz)
    finally:
        conn.close()


def closed_month(rows: Rows, seed: int) -> None:
    """random_month, its request in flight closed, and requests right at day and month edges."""
    jobs = random_month(rows, seed, n_requests=300)
    rows.conn.execute(
        "UPDATE requests SET ended_at = started_at + 5, outcome = 'ok', status = 200 WHERE ended_at IS NULL"
    )
    rng = random.Random(seed)
    for _ in range(60):
        edge = MAY + DAY * rng.randint(0, 31) + rng.choice([0.0, -3600.0 * 2, 3600.0 * 5.5, -1800.0])
        start = edge + rng.choice([-1.0, -0.001, 0.0, 0.5, rng.uniform(-7200, 7200)])
        jid, svc, js, je = rng.choice(jobs)
        job = jid if js <= start < je else None
        rows.request(f"user{rng.randint(0, 14)}", svc, job, start, start + rng.uniform(0, 9000))


def assert_same_as_reference(home: Path, engine: Any, tz: str) -> None:
    for month in ("2026-04", "2026-05", "2026-06"):
        ref_figs = reference_figures(home / "saia.db", month, tz, NOW)
        for kw in FILTERS:
            got = monthly_report(engine, month, tz=tz, now=NOW, **kw).data
            want = build(ref_figs, **kw).data
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), (month, kw)
            assert render(got, "table") == render(want, "table")


@pytest.mark.parametrize("seed", [21, 22])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_folded_days_give_the_reference_report(
    rows: Rows, engine: Any, home: Path, seed: int, tz: str, monkeypatch: Any
) -> None:
    if seed == 22:  # percentiles picked from the sorted runs, not from the runs sorted together
        monkeypatch.setattr(R, "MERGE_UP_TO", 0)
    closed_month(rows, seed)
    db = home / "saia.db"
    # part of May folded (the rest scanned), then all of it, then everything up to NOW
    for fold_now in (MAY + 10.6 * DAY, MAY + 31 * DAY + 2 * 3600, NOW):
        result = fold(db, tz, fold_now)
        assert result.days, fold_now
        at = cursor(db, tz)
        assert at is not None and fold_now - DAY - L.MARGIN <= at <= fold_now - L.MARGIN
        assert_same_as_reference(home, engine, tz)


def test_a_report_reads_the_ledger_and_can_do_without(rows: Rows, engine: Any, home: Path) -> None:
    closed_month(rows, 26)
    fold(home / "saia.db", "UTC", NOW)
    from_rows = monthly_report(engine, "2026-05", now=NOW, use_ledger=False).data
    assert monthly_report(engine, "2026-05", now=NOW).data == from_rows
    # what a report says of folded days comes from the ledger, not from the rows
    rows.conn.execute("UPDATE ledger_services SET requests = requests + 1000 WHERE month = '2026-05'")
    assert (
        monthly_report(engine, "2026-05", now=NOW).data["totals"]["requests"]
        > from_rows["totals"]["requests"]
    )
    assert monthly_report(engine, "2026-05", now=NOW, use_ledger=False).data == from_rows


def test_a_day_is_folded_once_and_only_when_closed(rows: Rows, engine: Any, home: Path) -> None:
    db = home / "saia.db"
    job = rows.job("svc-a", MAY - DAY, None, ready=MAY - DAY + 60, gpus=2)
    rows.request("user1", "svc-a", job, MAY + 100, MAY + 200)
    open_id = rows.request("user2", "svc-a", job, MAY + 3 * DAY + 10, None)
    rows.request("user3", "svc-a", job, MAY + 5 * DAY, MAY + 5 * DAY + 30)
    now = MAY + 8 * DAY
    # the ledger begins with the month of the first row (the job started on April 30)
    assert fold(db, "UTC", now, max_pieces=1).days == ["2026-04-01"]
    assert fold(db, "UTC", now, max_pieces=29).days[-1] == "2026-04-30"
    assert fold(db, "UTC", now, max_pieces=1).days == ["2026-05-01"]
    # the request still open on May 4 holds the ledger before its day
    assert fold(db, "UTC", now).days == ["2026-05-02", "2026-05-03"]
    assert cursor(db, "UTC") == MAY + 3 * DAY
    assert fold(db, "UTC", now).days == []
    rows.conn.execute(
        "UPDATE requests SET ended_at = ?, outcome = 'ok', status = 200 WHERE id = ?", (now - 1, open_id)
    )
    # the open day is folded up to its last whole hour that ended MARGIN ago, its last piece
    # only MARGIN after its end
    result = fold(db, "UTC", MAY + 7 * DAY + L.MARGIN - 1)
    assert result.days == ["2026-05-04", "2026-05-05", "2026-05-06", "2026-05-07"]
    assert [(p.start, p.end) for p in result.pieces][-2:] == [
        (MAY + 5 * DAY, MAY + 6 * DAY),
        (MAY + 6 * DAY, MAY + 7 * DAY - L.HOUR),
    ]
    assert cursor(db, "UTC") == MAY + 7 * DAY - L.HOUR
    result = fold(db, "UTC", MAY + 7 * DAY + L.MARGIN)
    assert [(p.day, p.start, p.end) for p in result.pieces] == [
        ("2026-05-07", MAY + 7 * DAY - L.HOUR, MAY + 7 * DAY)
    ]
    assert cursor(db, "UTC") == MAY + 7 * DAY
    assert_same_as_reference(home, engine, "UTC")
    # the chart's days, and the service's sorted durations (the open one closed at now - 1)
    days = rows.conn.execute("SELECT day, requests FROM ledger_days ORDER BY day").fetchall()
    assert days == [("2026-05-01", 1), ("2026-05-04", 1), ("2026-05-06", 1)]
    blob = rows.conn.execute("SELECT durations FROM ledger_services WHERE month = '2026-05'").fetchone()[0]
    assert list(R.unpack(blob)) == [30.0, 100.0, now - 1 - (MAY + 3 * DAY + 10)]


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_a_day_folded_in_pieces_gives_the_report_of_the_rows(
    rows: Rows, engine: Any, home: Path, tz: str
) -> None:
    """The open day folded hour by hour (requests and jobs across the pieces' ends, a late
    row, a request left open for hours) reports as the rows alone, and as the day folded whole."""
    closed_month(rows, 31)
    db = home / "saia.db"
    d = MAY + 9 * DAY  # a UTC day; in Kolkata it straddles two local days (midnight at 18:30 UTC)
    j = rows.job("svc-a", d - 5000, d + 7.3 * L.HOUR, ready=d - 4000, gpus=2)
    k = rows.job("svc-b", d + 2.2 * L.HOUR, d + 30 * L.HOUR, ready=d + 2.3 * L.HOUR, gpus=1)
    for h in range(1, 24):  # in flight across every whole hour, on the job running then
        job, svc = (j, "svc-a") if h < 7 else (k, "svc-b")
        rows.request(f"user{h % 5}", svc, job, d + h * L.HOUR - 200.5, d + h * L.HOUR + 333.25, tin=h)
    rows.request("user7", "svc-a", j, d + 600, d + 3 * L.HOUR + 17)  # across three pieces
    rows.request("user8", "svc-b", k, d + 2.5 * L.HOUR, d + 9.75 * L.HOUR)  # long (> LONG_REQUEST)
    held = 0

    def same_as_the_rows() -> None:
        for kw in FILTERS:
            got = monthly_report(engine, "2026-05", tz=tz, now=NOW, **kw).data
            want = monthly_report(engine, "2026-05", tz=tz, now=NOW, use_ledger=False, **kw).data
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), kw

    fold(db, tz, d + L.MARGIN)  # the days before, whole
    pieces: list[L.Piece] = []
    for h in range(1, 26):
        now = d + h * L.HOUR + L.MARGIN + (0.0 if h % 3 else 1234.5)
        if h == 6:  # a row written late into a piece already folded: the next fold rewinds
            rows.request("late-user", "svc-a", j, d + 2 * L.HOUR + 10, d + 2 * L.HOUR + 70)
            same_as_the_rows()
        if h == 10:  # a request left open holds the fold at its start
            held = rows.request("user9", "svc-b", k, d + 10.5 * L.HOUR, None)
        if h == 13:
            rows.conn.execute(
                "UPDATE requests SET ended_at = ?, outcome = 'ok', status = 200 WHERE id = ?",
                (d + 12.25 * L.HOUR, held),
            )
        result = fold(db, tz, now)
        if h == 6:
            assert result.rewound == ["2026-05"]
        pieces += result.pieces
        at = cursor(db, tz)
        assert at is not None
        if 10 <= h < 13:
            assert at <= d + 10.5 * L.HOUR
        else:
            assert now - L.MARGIN - L.HOUR < at <= now - L.MARGIN
        same_as_the_rows()
    # several pieces of one local day, and ends that are neither a whole hour nor midnight never
    in_day = [p for p in pieces if p.day == "2026-05-10"]
    assert len(in_day) > 5
    assert all(
        p.end % L.HOUR == 0 or p.end in dict(month_window("2026-05", tz).days).values() for p in pieces
    )
    fold(db, tz, NOW)
    assert_same_as_reference(home, engine, tz)
    by_pieces = {m: monthly_report(engine, m, tz=tz, now=NOW).data for m in ("2026-05", "2026-06")}
    ledger_days = rows.conn.execute("SELECT * FROM ledger_days ORDER BY 1, 2, 3, 4").fetchall()
    # the same days folded whole: the same report, the same chart rows
    rows.conn.execute("DELETE FROM ledger_cursors")
    for t in L.LEDGER_TABLES:
        rows.conn.execute(f"DELETE FROM {t}")
    whole = fold(db, tz, NOW)
    assert len(whole.pieces) == len(whole.days)  # up to the last day, which ends at NOW
    assert rows.conn.execute("SELECT * FROM ledger_days ORDER BY 1, 2, 3, 4").fetchall() == ledger_days
    for m, data in by_pieces.items():
        assert monthly_report(engine, m, tz=tz, now=NOW).data == data


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "Europe/Berlin"])
def test_a_fold_leaves_a_tail_of_at_most_an_hour_and_margin(rows: Rows, home: Path, tz: str) -> None:
    db = home / "saia.db"
    rng = random.Random(5)
    for _ in range(200):
        start = MAY + rng.uniform(0, 12 * DAY)
        rows.request(f"user{rng.randint(0, 5)}", "svc-c", None, start, start + rng.uniform(0, 100))
    now = MAY + 3 * DAY
    while now < MAY + 12 * DAY:
        fold(db, tz, now)
        at = cursor(db, tz)
        assert at is not None and now - L.MARGIN - L.HOUR < at <= now - L.MARGIN, (now, at)
        now += rng.uniform(60, 4 * L.HOUR)
    # nothing more is due until the next whole hour (or local midnight) is MARGIN old
    assert fold(db, tz, now).pieces and fold(db, tz, now).pieces == []


def test_a_failed_fold_writes_nothing_and_a_raced_fold_counts_once(
    rows: Rows, engine: Any, home: Path, monkeypatch: Any
) -> None:
    closed_month(rows, 23)
    db = home / "saia.db"
    real_write = L._write

    def broken(conn: sqlite3.Connection, statements: L.Statements) -> None:
        real_write(conn, statements)
        raise OSError("disk full")

    monkeypatch.setattr(L, "_write", broken)
    with pytest.raises(OSError):
        fold(db, "UTC", NOW)
    assert cursor(db, "UTC") is None
    for table in L.LEDGER_TABLES:
        assert rows.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    monkeypatch.setattr(L, "_write", real_write)

    # Another fold runs between the first one's scan and its write: the first must see
    # the cursor moved and not add the day again.
    real_scan = L._scan_next
    other: list[L.FoldResult] = []
    raced: list[bool] = []

    def scan_and_race(*args: Any) -> Any:
        found = real_scan(*args)
        if not raced:
            raced.append(True)
            t = threading.Thread(target=lambda: other.append(fold(db, "UTC", NOW, max_pieces=3)))
            t.start()
            t.join()
        return found

    monkeypatch.setattr(L, "_scan_next", scan_and_race)
    first = fold(db, "UTC", MAY + 20 * DAY)
    monkeypatch.setattr(L, "_scan_next", real_scan)
    assert other and other[0].days == ["2026-04-01", "2026-04-02", "2026-04-03"]
    assert first.days[0] == "2026-04-04"  # the raced day was left to the other fold
    fold(db, "UTC", NOW)
    assert_same_as_reference(home, engine, "UTC")


def test_rows_that_come_late_are_reported_and_refolded(rows: Rows, engine: Any, home: Path) -> None:
    """A row written after its day was folded (a backfill, an import): reports scan the month
    until the next fold rewinds the ledger to that month and folds it again."""
    closed_month(rows, 25)
    db = home / "saia.db"
    fold(db, "UTC", NOW)
    at = cursor(db, "UTC")
    jobs = rows.conn.execute("SELECT id FROM jobs WHERE service_id = 'svc-a' ORDER BY id").fetchall()
    rows.request("late-user", "svc-a", jobs[0][0], MAY + 12 * DAY + 5, MAY + 12 * DAY + 65)
    rows.request("user3", "svc-b", None, MAY - 40 * DAY, MAY - 40 * DAY + 1)  # before the ledger began
    assert_same_as_reference(home, engine, "UTC")  # from the rows, before any fold
    assert fold(db, "UTC", NOW).rewound == []  # nothing due: the rewind waits for the next day
    result = fold(db, "UTC", NOW + DAY)
    assert result.rewound == ["2026-03"]  # the earliest late row's month
    assert result.days[0] == "2026-03-01" and cursor(db, "UTC") == at + DAY
    assert fold(db, "UTC", NOW + DAY).days == [] and fold(db, "UTC", NOW + DAY).rewound == []
    assert_same_as_reference(home, engine, "UTC")
    got = monthly_report(engine, "2026-05", now=NOW, user="late-user").data
    assert got["totals"]["requests"] == 1


def test_pruned_months_report_the_same_from_the_ledger(
    rows: Rows, engine: Any, home: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr("time.time", lambda: NOW)
    closed_month(rows, 24)
    rows.request("user5", "svc-a", None, JUNE + 3600, JUNE + 3700)
    r = cli("db", "ledger")
    assert r.exit_code == 0, r.stderr
    assert "folded " in r.stdout and "2026-07-14" in r.stdout
    assert "nothing due to fold" in cli("db", "ledger").stdout
    args = [
        ("report", "--month", m, "--format", "json", *v)
        for m in ("2026-04", "2026-05")
        for v in ([], ["--user", "user3"])
    ]
    before = {a: cli(*a).stdout for a in args}
    assert cli("db", "prune", "--before", "2026-06").exit_code == 0
    assert {a: cli(*a).stdout for a in args} == before
    # the rolled-up months left the ledger, later ones are still in it
    months = {m for t in L.LEDGER_TABLES for (m,) in rows.conn.execute(f"SELECT DISTINCT month FROM {t}")}
    assert months == {"2026-06"}
    # pruned before they were folded: the fold passes those days without writing them
    rows.conn.execute("DELETE FROM ledger_cursors")
    for t in L.LEDGER_TABLES:
        rows.conn.execute(f"DELETE FROM {t}")
    assert "2026-04-01 to 2026-07-14" in cli("db", "ledger").stdout  # the 14th up to 23:00
    months = {m for t in L.LEDGER_TABLES for (m,) in rows.conn.execute(f"SELECT DISTINCT month FROM {t}")}
    assert months == {"2026-06"}
    assert {a: cli(*a).stdout for a in args} == before


def test_the_tick_folds_one_piece_per_tick(rows: Rows, engine: Any, settings: Any) -> None:
    from saia_ctl.scheduler.tick import run_tick
    from saia_ctl.slurm_fake import FakeSlurm

    rows.request("user1", "svc-a", None, MAY + 100, MAY + 200, status=503, outcome="error")
    now = [MAY + 3 * DAY + L.MARGIN]
    summaries = []
    for _ in range(4):
        now[0] += 60
        res = run_tick(
            engine,
            settings,
            FakeSlurm(lambda: now[0]),
            clock=lambda: now[0],
            watch=False,
            prober=lambda *a: {},
        )
        summaries.append(res.summary)
    folded = [line for s in summaries for line in s.splitlines() if "ledger" in line]
    assert folded == [
        f"accounting: folded 2026-05-0{d} into the ledger, up to 2026-05-0{d + 1}T00:00:00.000Z"
        for d in (1, 2, 3)
    ]
    # the open day, an hour later: its first whole hour
    now[0] += L.HOUR
    res = run_tick(
        engine, settings, FakeSlurm(lambda: now[0]), clock=lambda: now[0], watch=False, prober=lambda *a: {}
    )
    assert "accounting: folded 2026-05-04 into the ledger, up to 2026-05-04T01:00:00.000Z" in res.summary

    # A fold that fails is a line in the tick log; the tick itself does not fail.
    rows.conn.execute("DROP TABLE ledger_cursors")
    now[0] += DAY
    res = run_tick(
        engine, settings, FakeSlurm(lambda: now[0]), clock=lambda: now[0], watch=False, prober=lambda *a: {}
    )
    assert res.error is None
    assert "accounting ledger not folded: OperationalError: no such table: ledger_cursors" in res.summary
    assert "Traceback" not in res.summary  # a database error is one line


def test_a_bug_in_the_fold_leaves_its_traceback_in_the_tick_log(
    rows: Rows, engine: Any, settings: Any, monkeypatch: Any
) -> None:
    from saia_ctl.accounting import ledger
    from saia_ctl.scheduler.tick import run_tick
    from saia_ctl.slurm_fake import FakeSlurm

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("a bug in the fold")

    monkeypatch.setattr(ledger, "fold_engine", broken)
    now = MAY + 3 * DAY + L.MARGIN
    res = run_tick(
        engine, settings, FakeSlurm(lambda: now), clock=lambda: now, watch=False, prober=lambda *a: {}
    )
    assert res.error is None  # accounting never stops scheduling
    assert "accounting ledger not folded: RuntimeError: a bug in the fold" in res.summary
    assert "Traceback (most recent call last)" in res.summary and "in broken" in res.summary


def test_a_bad_accounting_zone_is_one_line(home: Path, engine: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("SAIA_ACCOUNTING_TZ", "Mars/Olympus")
    r = cli("db", "ledger")
    assert r.exit_code != 0
    assert "SAIA_ACCOUNTING_TZ" in r.stderr and "Traceback" not in r.stderr


def test_report_zone_defaults_to_the_accounting_zone(rows: Rows, home: Path, monkeypatch: Any) -> None:
    rows.request("user1", "svc-a", None, MAY - 1800, MAY - 1700)  # April 30 22:30 UTC = May 1 in Berlin
    monkeypatch.setenv("SAIA_ACCOUNTING_TZ", "Europe/Berlin")
    data = json.loads(cli("report", "--month", "2026-05", "--format", "json", "--no-files").stdout)
    assert data["tz"] == "Europe/Berlin" and data["totals"]["requests"] == 1
    monkeypatch.delenv("SAIA_ACCOUNTING_TZ")
    data = json.loads(cli("report", "--month", "2026-05", "--format", "json", "--no-files").stdout)
    assert data["tz"] == "UTC" and data["totals"]["requests"] == 0


floats = st.floats(allow_nan=False, allow_infinity=True, width=64)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.lists(floats, max_size=30), min_size=1, max_size=8), st.data())
def test_nth_smallest_of_sorted_runs_is_the_merged_one(raw: list[list[float]], data: Any) -> None:
    runs = [sorted(r) for r in raw]
    merged = sorted(x for r in runs for x in r)
    if not merged:
        assert R.runs_percentile(runs, 50) is None
        return
    rank = data.draw(st.integers(1, len(merged)))
    got = R.nth_smallest(runs, rank)
    assert struct.pack("<d", got) in {struct.pack("<d", x) for x in merged if x == merged[rank - 1]}
    for p in (50, 95):
        assert R.runs_percentile(runs, p) == merged[max(1, -(-p * len(merged) // 100)) - 1]


@hsettings(max_examples=300, deadline=None)
@given(st.lists(floats, min_size=1, max_size=40), st.lists(floats, max_size=16), st.data())
def test_nth_of_two_runs_is_the_merged_one(a: list[float], b: list[float], data: Any) -> None:
    a.sort()
    b.sort()
    merged = sorted(a + b)
    rank = data.draw(st.integers(1, len(merged)))
    assert R.nth_of_two(a, b, rank) == merged[rank - 1]


def test_stored_runs_round_trip() -> None:
    values = [0.0, 1e-9, 2.5, 3600.125]
    assert list(R.unpack(R.pack(values))) == values
    assert len(R.unpack(None)) == 0


def test_window_days_cover_the_month_once() -> None:
    w = month_window("2026-03", "Europe/Berlin")  # a 23-hour day (DST)
    days = days_in(w, w.start, w.end)
    assert len(days) == 31 and days[0][1] == w.start and days[-1][2] == w.end
    assert all(a < b for _, a, b in days) and all(days[i][2] == days[i + 1][1] for i in range(30))


def test_the_report_bench_runs_and_both_ways_agree() -> None:
    """bench/report.py on a small database: figures as bench/run reads them, same report both ways."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(repo / "bench" / "report.py"), "--months", "2", "--per-month", "3000",
         "--users", "60", "--services", "3", "--repeat", "1", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = {f["figure"]: f for f in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert figures["report from the rows alone (no ledger)"]["ok"] is True
    assert figures["report of the current month (a day not folded)"]["value"] > 0
    assert "ledger: folded 58 days" in proc.stdout


def increasing_to_the_total(calls: list[tuple[int, int]]) -> None:
    assert calls, "no progress reported"
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == len(done)  # strictly increasing
    assert all(0 < d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1]  # up to the total


def test_long_computations_report_their_progress(
    rows: Rows, engine: Any, home: Path, monkeypatch: Any
) -> None:
    from saia_ctl.accounting import scan
    from saia_ctl.accounting.prune import prune

    closed_month(rows, 27)
    # a report that scans rows: the ok requests read, in steps
    monkeypatch.setattr(scan, "_PROGRESS_EVERY", 7)
    calls: list[tuple[int, int]] = []
    monthly_report(engine, "2026-05", now=NOW, use_ledger=False, progress=lambda d, t: calls.append((d, t)))
    increasing_to_the_total(calls)
    assert len(calls) > 10
    ok = rows.conn.execute(
        "SELECT COUNT(*) FROM requests WHERE outcome = 'ok' AND started_at >= ? AND started_at < ?",
        (MAY, JUNE),
    ).fetchone()[0]
    assert calls[-1] == (ok, ok)
    # the fold: pieces folded out of the pieces due
    calls = []
    conn = sqlite3.connect(home / "saia.db", isolation_level=None)
    try:
        result = L.fold(conn, "UTC", MAY + 20.5 * DAY, progress=lambda d, t: calls.append((d, t)))
    finally:
        conn.close()
    increasing_to_the_total(calls)
    assert calls[-1][0] == len(result.pieces) == 51  # April, 20 days of May, May 21 up to 11:00
    # the prune: months rolled up and pruned out of the months before the cut
    calls = []
    prune(engine, "2026-06", "UTC", NOW, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]


def test_the_long_commands_show_a_bar_on_a_terminal_only(
    rows: Rows, engine: Any, home: Path, monkeypatch: Any
) -> None:
    import os
    import pty

    closed_month(rows, 28)
    saia = str(Path(sys.executable).parent / "saia-ctl")
    env = {**os.environ, "SAIA_HOME": str(home), "COLUMNS": "100"}
    # piped: no bar, neither on stdout nor on stderr
    piped = subprocess.run(
        [saia, "report", "--month", "2026-05", "--no-files"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert "reading the month's requests" not in piped.stderr + piped.stdout
    assert "[#" not in piped.stderr + piped.stdout
    r = cli("db", "ledger")
    assert r.exit_code == 0 and "folded" in r.stdout
    assert "folding into" not in r.stdout + r.stderr and "[#" not in r.stdout + r.stderr

    # stderr on a terminal: a bar there (stdout, piped, still gets only the result)
    def on_a_terminal(*args: str) -> tuple[str, str]:
        leader, follower = pty.openpty()
        seen: list[bytes] = []

        def read() -> None:  # as the child writes, so that it never waits for the terminal
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other end is closed
                    return
                if not chunk:
                    return
                seen.append(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            proc = subprocess.Popen([saia, *args], stdout=subprocess.PIPE, stderr=follower, env=env)
            os.close(follower)
            out, _ = proc.communicate(timeout=120)
        finally:
            reader.join(timeout=30)
            os.close(leader)
        err = b"".join(seen).decode(errors="replace")
        assert proc.returncode == 0, err
        return out.decode(), err

    rows.conn.execute("DELETE FROM ledger_cursors")
    for t in L.LEDGER_TABLES:
        rows.conn.execute(f"DELETE FROM {t}")
    out, err = on_a_terminal("db", "ledger")
    assert "folding into the ledger" in err and "100%" in err
    assert "folded" in out and "[#" not in out
    # a zone the ledger does not keep: the report scans the month's rows
    out, err = on_a_terminal("report", "--month", "2026-05", "--tz", "Asia/Kolkata", "--no-files")
    assert "reading the month's requests" in err and "[#" not in out
    out, err = on_a_terminal("db", "prune", "--before", "2026-06")
    assert "rolling up and pruning months" in err and "100%" in err
    assert "rolled up: 2026-04, 2026-05" in out


def test_the_counters_and_the_long_request_bound_are_declared_once(rows: Rows) -> None:
    from saia_ctl.accounting import scan
    from saia_ctl.accounting.figures import COUNT_FIELDS, Usage
    from saia_ctl.accounting.row_sql import COUNTER_SQL

    # every counter of Usage has its SQL, in one order, and a row of counts builds the cell
    assert tuple(COUNTER_SQL) == COUNT_FIELDS
    cell = Usage.of_counts(list(range(len(COUNT_FIELDS))))
    assert [getattr(cell, name) for name in COUNT_FIELDS] == list(range(len(COUNT_FIELDS)))
    # the scan's long-request terms are the partial index's own, so SQLite uses the index
    plan = rows.conn.execute("EXPLAIN QUERY PLAN " + scan._BUSY_SQL, (0.0, 1.0, 0.0, 0.0, 0.0)).fetchall()
    assert any("ix_requests_long" in str(step) for step in plan), plan
