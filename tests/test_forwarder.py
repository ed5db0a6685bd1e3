"""The opt-in forwarder (``SAIA_FORWARDER=on``, ``saia_ctl/forwarder.py`` +
``saia_ctl/hotpath/client.pl``): the same answers and rows as the one-process
path, streaming, stdin bodies, clients that go away, concurrency, the
fallback when it is absent or stale, one instance, a private directory, and
keep-alive starting it only when on.

Each test has its own short ``TMPDIR`` (the socket directory lives there).
``cloud_interface.sh`` -> perl -> python is one exec chain, one pid: a row whose
``handler_pid`` is that pid took the one-process path; any other pid is a
child of the forwarder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.forwarder import answers, base_dir, socket_path
from tests.support.backend import BackendProcess as Backend
from tests.support.fixtures import service_config
from tests.support.net import free_port
from tests.support.paths import CLOUD_INTERFACE, REPO
from tests.support.wire import add_job, chat_body, command, environment, rows
from tests.support.wire import parse_as_proxy as parse_http

JSON = {"content-type": "application/json"}
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable

pytestmark = pytest.mark.skipif(not os.access("/usr/bin/perl", os.X_OK), reason="needs /usr/bin/perl")


@pytest.fixture
def tmpdir_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short private TMPDIR for this test (socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="sf", dir="/tmp")
    monkeypatch.setenv("TMPDIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.stop()


@pytest.fixture
def svc(home: Path, import_services: Any, tmpdir_env: str) -> Path:
    import_services(
        service_config("svc", minimum_number_instances=0, maximum_number_instances=0, request_hold_time=1),
        service_config("dead", minimum_number_instances=0, maximum_number_instances=0, request_hold_time=0),
    )
    path = home / "saia.conf"
    path.write_text(path.read_text() + "SAIA_FORWARDER=on\nSAIA_BACKEND_TIMEOUT=3\n")
    return home / "saia.db"


class Forwarder:
    def __init__(self, home: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAIA_")}
        env.update(SAIA_HOME=str(home), PYTHONPATH=str(REPO))
        self.log = home / "forwarder-test.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "saia_ctl.forwarder", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.path = socket_path(str(home))

    def wait_ready(self) -> Forwarder:
        for _ in range(200):
            if answers(self.path):
                return self
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.025)
        raise AssertionError("the forwarder did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def forwarder(home: Path, svc: Path) -> Iterator[Forwarder]:
    f = Forwarder(home).wait_ready()
    yield f
    f.stop()


def call(home: Path, cmd: bytes, stdin: bytes = b"", timeout: float = 60) -> tuple[int, bytes, bytes, int]:
    """(exit status, stdout, stderr, pid) of cloud_interface.sh run as sshd would."""
    env = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in environment(home, cmd).items()}
    env[b"SSH_ORIGINAL_COMMAND"] = cmd
    p = subprocess.Popen(
        [str(CLOUD_INTERFACE)],
        env=env,  # type: ignore[arg-type]
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = p.communicate(stdin, timeout=timeout)
    return p.returncode, out, err, p.pid


ROW_FIELDS = (
    "user_id", "service_id", "job_id", "method", "path", "status", "outcome",
    "bytes_in", "bytes_out", "input_tokens", "output_tokens", "error",
)  # fmt: skip


def scenario(home: Path, db: Path, tag: str, good: int, dead: int) -> list[tuple[Any, ...]]:
    """The requests of test_route_local that matter here; what each answered and recorded."""
    big = b'{"big": "' + b"z" * 200_000 + b'"}'
    cases: list[tuple[bytes, bytes]] = [
        (command(f"{tag}1", "u@x", "svc", "/v1/chat/completions", headers=JSON, body=chat_body()), b""),
        (
            command(
                f"{tag}2",
                "u@x",
                "svc",
                "/v1/chat/completions",
                headers=JSON,
                body=chat_body(True, max_tokens=4, stream_options={"include_usage": True}),
            ),
            b"",
        ),
        (command(f"{tag}3", "u@x", "svc", "/echo", headers=JSON, body=None), big),
        (
            command(f"{tag}4", "u@x", "svc", "/echo", headers={"content-length": "5"}, body=None),
            b"hello world",
        ),
        (command(f"{tag}5", "u@x", "svc", "/v1/chat/completions", body=b"not json"), b""),  # backend 400
        (command(f"{tag}6", "u@x", "nope", "/echo", body=b""), b""),  # 404
        (b"x\nu\nsvc\n/../etc/passwd\n -X GET -d ", b""),  # 400
        (command(f"{tag}7", "u@x", "dead", "/echo", body=b""), b""),  # 502
        (command(f"{tag}8", "u@x", "svc", "/break?after=25", body=b""), b""),
        (b"keep-alive", b""),
        (b"status", b""),
    ]
    out = []
    for cmd, stdin in cases:
        rc, raw, err, _pid = call(home, cmd, stdin)
        assert err == b""
        if b"/break" in cmd:
            # The exit status (not part of the protocol) of an answer broken off
            # mid-way: 1 from the one process, 0 from the client (which only sees the status line).
            rc = -1
        if raw.startswith(b"HTTP/"):
            status, headers, body = parse_http(raw)
            headers = [(k, v) for k, v in headers if k.lower() != "date"]
            out.append((rc, status, headers, re.sub(rb'"created": \d+', b"", body)))  # the backend's clock
        else:
            out.append((rc, raw))
    for r in rows(db):
        out.append((*(r[f] for f in ROW_FIELDS), r["inference_id"].removeprefix(tag)))
    return out


def served_by_forwarder(db: Path, pids: set[int]) -> bool:
    return all(r["handler_pid"] not in pids for r in rows(db))


def test_same_answers_and_rows_as_the_one_process_path(
    home: Path, svc: Path, backend: Backend, tmpdir_env: str
) -> None:
    _no_tick_due(svc)  # keep-alive starts no (Slurm) tick
    good = add_job(svc, "svc", backend.port, backend.secret)
    dead = add_job(svc, "dead", free_port(), "x")
    f = Forwarder(home).wait_ready()
    try:
        via_forwarder = scenario(home, svc, "f", good, dead)
    finally:
        f.stop()
    pids = {r["handler_pid"] for r in rows(svc)}
    assert f.proc.pid not in pids and len(pids) == len(rows(svc))  # one forked child each
    with sqlite3.connect(svc) as conn:
        conn.execute("DELETE FROM requests")
    conn.close()
    assert not os.path.exists(f.path)  # removed at exit: the next requests fall back
    conf = home / "saia.conf"
    conf.write_text(conf.read_text().replace("SAIA_FORWARDER=on", "SAIA_FORWARDER=off"))
    one_process = scenario(home, svc, "f", good, dead)
    assert via_forwarder == one_process
    assert len(via_forwarder) == 11 + 7  # 11 answers, 7 rows (the 400 and 404 are not recorded)


def test_sse_chunks_arrive_before_the_answer_ends(
    home: Path, svc: Path, backend: Backend, forwarder: Any
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    body = chat_body(True, max_tokens=6, token_delay=0.25)
    cmd = command("s2", "u", "svc", "/v1/chat/completions", headers=JSON, body=body)
    start = time.monotonic()
    p = subprocess.Popen(
        [str(CLOUD_INTERFACE)], env=environment(home, cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
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
    assert first_event < total - 1.0, arrivals
    assert len({n for _, n in arrivals}) >= 3, arrivals  # events arrive apart, not in one piece
    assert served_by_forwarder(svc, {p.pid})
    assert rows(svc)[0]["outcome"] == "ok"


def test_client_gone_mid_stream_closes_the_row_as_aborted(
    home: Path, svc: Path, backend: Backend, forwarder: Any
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    body = chat_body(True, max_tokens=40, token_delay=0.1)
    cmd = command("gone", "u", "svc", "/v1/chat/completions", headers=JSON, body=body)
    p = subprocess.Popen(
        [str(CLOUD_INTERFACE)], env=environment(home, cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert p.stdout is not None
    assert os.read(p.stdout.fileno(), 65536).startswith(b"HTTP/1.1 200")
    p.stdout.close()  # the SSH channel goes away
    p.wait(10)
    for _ in range(100):
        if rows(svc)[0]["ended_at"] is not None:
            break
        time.sleep(0.05)
    [row] = rows(svc)
    assert row["outcome"] == "aborted" and row["status"] == 200 and row["handler_pid"] != p.pid
    assert row["ended_at"] - row["started_at"] < 2  # noticed at once, not at the end of the answer


def test_client_gone_while_waiting_for_headers_and_sighup(
    home: Path, svc: Path, backend: Backend, forwarder: Any
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)

    def start(iid: str) -> subprocess.Popen[bytes]:
        cmd = command(iid, "u", "svc", "/hang", body=b"")
        p = subprocess.Popen(
            [str(CLOUD_INTERFACE)],
            env=environment(home, cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(100):
            if rows(svc, "inference_id = ?", (iid,)):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        return p

    p = start("hup")
    p.send_signal(signal.SIGHUP)  # sent on to the child, as sshd's SIGHUP reaches the one process
    out, err = p.communicate(timeout=10)
    assert b"Traceback" not in out + err
    p = start("closed")
    assert p.stdout is not None
    p.stdout.close()
    p.kill()  # the client dies: its socket closes
    p.wait(10)
    time.sleep(0.5)
    hup, closed = rows(svc)
    assert hup["outcome"] == "aborted" and "signal" in hup["error"], hup
    assert closed["outcome"] == "aborted" and closed["ended_at"] is not None, closed
    assert closed["ended_at"] - closed["started_at"] < 2


def test_32_concurrent_clients_x_10_requests(home: Path, svc: Path, forwarder: Any) -> None:
    backends = [Backend(), Backend()]
    try:
        for b in backends:
            add_job(svc, "svc", b.port, b.secret)
        failures: list[str] = []

        def client(c: int) -> None:
            for i in range(10):
                extra = {"stream_options": {"include_usage": True}} if i % 2 == 0 else {}
                body = chat_body(i % 2 == 0, max_tokens=3, **extra)
                cmd = command(f"c{c}-{i}", "u", "svc", "/v1/chat/completions", headers=JSON, body=body)
                try:
                    rc, out, err, _pid = call(home, cmd)
                    if not out.startswith(b"HTTP/1.1 200") or rc != 0:
                        failures.append(f"{c}-{i}: {rc} {out[:100]!r} {err[:200]!r}")
                except Exception as e:
                    failures.append(f"{c}-{i}: {e}")

        threads = [threading.Thread(target=client, args=(c,)) for c in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert failures == []
        time.sleep(0.3)  # the last rows are closed after the answer ended
        done = rows(svc)
        assert len(done) == 320
        assert all(r["outcome"] == "ok" and r["ended_at"] is not None for r in done)
        assert all(r["input_tokens"] and r["output_tokens"] == 3 and r["bytes_out"] for r in done)
        assert len({r["handler_pid"] for r in done}) == 320
    finally:
        for b in backends:
            b.stop()


def test_fallback_when_absent_stale_or_not_private(
    home: Path, svc: Path, backend: Backend, tmpdir_env: str
) -> None:
    add_job(svc, "svc", backend.port, backend.secret)
    cmd = command("fb", "u", "svc", "/echo", body=b"x")

    def one_process(n: int) -> None:
        rc, out, _err, pid = call(home, cmd)
        assert rc == 0 and out.startswith(b"HTTP/1.1 200")
        assert rows(svc)[-1]["handler_pid"] == pid
        assert len(rows(svc)) == n

    one_process(1)  # no directory at all: bash execs the one-process path itself
    folder = base_dir()
    os.mkdir(folder, 0o700)
    one_process(2)  # directory, no socket
    path = socket_path(str(home))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a dead forwarder's socket: connection refused
    one_process(3)
    f = Forwarder(home).wait_ready()  # replaces the stale socket
    try:
        rc, _out, _err, pid = call(home, cmd)
        assert rc == 0 and rows(svc)[-1]["handler_pid"] != pid
        os.chmod(folder, 0o755)  # not private any more: the client does not trust it
        one_process(5)
        os.chmod(folder, 0o700)
        assert call(home, cmd)[0] == 0 and rows(svc)[-1]["handler_pid"] != pid
    finally:
        f.stop()
    assert not os.path.exists(path)


def test_one_instance_and_a_private_directory(home: Path, svc: Path, tmpdir_env: str) -> None:
    first = Forwarder(home).wait_ready()
    try:
        second = Forwarder(home)
        assert second.proc.wait(20) == 2
        assert "another forwarder" in second.log.read_text()
        assert answers(first.path) and first.proc.poll() is None
    finally:
        first.stop()
    folder = base_dir()
    assert os.stat(folder).st_mode & 0o777 == 0o700
    os.chmod(folder, 0o750)
    f = Forwarder(home)
    assert f.proc.wait(20) == 1 and "accessible to others" in f.log.read_text()
    assert not os.path.exists(f.path)
    os.chmod(folder, 0o700)
    if os.getuid() == 0:
        os.chown(folder, 1, 1)
        f = Forwarder(home)
        assert f.proc.wait(20) == 1 and "owned by uid 1" in f.log.read_text()
        os.chown(folder, 0, 0)
    shutil.rmtree(folder)
    os.symlink(tempfile.mkdtemp(dir=tmpdir_env), folder)  # a symlink is not our directory either
    f = Forwarder(home)
    assert f.proc.wait(20) == 1 and "not a directory" in f.log.read_text()


def test_exits_when_idle_or_saia_conf_changes_or_off(home: Path, svc: Path, tmpdir_env: str) -> None:
    f = Forwarder(home, "--idle", "1").wait_ready()
    assert f.proc.wait(10) == 0 and not os.path.exists(f.path)
    f = Forwarder(home).wait_ready()
    conf = home / "saia.conf"
    conf.write_text(conf.read_text().replace("SAIA_FORWARDER=on", "SAIA_FORWARDER=off"))
    os.utime(conf, (time.time() + 5, time.time() + 5))
    assert f.proc.wait(10) == 0 and not os.path.exists(f.path)
    assert "saia.conf changed" in f.log.read_text()
    assert not os.path.exists(base_dir())  # off: its empty directory is gone too (no perl start)
    f = Forwarder(home)  # off: it does not start
    assert f.proc.wait(20) == 1 and "not on" in f.log.read_text()


def _no_tick_due(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO ticks (started_at, holder, summary, actions) VALUES (?, 'x', '', '[]')",
            (time.time() + 3600,),
        )
    conn.close()


def test_keep_alive_starts_it_only_when_on(home: Path, svc: Path, backend: Backend, tmpdir_env: str) -> None:
    _no_tick_due(svc)
    conf = home / "saia.conf"
    conf.write_text(conf.read_text().replace("SAIA_FORWARDER=on", "SAIA_FORWARDER=off"))
    assert call(home, b"keep-alive")[1] == b"OK\n"
    time.sleep(1.0)
    path = socket_path(str(home))
    assert not os.path.exists(base_dir()) and not answers(path)
    conf.write_text(conf.read_text().replace("SAIA_FORWARDER=off", "SAIA_FORWARDER=on"))
    try:
        assert call(home, b"keep-alive")[1] == b"OK\n"
        for _ in range(200):
            if answers(path):
                break
            time.sleep(0.025)
        assert answers(path)
        assert call(home, b"keep-alive")[1] == b"OK\n"  # through the forwarder; starts no second one
        add_job(svc, "svc", backend.port, backend.secret)
        rc, _out, _err, pid = call(home, command("ka", "u", "svc", "/echo", body=b""))
        assert rc == 0 and rows(svc)[0]["handler_pid"] != pid
        time.sleep(0.5)
        log = (home / "logs" / "forwarder.log").read_text()
        assert log.count("serving") == 1 and "not started" not in log, log
    finally:  # the forwarder keep-alive started, by the pid it logged
        log_path = home / "logs" / "forwarder.log"
        text = log_path.read_text() if log_path.exists() else ""
        for pid_text in re.findall(r"pid=(\d+) serving", text):
            try:
                os.kill(int(pid_text), signal.SIGTERM)
            except OSError:
                pass
    for _ in range(100):
        if not os.path.exists(path):
            break
        time.sleep(0.05)
    assert not os.path.exists(path)
    json.loads(call(home, b"status")[1])  # the one-process path again
