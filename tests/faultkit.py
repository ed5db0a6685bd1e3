"""Shared tools of the fault and bad-input suites: local backends that misbehave
on purpose, a ready job row pointing at them, the request path run in-process
or as the real process, and a strict parser of the HTTP answer.
Their own checks are in ``tests/test_faults_kit_selftest.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

PYTHON = str(REPO / ".venv" / "bin" / "python")
CLOUD_INTERFACE = REPO / "cloud_interface.sh"

OK_BODY = b'{"id":"x","object":"chat.completion","usage":{"prompt_tokens":3,"completion_tokens":5}}'


# --- strict HTTP answer parsing ----------------------------------------------


class HTTPAnswer:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def parse_http(data: bytes, *, complete: bool = True) -> HTTPAnswer:
    """Parse one raw HTTP/1.1 answer; AssertionError when it is not a complete one."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.split(b"\r\n")
    status_line = lines[0].decode("ascii")
    version, _, rest = status_line.partition(" ")
    assert version == "HTTP/1.1", status_line
    code, _, reason = rest.partition(" ")
    assert code.isdigit() and len(code) == 3, status_line
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        name, colon, value = raw.decode("latin-1").partition(":")
        assert colon and name and name == name.strip(), f"bad header line {raw!r}"
        headers.append((name, value.strip()))
    ans = HTTPAnswer(int(code), reason, headers, body)
    if complete:
        length = ans.header("content-length")
        assert length is not None and length.isdigit(), f"no Content-Length in {headers}"
        assert int(length) == len(body), f"Content-Length {length} but {len(body)} body bytes"
    return ans


def assert_error_answer(data: bytes, statuses: tuple[int, ...] = (400,)) -> HTTPAnswer:
    """A complete error answer of one of ``statuses`` with a JSON body that says what was wrong."""
    ans = parse_http(data)
    assert ans.status in statuses, (ans.status, ans.body[:300])
    doc = ans.json()
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    assert b"Traceback" not in data
    return ans


# --- misbehaving local backends ----------------------------------------------


class Backend:
    """A TCP server on 127.0.0.1 standing in for a backend job.

    mode: ``ok`` answers 200 JSON with a usage object; ``stream`` answers SSE
    events every ``delay`` s; ``hang`` accepts and never answers; ``garbage``
    answers bytes that are not HTTP; ``close`` accepts and closes at once;
    ``die`` sends the head and part of a stream, then resets the connection.
    Every request (head, body) is kept in ``received``.
    """

    def __init__(self, mode: str = "ok", delay: float = 0.05, events: int = 5) -> None:
        self.mode = mode
        self.delay = delay
        self.events = events
        self.received: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for c in self._open:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[bytes, bytes]:
        conn.settimeout(10)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return buf, b""
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        low = head.lower()
        if b"transfer-encoding: chunked" in low:
            body = bytearray()
            buf2 = bytearray(rest)
            pos = 0
            while True:
                while buf2.find(b"\r\n", pos) < 0:
                    data = conn.recv(1 << 20)
                    if not data:
                        return head, bytes(body)
                    buf2 += data
                eol = buf2.find(b"\r\n", pos)
                size = int(bytes(buf2[pos:eol]).split(b";")[0], 16)
                pos = eol + 2
                while len(buf2) < pos + size + 2:
                    data = conn.recv(1 << 20)
                    if not data:
                        return head, bytes(body)
                    buf2 += data
                if size == 0:
                    return head, bytes(body)
                body += buf2[pos : pos + size]
                pos += size + 2
                if pos > 1 << 22:  # keep the buffer small
                    del buf2[:pos]
                    pos = 0
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            data = conn.recv(1 << 20)
            if not data:
                break
            rest += data
        return head, rest

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.mode == "close":
                conn.close()
                return
            if self.mode == "hang":
                self._open.append(conn)
                return
            head, body = self._read_request(conn)
            with self._lock:
                self.received.append((head, body))
            if self.mode == "garbage":
                conn.sendall(b"\x00\xffthis is not HTTP at all\r\n\r\n\x00garbage")
            elif self.mode == "ok":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
                )
            elif self.mode in ("stream", "die"):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for i in range(self.events):
                    ev = b'data: {"n": %d}\n\n' % i
                    conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                    time.sleep(self.delay)
                    if self.mode == "die" and i == 1:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        conn.close()
                        return
                last = b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 7}}\n\ndata: [DONE]\n\n'
                conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))
            conn.close()
        except OSError:
            try:
                conn.close()
            except OSError:
                pass


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend("ok") as b:
        yield b


# --- database rows -------------------------------------------------------------


def add_ready_job(home: Path, service_id: str, port: int, node: str = "127.0.0.1") -> tuple[int, str]:
    """A live job row in state ready at node:port (what the tick writes once a job answers)."""
    secret = secrets.token_urlsafe(32)
    now = time.time()
    with closing(sqlite3.connect(home / "saia.db")) as conn, conn:
        cur = conn.execute(
            "INSERT INTO jobs (name, service_id, slurm_job_id, state, node, port, secret, submitted_at,"
            " started_at, ready_at, walltime_limit, gpus, health_failures)"
            " VALUES (?, ?, ?, 'ready', ?, ?, ?, ?, ?, ?, 3600, 0, 0)",
            (
                f"fake_{port}_{service_id}_{secrets.token_hex(4)}",
                service_id,
                900000 + port,
                node,
                port,
                secret,
                now - 5,
                now - 4,
                now - 3,
            ),
        )
        job_id = cur.lastrowid
    assert job_id is not None
    return job_id, secret


def request_rows(home: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(home / "saia.db")) as conn, conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]


def integrity(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn, conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# --- running the request path ----------------------------------------------------


def run_inproc(
    command: bytes, home: Path, stdin: bytes = b"", environ: dict[str, str] | None = None
) -> bytes:
    """The request path's in-process entry (``handler.run``); returns what it wrote to stdout."""
    from saia_ctl.request_path import handler

    out = os.memfd_create("answer")
    inp = os.memfd_create("body")
    try:
        os.write(inp, stdin)
        os.lseek(inp, 0, os.SEEK_SET)
        env = {"SAIA_HOME": str(home)} if environ is None else environ
        handler.run(command, stdin=inp, stdout=os.dup(out), environ=env)
        os.lseek(out, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(out, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(out)
        os.close(inp)


def interface_argv() -> list[str]:
    """The real forced command: ``cloud_interface.sh`` (the handler module while it is missing)."""
    if CLOUD_INTERFACE.exists():
        return [str(CLOUD_INTERFACE)]
    return [PYTHON, "-m", "saia_ctl.request_path.handler"]


def process_env(home: Path, command: bytes | None = None) -> dict[str, str]:
    """The almost empty environment sshd gives a forced command."""
    env = {"PATH": "/usr/bin:/bin", "SAIA_HOME": str(home), "LANG": "C.UTF-8"}
    if not CLOUD_INTERFACE.exists():
        env["PYTHONPATH"] = str(REPO)
    return env


def run_process(
    command: bytes, home: Path, stdin: bytes = b"", timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {k.encode(): v.encode() for k, v in process_env(home).items()}
    env[b"SSH_ORIGINAL_COMMAND"] = command
    return subprocess.run(
        interface_argv(), input=stdin, capture_output=True, timeout=timeout, env=env, cwd=cwd
    )
