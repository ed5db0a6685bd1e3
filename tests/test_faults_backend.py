"""Backend and client faults through the real forced command, several rounds each.

A backend that accepts but never answers -> 504 within the configured
timeout; one that answers garbage -> 502; one that dies mid-stream -> the
client gets a truncated answer and the row ends as error; a client that goes
away mid-stream -> the row ends as aborted. In every case the row is closed
(never left in flight) and the handler exits.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.paths import REPO
from tests.support.wire import (
    add_ready_job,
    assert_error_answer,
    interface_argv,
    parse_http,
    process_env,
    request_rows,
    run_process,
)

SERVICE = "svc-faulty"
SBATCH = str(REPO / "examples" / "saia" / "sbatch" / "example-service.sbatch")
ROUNDS = 3
TIMEOUT = 1.5


@pytest.fixture
def svc(home: Path, import_services: Callable[..., None]) -> Path:
    import_services(service_config(SERVICE, sbatch=SBATCH, minimum_number_instances=0))
    with open(home / "saia.conf", "a") as f:
        f.write(f"SAIA_BACKEND_TIMEOUT={TIMEOUT}\nSAIA_CONNECT_TIMEOUT=1\n")
    return home


def cmd(n: str, stream: bool = False) -> bytes:
    accept = ' -H "accept: text/event-stream"' if stream else ""
    return f"{n}\njdoe@uni-x.de\n{SERVICE}\n/v1/chat/completions\n -X POST{accept} -d {{}}".encode()


def rows_by_id(home: Path) -> dict[str, dict[str, object]]:
    return {str(r["inference_id"]): r for r in request_rows(home)}


def test_backend_that_never_answers_gets_504_in_time(svc: Path) -> None:
    with FakeBackend("hang") as b:
        add_ready_job(svc, SERVICE, b.port)
        for i in range(ROUNDS):
            t0 = time.monotonic()
            r = run_process(cmd(f"hang-{i}"), svc, timeout=30)
            took = time.monotonic() - t0
            assert_error_answer(r.stdout, (504,))
            assert took < TIMEOUT + 3, took
    rows = rows_by_id(svc)
    assert [rows[f"hang-{i}"]["status"] for i in range(ROUNDS)] == [504] * ROUNDS
    assert all(r["outcome"] == "error" and r["ended_at"] for r in rows.values())


def test_backend_that_answers_garbage_gets_502(svc: Path) -> None:
    with FakeBackend("garbage") as b:
        add_ready_job(svc, SERVICE, b.port)
        for i in range(ROUNDS):
            r = run_process(cmd(f"garbage-{i}"), svc)
            assert_error_answer(r.stdout, (502,))
            assert b"not HTTP at all" not in r.stdout
    rows = rows_by_id(svc)
    assert all(r["status"] == 502 and r["outcome"] == "error" and r["ended_at"] for r in rows.values())
    assert len(rows) == ROUNDS


def test_backend_dying_mid_stream_truncates_and_records_error(svc: Path) -> None:
    with FakeBackend("die", delay=0.05, events=6) as b:
        add_ready_job(svc, SERVICE, b.port)
        for i in range(ROUNDS):
            r = run_process(cmd(f"die-{i}", stream=True), svc)
            ans = parse_http(r.stdout, complete=False)
            assert ans.status == 200 and b'data: {"n": 0}' in ans.body
            assert b"[DONE]" not in ans.body
            assert b"Traceback" not in r.stdout + r.stderr
    rows = rows_by_id(svc)
    assert len(rows) == ROUNDS
    assert all(r["outcome"] == "error" and r["status"] == 200 and r["ended_at"] for r in rows.values()), rows


def test_client_gone_mid_stream_records_aborted(svc: Path) -> None:
    with FakeBackend("stream", delay=0.3, events=10) as b:
        add_ready_job(svc, SERVICE, b.port)
        for i in range(ROUNDS):
            env = {k.encode(): v.encode() for k, v in process_env(svc).items()}
            env[b"SSH_ORIGINAL_COMMAND"] = cmd(f"gone-{i}", stream=True)
            p = subprocess.Popen(
                interface_argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert p.stdout is not None
            first = os.read(p.stdout.fileno(), 65536)
            assert first.startswith(b"HTTP/1.1 200")
            p.stdout.close()  # the SSH session goes away: stdout is closed under the handler
            p.wait(30)
            assert p.stderr is not None and b"Traceback" not in p.stderr.read()
            p.stderr.close()
    rows = rows_by_id(svc)
    assert len(rows) == ROUNDS
    assert all(r["outcome"] == "aborted" and r["ended_at"] for r in rows.values()), rows
