"""The request path end to end through ``cloud_interface.sh`` (no SSH, no Slurm)
against a local backend process: forwarding, streaming, recording, failures,
holding for a starting job, least-in-flight routing, control commands.

Every end-to-end case runs on the one-process path (bash execs ``python -I -S
entry.py``: one exec chain, one pid), through the ``via`` fixture, which
checks after each test that every row's ``handler_pid`` is the pid of a
``cloud_interface.sh`` it started."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import BackendProcess as Backend
from tests.support.fixtures import service_config
from tests.support.net import free_port
from tests.support.paths import CLOUD_INTERFACE, REPO
from tests.support.wire import (
    add_job,
    chat_body,
    command,
    environment,
    header,
    rows,
    run_interface,
    set_job_state,
)
from tests.support.wire import parse_as_proxy as parse_http

JSON = {"content-type": "application/json"}


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.stop()


@pytest.fixture
def svc(home: Path, import_services: Any) -> Path:
    """Service ``svc`` (no automatic starts, 1 s hold); returns the database path."""
    import_services(
        service_config("svc", minimum_number_instances=0, maximum_number_instances=0, request_hold_time=1)
    )
    return home / "saia.db"


def conf(home: Path, **values: object) -> None:
    path = home / "saia.conf"
    path.write_text(path.read_text() + "".join(f"{k}={v}\n" for k, v in values.items()))


class Ran:
    """What one run of ``cloud_interface.sh`` gave."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes, pid: int) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.pid = pid


class Via:
    """``cloud_interface.sh`` run as sshd runs it; remembers the pids it started."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pids: set[int] = set()

    def conf(self, **values: object) -> None:
        conf(self.home, **values)

    def popen(self, cmd: bytes, **kwargs: Any) -> subprocess.Popen[bytes]:
        """``cloud_interface.sh`` started as sshd would, stdin/stdout/stderr as given."""
        p = subprocess.Popen([str(CLOUD_INTERFACE)], env=environment(self.home, cmd), **kwargs)
        self.pids.add(p.pid)
        return p

    def run(self, cmd: bytes, stdin: bytes = b"", timeout: float = 60) -> Ran:
        p = self.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(stdin, timeout=timeout)
        return Ran(p.returncode, out, err, p.pid)

    def check_rows(self) -> None:
        """Every recorded request was handled by a process this test started (one exec chain)."""
        for r in rows(self.home / "saia.db"):
            assert r["handler_pid"] in self.pids, (r["inference_id"], r["handler_pid"])


@pytest.fixture
def via(home: Path) -> Iterator[Via]:
    v = Via(home)
    yield v
    v.check_rows()


def test_forwards_method_path_headers_body_with_the_job_secret(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    job = add_job(svc, "svc", backend.port, backend.secret)
    headers = {
        "content-type": "application/json",
        "authorization": "Bearer users-own-key",
        "host": "cloud.example",
        "connection": "keep-alive",
        "accept-encoding": "gzip",
        "user-agent": "OpenAI/Python 1.40",
    }
    r = via.run(command("inf-1", "jdoe@uni-x.de", "svc", "/echo?a=1&b=2", headers=headers, body=b'{"x":  1}'))
    assert r.stderr == b""
    status, _hdrs, body = parse_http(r.stdout)
    assert status == 200
    echo = json.loads(body)
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert echo["method"] == "POST" and echo["path"] == "/echo?a=1&b=2"
    assert echo["body"] == '{"x":  1}'
    assert sent["authorization"] == f"Bearer {backend.secret}"
    assert sent["host"] == f"127.0.0.1:{backend.port}"
    assert sent["content-length"] == "9"
    assert sent["connection"] == "close"
    assert sent["user-agent"] == "OpenAI/Python 1.40"
    assert "accept-encoding" not in sent
    [row] = rows(svc)
    assert row["inference_id"] == "inf-1" and row["user_id"] == "jdoe@uni-x.de"
    assert (row["service_id"], row["job_id"], row["method"], row["path"]) == (
        "svc",
        job,
        "POST",
        "/echo?a=1&b=2",
    )
    assert (row["status"], row["outcome"], row["error"]) == (200, "ok", None)
    assert row["bytes_in"] == 9 and row["bytes_out"] == len(body)
    assert row["started_at"] <= row["first_byte_at"] <= row["ended_at"]
    assert row["handler_pid"] > 0 and row["handler_host"]


def test_without_the_secret_the_backend_refuses(backend: Backend) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{backend.port}/echo", data=b"{}", method="POST")
        )
    assert e.value.code == 401
    with urllib.request.urlopen(f"http://127.0.0.1:{backend.port}/") as ok:  # readiness needs no secret
        assert ok.status == 200


def test_chat_completion_usage_is_recorded(home: Path, svc: Path, backend: Backend, via: Via) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    r = via.run(command("c1", "u", "svc", "/v1/chat/completions", headers=JSON, body=chat_body(max_tokens=7)))
    status, _hdrs, body = parse_http(r.stdout)
    doc = json.loads(body)
    assert status == 200 and doc["choices"][0]["message"]["content"].startswith("word0")
    [row] = rows(svc)
    assert (row["input_tokens"], row["output_tokens"]) == (doc["usage"]["prompt_tokens"], 7)


def test_streaming_is_dechunked_as_curl_prints_it(home: Path, svc: Path, backend: Backend, via: Via) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    body = chat_body(True, max_tokens=4, stream_options={"include_usage": True})
    r = via.run(command("s1", "u", "svc", "/v1/chat/completions", headers=JSON, body=body))
    status, hdrs, out = parse_http(r.stdout)
    assert status == 200
    assert header(hdrs, "Transfer-Encoding") == "chunked"  # curl -i prints it, and the de-chunked body
    events = [e for e in out.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    text = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content", "")
        for e in events[:-1]
        if json.loads(e[6:])["choices"]
    )
    assert text == "word0 word1 word2 word3 "
    [row] = rows(svc)
    assert (row["outcome"], row["input_tokens"], row["output_tokens"]) == ("ok", 4, 4)
    assert row["bytes_out"] == len(out)


def test_sse_chunks_arrive_before_the_answer_ends(home: Path, svc: Path, backend: Backend, via: Via) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    body = chat_body(True, max_tokens=6, token_delay=0.25)
    cmd = command("s2", "u", "svc", "/v1/chat/completions", headers=JSON, body=body)
    start = time.monotonic()
    p = via.popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert p.stdout is not None
    arrivals = []
    buf = b""
    while chunk := os.read(p.stdout.fileno(), 65536):
        buf += chunk
        arrivals.append((time.monotonic() - start, buf.count(b"data: ")))
    p.wait(10)
    p.stdout.close()
    total = arrivals[-1][0]
    first_event = next(t for t, n in arrivals if n >= 1)
    assert total >= 1.4
    assert first_event < total - 1.0, arrivals  # the first token came >1 s before the end
    # The events came in separate pieces.
    assert len({n for _, n in arrivals}) >= 5, arrivals
    assert rows(svc)[0]["outcome"] == "ok"


def test_stdin_body_is_streamed_chunked(home: Path, svc: Path, backend: Backend, via: Via) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    payload = b'{"big": "' + b"z" * 200_000 + b'"}'
    r = via.run(command("in1", "u", "svc", "/echo", headers=JSON, body=None), stdin=payload)
    status, _, body = parse_http(r.stdout)
    echo = json.loads(body)
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert status == 200 and echo["body"].encode() == payload
    assert sent["transfer-encoding"] == "chunked" and "content-length" not in sent
    assert rows(svc)[0]["bytes_in"] == len(payload)


def test_stdin_body_with_content_length_and_empty_stdin(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    r = via.run(
        command("in2", "u", "svc", "/echo", headers={"content-length": "5"}, body=None),
        stdin=b"hello world",
    )
    echo = json.loads(parse_http(r.stdout)[2])
    assert (
        echo["body"] == "hello" and dict((k.lower(), v) for k, v in echo["headers"])["content-length"] == "5"
    )
    r = via.run(command("in3", "u", "svc", "/echo", method="GET", body=None))
    echo = json.loads(parse_http(r.stdout)[2])
    assert echo["method"] == "GET" and echo["body"] == ""
    assert not {"content-length", "transfer-encoding"} & {k.lower() for k, _ in echo["headers"]}


def test_backend_answer_quirks(home: Path, svc: Path, backend: Backend, via: Via) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    r = via.run(command("q1", "u", "svc", "/chunked-echo", body=b"abc"))
    status, hdrs, body = parse_http(r.stdout)
    assert json.loads(body) == {"method": "POST", "body": "abc"}
    r = via.run(command("q2", "u", "svc", "/continue", body=b""))
    assert r.stdout.startswith(b"HTTP/1.1 200 OK\r\n") and b"100 Continue" not in r.stdout
    r = via.run(command("q3", "u", "svc", "/noreason", method="GET", body=b""))
    status, hdrs, body = parse_http(r.stdout)  # raises if a header line lacks ": "
    assert r.stdout.startswith(b"HTTP/1.1 200 OK\r\n") and header(hdrs, "X-Raw") == "v"
    r = via.run(command("q4", "u", "svc", "/echo", method="HEAD", body=None))
    status, hdrs, body = parse_http(r.stdout)
    assert status == 200 and body == b"" and int(header(hdrs, "Content-Length") or 0) > 0
    r = via.run(command("q5", "u", "svc", "/big?n=300000", method="GET", body=b""))
    status, hdrs, body = parse_http(r.stdout)
    assert len(body) == int(header(hdrs, "Content-Length") or 0) > 299_000 and json.loads(body)["usage"]
    assert [(x["outcome"], x["status"]) for x in rows(svc)] == [("ok", 200)] * 5
    assert rows(svc)[-1]["input_tokens"] == 7 and rows(svc)[-1]["output_tokens"] == 9


def test_backend_error_status_is_passed_through_and_recorded_as_error(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    r = via.run(command("e1", "u", "svc", "/v1/chat/completions", body=b"not json"))
    assert parse_http(r.stdout)[0] == 400
    [row] = rows(svc)
    assert (row["status"], row["outcome"]) == (400, "error")


def test_refused_backend_502_and_failover_to_another_ready_job(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    dead = add_job(svc, "svc", free_port(), "x")
    r = via.run(command("r1", "u", "svc", "/echo", body=b""))
    status, _, body = parse_http(r.stdout)
    assert status == 502 and b"refused" in body
    assert (
        rows(svc)[0]["job_id"] == dead
        and rows(svc)[0]["outcome"] == "error"
        and rows(svc)[0]["status"] == 502
    )
    live = add_job(svc, "svc", backend.port, backend.secret)
    for i in range(4):
        r = via.run(command(f"r2-{i}", "u", "svc", "/echo", body=b""))
        assert parse_http(r.stdout)[0] == 200
    assert {x["job_id"] for x in rows(svc)[1:]} == {live}


def test_backend_timeouts_and_closes(home: Path, svc: Path, backend: Backend, via: Via) -> None:
    via.conf(SAIA_BACKEND_TIMEOUT=0.5)
    add_job(svc, "svc", backend.port, backend.secret)
    t = time.monotonic()
    r = via.run(command("t1", "u", "svc", "/hang", body=b""))
    assert parse_http(r.stdout)[0] == 504 and time.monotonic() - t < 5
    r = via.run(command("t2", "u", "svc", "/close", body=b""))
    assert parse_http(r.stdout)[0] == 502
    assert [(x["status"], x["outcome"]) for x in rows(svc)] == [(504, "error"), (502, "error")]


def test_backend_dying_mid_answer_truncates_and_records_error(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    r = via.run(command("b1", "u", "svc", "/break?after=25", body=b""))
    status, hdrs, body = parse_http(r.stdout)
    assert status == 200 and body == b"x" * 25 and header(hdrs, "Content-Length") == "250"
    [row] = rows(svc)
    assert (row["status"], row["outcome"], row["bytes_out"]) == (200, "error", 25)
    assert "mid-answer" in row["error"]


def test_unknown_disabled_and_invalid_are_not_recorded(
    home: Path, svc: Path, backend: Backend, import_services: Any, via: Via
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    r = via.run(command("n1", "u", "nope", "/echo", body=b""))
    assert parse_http(r.stdout)[0] == 404
    import_services(service_config("other"))  # svc is no longer in the config: disabled
    r = via.run(command("n2", "u", "svc", "/echo", body=b""))
    assert parse_http(r.stdout)[0] == 404
    r = via.run(b"n3\nu\nother\n/../etc/passwd\n -X GET -d ")
    status, _, _body = parse_http(r.stdout)
    assert status == 400 and r.returncode == 1
    assert rows(svc) == []


def test_duplicate_inference_id_is_recorded_with_a_suffix(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    for _ in range(3):
        r = via.run(command("dup", "u", "svc", "/echo", body=b""))
        assert parse_http(r.stdout)[0] == 200
    assert [x["inference_id"] for x in rows(svc)] == ["dup", "dup~2", "dup~3"]


def test_no_backend_records_demand_holds_and_answers_503(home: Path, svc: Path, via: Via) -> None:
    via.conf(SAIA_PYTHON="/bin/true")  # the tick it starts does nothing here
    t = time.monotonic()
    r = via.run(command("h1", "u", "svc", "/v1/chat/completions", body=b"{}"))
    waited = time.monotonic() - t
    status, hdrs, body = parse_http(r.stdout)
    assert status == 503 and 1.0 <= waited < 5
    assert header(hdrs, "Retry-After") == "60"
    doc = json.loads(body)
    assert doc["state"] == "not started" and "retry" in doc["error"]["message"]
    with sqlite3.connect(svc) as conn:
        (demand,) = conn.execute("SELECT demand_at FROM service_states WHERE service_id='svc'").fetchone()
    assert demand is not None and abs(demand - time.time()) < 10
    [row] = rows(svc)
    assert (row["status"], row["outcome"], row["job_id"]) == (503, "error", None)


def test_503_says_pending_or_loading_with_an_estimate(home: Path, svc: Path, via: Via) -> None:
    via.conf(SAIA_PYTHON="/bin/true")
    now = time.time()
    for took in (100, 200, 300):  # past jobs: median submit -> ready 200 s
        j = add_job(svc, "svc", free_port(), "x", submitted_at=now - 1000, ready_at=now - 1000 + took)
        set_job_state(svc, j, "ended")
    add_job(svc, "svc", free_port(), "x", state="pending", submitted_at=now - 50)
    r = via.run(command("h2", "u", "svc", "/x", body=b""))
    status, hdrs, body = parse_http(r.stdout)
    assert status == 503 and json.loads(body)["state"] == "pending"
    assert 140 <= int(header(hdrs, "Retry-After") or 0) <= 150
    add_job(svc, "svc", free_port(), "x", state="starting", submitted_at=now - 150)
    r = via.run(command("h3", "u", "svc", "/x", body=b""))
    status, hdrs, body = parse_http(r.stdout)
    assert json.loads(body)["state"] == "starting" and b"loading" in body
    assert 45 <= int(header(hdrs, "Retry-After") or 0) <= 52


def test_held_request_is_served_once_a_job_is_ready(
    home: Path, home_with_hold: Path, backend: Backend, via: Via
) -> None:
    db = home_with_hold
    job = add_job(db, "svc", backend.port, backend.secret, state="starting")
    timer = threading.Timer(1.0, set_job_state, (db, job, "ready"))
    timer.start()
    t = time.monotonic()
    r = via.run(command("w1", "u", "svc", "/echo", body=b"{}"))
    timer.join()
    assert parse_http(r.stdout)[0] == 200 and 0.9 <= time.monotonic() - t < 5
    [row] = rows(db)
    assert (row["job_id"], row["outcome"]) == (job, "ok")


@pytest.fixture
def home_with_hold(home: Path, import_services: Any, via: Via) -> Path:
    import_services(
        service_config("svc", minimum_number_instances=0, maximum_number_instances=1, request_hold_time=10)
    )
    via.conf(SAIA_PYTHON="/bin/true")
    return home / "saia.db"


def test_no_backend_starts_a_tick_at_once(home: Path, svc: Path, tmp_path: Path, via: Via) -> None:
    marker = tmp_path / "spawned"
    fake = tmp_path / "fake-python"
    fake.write_text(f'#!/bin/sh\necho "$@" "$(ps -o sid= -p $$)" >> {marker}\n')
    fake.chmod(0o755)
    via.conf(SAIA_PYTHON=fake)
    via.run(command("d1", "u", "svc", "/x", body=b""))
    for _ in range(50):
        if marker.exists():
            break
        time.sleep(0.05)
    args = marker.read_text().split()
    assert args[:2] == ["-m", "saia_ctl.scheduler"] and "--if-due" not in args[:3]


def _slow_request(via: Via, i: int) -> bytes:
    body = chat_body(True, max_tokens=4, token_delay=0.3)
    return via.run(command(f"slow-{i}", "u", "svc", "/v1/chat/completions", headers=JSON, body=body)).stdout


def test_least_in_flight_routing_splits_load_evenly(home: Path, svc: Path, via: Via) -> None:
    a, b = Backend(), Backend()
    try:
        ja = add_job(svc, "svc", a.port, a.secret)
        jb = add_job(svc, "svc", b.port, b.secret)
        threads = [threading.Thread(target=_slow_request, args=(via, i)) for i in range(8)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(30)
        got = [r["job_id"] for r in rows(svc)]
        assert len(got) == 8 and got.count(ja) == got.count(jb) == 4
        assert all(r["outcome"] == "ok" for r in rows(svc))
    finally:
        a.stop()
        b.stop()


def test_client_gone_mid_stream_closes_the_row_as_aborted(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    body = chat_body(True, max_tokens=40, token_delay=0.1)
    cmd = command("gone", "u", "svc", "/v1/chat/completions", headers=JSON, body=body)
    p = via.popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert os.read(p.stdout.fileno(), 65536).startswith(b"HTTP/1.1 200")
    p.stdout.close()  # the SSH channel goes away
    p.wait(10)
    for _ in range(100):
        if rows(svc)[0]["ended_at"] is not None:
            break
        time.sleep(0.05)
    [row] = rows(svc)
    assert row["outcome"] == "aborted" and row["ended_at"] is not None and row["status"] == 200
    assert row["ended_at"] - row["started_at"] < 2  # noticed at once, not at the end of the answer


def test_sighup_while_waiting_for_headers_closes_the_row(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    cmd = command("hup", "u", "svc", "/hang", body=b"")
    p = via.popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for _ in range(100):
        if rows(svc):
            break
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGHUP)
    out, err = p.communicate(timeout=10)
    assert b"Traceback" not in out + err
    [row] = rows(svc)
    assert row["outcome"] == "aborted" and "signal" in row["error"]


def test_locked_database_answers_503_and_logs(home: Path, svc: Path, backend: Backend, via: Via) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    via.conf(SAIA_BUSY_TIMEOUT=0.3)
    holder = sqlite3.connect(svc, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = via.run(command("lk", "u", "svc", "/echo", body=b""))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    status, _, body = parse_http(r.stdout)
    assert status == 503 and b"database" in body
    assert "locked" in (home / "logs" / "route.log").read_text()
    assert rows(svc) == []


def test_keep_alive_answers_at_once_and_starts_a_detached_throttled_tick(
    home: Path, svc: Path, tmp_path: Path, via: Via
) -> None:
    marker = tmp_path / "spawned"
    fake = tmp_path / "fake-python"
    # The fake tick outlives keep-alive by far: keep-alive must not wait for it.
    fake.write_text(
        f'#!/bin/sh\necho "$@" "$(ps -o sid= -p $$)" "$(readlink /proc/$$/fd/1)" >> {marker}\nsleep 3\n'
    )
    fake.chmod(0o755)
    via.conf(SAIA_PYTHON=fake, SAIA_TICK_INTERVAL=60)
    t = time.monotonic()
    r = via.run(b"keep-alive")
    assert r.stdout == b"OK\n" and time.monotonic() - t < 1.5
    for _ in range(50):
        if marker.exists():
            break
        time.sleep(0.05)
    words = marker.read_text().split()
    assert words[:3] == ["-m", "saia_ctl.scheduler", "--if-due"]
    assert words[3] != str(os.getsid(0))  # its own session
    assert words[4].endswith("logs/tick.log")
    # A tick began just now: the next keep-alive starts none.
    with sqlite3.connect(svc) as conn:
        conn.execute(
            "INSERT INTO ticks (started_at, holder, summary, actions) VALUES (?, 'x', '', '[]')",
            (time.time(),),
        )
    marker.unlink()
    assert via.run(b"keep-alive").stdout == b"OK\n"
    time.sleep(0.5)
    assert not marker.exists()


def test_status_lists_enabled_services_with_live_state(
    home: Path, svc: Path, import_services: Any, via: Via
) -> None:
    import_services(
        service_config("svc", minimum_number_instances=0, maximum_number_instances=2),
        service_config("b-starting"),
        service_config("c-off", minimum_number_instances=0),
    )
    add_job(svc, "svc", free_port(), "x")
    add_job(svc, "svc", free_port(), "x", state="draining")
    add_job(svc, "b-starting", free_port(), "x", state="pending")
    add_job(svc, "b-starting", free_port(), "x", state="starting")
    r = via.run(b"status")
    doc = json.loads(r.stdout)
    by_id = {s["id"]: s for s in doc["services"]}
    assert list(by_id) == ["b-starting", "c-off", "svc"]
    assert by_id["svc"]["state"] == "ready" and by_id["svc"]["ready"] == 1 and by_id["svc"]["draining"] == 1
    assert by_id["b-starting"]["state"] == "starting" and by_id["b-starting"]["starting"] == 2
    assert by_id["c-off"]["state"] == "offline"
    assert by_id["svc"]["input"] == ["text"] and by_id["svc"]["owned_by"] == "saia-tests"
    assert by_id["svc"]["maximum_number_instances"] == 2
    assert set(by_id["svc"]) >= {
        "id",
        "name",
        "owned_by",
        "input",
        "output",
        "target",
        "minimum_number_instances",
    }


def test_handler_imports_only_the_standard_library(home: Path, svc: Path, backend: Backend) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    cmd = command("imp", "u", "svc", "/v1/chat/completions", headers=JSON, body=chat_body())
    # Runs a whole request in a fresh `-I -S` interpreter; notes the modules
    # loaded when the first byte of the answer is written, and at the end.
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from saia_ctl.request_path import control, forward, handler\n"
        "first = []\n"
        "real = forward.write_all\n"
        "def spy(fd, data):\n"
        "    first.append(first or sorted(sys.modules))\n"
        "    real(fd, data)\n"
        "forward.write_all = handler.write_all = control.write_all = spy\n"
        "fd = os.open(os.devnull, os.O_WRONLY)\n"
        "rc = handler.run(os.environb[b'SSH_ORIGINAL_COMMAND'], stdout=fd)\n"
        "print(rc, ' '.join(first[0]), '|', ' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        env=environment(home, cmd),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rc, mods = out.split(" ", 1)
    before, after = (set(part.split()) for part in mods.split("|"))
    assert rc == "0" and rows(svc)[0]["outcome"] == "ok" and rows(svc)[0]["output_tokens"] == 5
    assert "saia_ctl.request_path.handler" in before and before <= after
    heavy = ("sqlalchemy", "typer", "alembic", "http", "email", "tabulate")
    assert not {m for m in after if m.split(".")[0] in heavy}
    # Before the first byte, not even the costly stdlib wrappers.
    assert not before & {
        "socket",
        "enum",
        "json",
        "re",
        "signal",
        "dataclasses",
        "typing",
        "inspect",
        "functools",
    }


def test_no_traceback_ever_reaches_stdout(home: Path, svc: Path) -> None:
    """With bad settings, one line on stderr and a 503, never a traceback."""
    (home / "saia.conf").write_text("SAIA_BUSY_TIMEOUT=not-a-number\n")
    r = run_interface(home, command("x", "u", "svc", "/x", body=b""))
    assert parse_http(r.stdout)[0] == 503 and b"Traceback" not in r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_client_gone_while_waiting_for_headers_is_noticed_at_once(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    """A long non-streaming answer sends nothing for minutes: a vanished client must
    still be noticed (stdout's POLLERR), the backend connection dropped, the row closed."""
    add_job(svc, "svc", backend.port, backend.secret)
    cmd = command("gone2", "u", "svc", "/hang", body=b"")
    p = via.popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert p.stdout is not None
    for _ in range(100):
        if rows(svc):
            break
        time.sleep(0.05)
    time.sleep(0.2)
    t = time.monotonic()
    p.stdout.close()
    p.wait(10)
    assert time.monotonic() - t < 3
    [row] = rows(svc)
    assert row["outcome"] == "aborted" and row["status"] is None


def test_job_at_the_end_of_its_walltime_gets_no_new_request(home: Path, svc: Path, via: Via) -> None:
    """Between two ticks a job can reach its walltime while still 'ready': Slurm would
    kill it mid-answer, so the request goes to a job with time left."""
    a, b = Backend(), Backend()
    try:
        ending = add_job(svc, "svc", a.port, a.secret)
        fresh = add_job(svc, "svc", b.port, b.secret)
        with sqlite3.connect(svc) as conn:  # started 4 s ago with a 10-s walltime; the other has 1 h
            conn.execute("UPDATE jobs SET walltime_limit = 10 WHERE id = ?", (ending,))
            conn.execute("UPDATE jobs SET walltime_limit = 3600 WHERE id = ?", (fresh,))
        for i in range(4):
            out = via.run(
                command(f"w-{i}", "u", "svc", "/v1/chat/completions", headers=JSON, body=chat_body())
            )
            assert out.stdout.startswith(b"HTTP/1.1 200")
        assert {r["job_id"] for r in rows(svc)} == {fresh}
    finally:
        a.stop()
        b.stop()


def test_a_saia_conf_that_still_sets_the_removed_forwarder_is_served(
    home: Path, svc: Path, backend: Backend, via: Via
) -> None:
    """``SAIA_FORWARDER`` is retired, not unknown: a site that kept it in saia.conf
    (where an unknown setting is an error) keeps being served, on the one-process path."""
    via.conf(SAIA_FORWARDER="on")
    add_job(svc, "svc", backend.port, backend.secret)
    out = via.run(command("kept", "u", "svc", "/v1/chat/completions", headers=JSON, body=chat_body()))
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 200"), out.stderr
    assert [r["outcome"] for r in rows(svc)] == ["ok"]
    assert via.run(b"keep-alive").stdout == b"OK\n"
