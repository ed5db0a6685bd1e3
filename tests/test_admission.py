"""Admission (request_path/admission.py) in the request path: limits decided in the
transaction that records the request, 429 answers, headers, counters, budgets."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from saia_ctl.db import write_session
from saia_ctl.limits import add_project, set_limits
from saia_ctl.request_path import admission
from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.wire import add_ready_job, chat_body, command, header, rows, run_inproc, run_interface
from tests.support.wire import parse_as_proxy as parse_http

SERVICE = "svc-lim"


@pytest.fixture
def world(home: Path, import_services: Callable[..., None]) -> Iterator[tuple[Path, FakeBackend]]:
    import_services(service_config(SERVICE, request_hold_time=0))
    with FakeBackend("ok") as b:
        add_ready_job(home, SERVICE, b.port)
        yield home, b


def limit(
    engine: object, scope: str, subject: str | None, service: str | None = None, **values: object
) -> None:
    with write_session(engine) as s:  # type: ignore[arg-type]
        set_limits(s, scope, subject, service, {k: str(v) for k, v in values.items()})


_n = iter(range(10**9))


def ask(home: Path, user: str = "alice", service: str = SERVICE) -> tuple[int, list[tuple[str, str]], bytes]:
    cmd = command(f"req{next(_n)}-{time.time_ns()}", user, service, "/v1/chat/completions", body=chat_body())
    return parse_http(run_inproc(cmd, home))


def test_no_limit_answers_carry_no_ratelimit_headers(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    status, headers, _ = ask(home)
    assert status == 200
    assert not [h for h, _ in headers if h.lower().startswith("x-ratelimit")]


def test_requests_per_minute_refuses_with_429_headers_and_records(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, b = world
    limit(engine, "user", "alice", requests_minute=2, requests_day=100)
    first = ask(home)
    assert first[0] == 200
    assert header(first[1], "x-ratelimit-limit-minute") == "2"
    assert header(first[1], "x-ratelimit-remaining-minute") == "1"
    assert header(first[1], "x-ratelimit-remaining-day") == "99"
    assert ask(home)[0] == 200
    status, headers, body = ask(home)
    assert status == 429
    assert header(headers, "x-ratelimit-remaining-minute") == "0"
    assert 1 <= int(header(headers, "Retry-After") or "0") <= 60
    doc = json.loads(body)
    assert doc["error"]["type"] == "rate_limit_exceeded" and doc["limit"] == "requests_minute"
    assert "requests_minute = 2 of user alice" in doc["error"]["message"]
    assert ask(home, user="bob")[0] == 200  # another user is not counted
    assert len(b.received) == 3
    recorded = rows(home / "saia.db")
    refused = [r for r in recorded if r["status"] == 429]
    assert len(refused) == 1 and refused[0]["job_id"] is None and refused[0]["ended_at"] is not None
    assert refused[0]["error"].startswith(admission.REFUSED_PREFIX)
    # the refused request consumed nothing: the day counter counts the two served ones
    with closing(sqlite3.connect(home / "saia.db")) as c:
        day = c.execute("SELECT value FROM limit_counters WHERE kind = 'requests_day'").fetchone()[0]
    assert day == 2


def test_project_pattern_limit_counts_its_members_together(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    with write_session(engine) as s:
        add_project(s, "unix", "acc", ["*@uni-x.de"])
    limit(engine, "project", "unix", requests_hour=3)
    served = [ask(home, user=u)[0] for u in ("a@uni-x.de", "b@uni-x.de", "c@uni-x.de", "a@uni-x.de")]
    assert served == [200, 200, 200, 429]
    assert ask(home, user="d@other.de")[0] == 200  # the default project is not limited


def test_user_limit_overrides_the_default(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    limit(engine, "default", None, requests_minute=1)
    limit(engine, "user", "vip", requests_minute=3)
    assert [ask(home, user="vip")[0] for _ in range(4)] == [200, 200, 200, 429]
    assert [ask(home, user="pleb")[0] for _ in range(2)] == [200, 429]


def test_service_specific_limit_applies_only_there(world, engine, import_services) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    import_services(
        service_config(SERVICE, request_hold_time=0), service_config("other", request_hold_time=0)
    )
    other = FakeBackend("ok")
    add_ready_job(home, "other", other.port)
    limit(engine, "user", "alice", SERVICE, requests_minute=1)
    assert ask(home)[0] == 200
    assert ask(home)[0] == 429
    assert ask(home, service="other")[0] == 200
    other.close()


def test_token_budget_checked_against_recorded_tokens(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    limit(engine, "user", "alice", tokens_day=10)  # the fake backend answers 3 + 5 tokens
    assert ask(home)[0] == 200  # 0 recorded when it arrived
    assert ask(home)[0] == 200  # 8 recorded < 10
    status, _h, body = ask(home)  # 16 recorded >= 10
    assert status == 429 and json.loads(body)["limit"] == "tokens_day"


def test_token_budget_overrun_is_bounded_by_the_burst_in_flight(world, engine) -> None:  # type: ignore[no-untyped-def]
    """n requests admitted while none has finished may use n answers' tokens beyond
    the budget, never more: after the burst every new request is refused."""
    home, _b = world
    budget, per_request, burst = 10, 8, 6
    limit(engine, "user", "alice", tokens_day=budget)
    with ThreadPoolExecutor(burst) as pool:
        statuses = list(pool.map(lambda _: ask(home)[0], range(burst)))
    served = statuses.count(200)
    used = served * per_request
    assert used <= budget - 1 + burst * per_request  # the documented bound
    assert ask(home)[0] == 429


def test_missing_counter_row_is_rebuilt_from_rows_never_zero(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    limit(engine, "user", "alice", requests_day=3)
    assert [ask(home)[0] for _ in range(2)] == [200, 200]
    with closing(sqlite3.connect(home / "saia.db")) as c, c:
        c.execute("DELETE FROM limit_counters")
    assert ask(home)[0] == 200
    assert ask(home)[0] == 429


def test_corrupt_counter_row_is_rebuilt_from_rows(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    limit(engine, "user", "alice", requests_day=3)
    assert [ask(home)[0] for _ in range(2)] == [200, 200]
    with closing(sqlite3.connect(home / "saia.db")) as c, c:
        c.execute("UPDATE limit_counters SET value = 'garbage', window = 7")
    assert ask(home)[0] == 200
    status, _h, body = ask(home)
    assert status == 429, body


def test_missing_gpu_figure_refuses_with_503_not_a_traceback(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, b = world
    limit(engine, "user", "alice", gpu_hours_month=1)
    status, headers, body = ask(home)
    assert status == 503 and "GPU-hours" in json.loads(body)["error"]["message"]
    assert header(headers, "Retry-After") == "60"
    assert not b.received
    # not admitted, so not counted: a request limit rebuilt from the rows skips it
    [row] = rows(home / "saia.db")
    assert row["status"] == 503 and row["error"].startswith(admission.REFUSED_PREFIX)
    limit(engine, "user", "bob", requests_day=1)
    with closing(sqlite3.connect(home / "saia.db")) as c, c:
        c.execute("UPDATE requests SET user_id = 'bob'")
    assert ask(home, user="bob")[0] == 200


def test_concurrent_limit_counts_rows_in_flight(world, engine) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    limit(engine, "user", "alice", concurrent=1)
    with closing(sqlite3.connect(home / "saia.db")) as c, c:
        c.execute(
            "INSERT INTO requests (inference_id, user_id, service_id, method, path, started_at, bytes_in,"
            " bytes_out, handler_host, handler_pid) VALUES ('inflight', 'alice', ?, 'POST', '/', ?, 0, 0, 'h', 1)",
            (SERVICE, time.time()),
        )
    assert ask(home)[0] == 429
    assert ask(home, user="bob")[0] == 200


@pytest.mark.parametrize("k", [5])
def test_exactly_k_of_64_simultaneous_requests_through_cloud_interface(world, engine, k: int) -> None:  # type: ignore[no-untyped-def]
    home, _b = world
    limit(engine, "user", "alice", requests_minute=k)
    cmds = [
        command(f"burst{i}", "alice", SERVICE, "/v1/chat/completions", body=chat_body()) for i in range(64)
    ]
    # a minute boundary in the middle of the burst would open a new window
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda c: run_interface(home, c), cmds))
    statuses = [parse_http(a.stdout)[0] for a in answers]
    assert statuses.count(200) == k and statuses.count(429) == 64 - k
    assert len([r for r in rows(home / "saia.db") if r["status"] == 429]) == 64 - k


def test_glob_match() -> None:
    assert admission.glob_match("*@uni-x.de", "a.b@uni-x.de")
    assert not admission.glob_match("*@uni-x.de", "a@uni-x.de.evil")
    assert admission.glob_match("a?c*", "abcdef") and not admission.glob_match("a?c", "ac")
    assert admission.project_in([("p", "*@x"), ("q", "bob@x")], "bob@x") == "q"  # exact beats a pattern
    assert admission.project_in([("p", "*@x")], "bob@y") == admission.DEFAULT_PROJECT


def test_windows_are_calendar_days_and_months_in_the_zone() -> None:
    now = 1764633600.0  # 2025-12-02 00:00 UTC = 01:00 in Berlin
    key, start, end = admission.window_of("day", now - 1800, "Europe/Berlin")  # 00:30 Berlin
    assert key == "2025-12-02" and start == now - 3600 and end == now - 3600 + 86400
    key, start, end = admission.window_of("month", now, "UTC")
    assert key == "2025-12" and end == 1767225600.0
    key, start, end = admission.window_of("minute", now + 59.5, "UTC")
    assert (start, end) == (now, now + 60)


def test_usage_endpoint_equals_the_report_and_counts_nothing(world, engine) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from saia_ctl.cli.main import app

    home, b = world
    limit(engine, "user", "alice", requests_minute=2, tokens_month=1000)
    assert [ask(home)[0] for _ in range(3)] == [200, 200, 429]
    assert ask(home, user="bob")[0] == 200
    before = rows(home / "saia.db")
    served = len(b.received)
    cmd = command("usage-1", "alice", "anything", "/v1/usage", method="GET", body=None)
    status, _headers, body = parse_http(run_inproc(cmd, home))
    assert status == 200, body
    doc = json.loads(body)
    assert rows(home / "saia.db") == before and len(b.received) == served  # no row, no backend
    result = CliRunner().invoke(
        app, ["report", "--month", doc["month"], "--user", "alice", "-f", "json", "--no-files"]
    )
    report = json.loads(result.stdout)
    totals = report["totals"]
    for key in ("requests", "input_tokens", "output_tokens", "gpu_hours"):
        assert doc[key] == totals[key], key
    assert doc["requests"] == 3  # the refused request is recorded and reported
    assert doc["tokens"] == 16
    by_kind = {r["limit"]: r for r in doc["limits"]}
    assert by_kind["requests_minute"]["remaining"] == 0 and by_kind["requests_minute"]["used"] == 2
    assert by_kind["tokens_month"]["used"] == 16 and by_kind["tokens_month"]["remaining"] == 984
    # asking twice changes nothing: still no refusal for asking
    again = json.loads(parse_http(run_inproc(cmd, home))[2])
    assert again["limits"] == doc["limits"]
    cli_doc = json.loads(CliRunner().invoke(app, ["usage", "--user", "alice", "-f", "json"]).stdout)
    assert {k: v for k, v in cli_doc.items() if k != "limits"} == {
        k: v for k, v in doc.items() if k != "limits"
    }
