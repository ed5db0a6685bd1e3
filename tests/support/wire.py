"""The request path's kit, shared by its tests and benches: job rows as the
tick writes them, the SAIA proxy's command format, the request path run
in-process or as sshd runs it, and two parsers of its raw HTTP answer (a
strict one, and one that reads it as the proxy does).
The fake backend those jobs point at is ``tests.support.backend``; the kit's
own checks are in ``tests/test_faults_kit_selftest.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.support.paths import CLOUD_INTERFACE

# --- strict HTTP answer parsing ----------------------------------------------


class HTTPAnswer:
    """One parsed HTTP answer: status, reason, headers in order, body."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

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


# --- database rows -------------------------------------------------------------


def add_job(
    db: Path | str,
    service_id: str,
    port: int,
    secret: str,
    *,
    node: str = "127.0.0.1",
    state: str = "ready",
    submitted_at: float | None = None,
    ready_at: float | None = None,
    slurm_job_id: int | None = None,
    walltime_limit: int | None = None,
) -> int:
    """Insert a live job row as the scheduler would have; returns its id."""
    now = time.time()
    live = state in ("starting", "ready", "draining")
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        cur = conn.execute(
            "INSERT INTO jobs (name, service_id, slurm_job_id, state, node, port, secret, submitted_at,"
            " started_at, ready_at, walltime_limit, gpus, health_failures)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
            (
                f"test_{service_id}_{port}_{secrets.token_hex(4)}",
                service_id,
                slurm_job_id,
                state,
                node if live else None,
                port,
                secret,
                submitted_at if submitted_at is not None else now - 5,
                now - 4 if live else None,
                ready_at if ready_at is not None else (now if state in ("ready", "draining") else None),
                walltime_limit,
            ),
        )
        job_id = cur.lastrowid
    assert job_id is not None
    return job_id


def add_ready_job(home: Path, service_id: str, port: int, node: str = "127.0.0.1") -> tuple[int, str]:
    """A ready job with a fresh secret and an hour of walltime in ``home``'s database: (id, secret)."""
    secret = secrets.token_urlsafe(32)
    job_id = add_job(
        home / "saia.db", service_id, port, secret, node=node, slurm_job_id=900000 + port, walltime_limit=3600
    )
    return job_id, secret


def set_job_state(db: Path | str, job_id: int, state: str) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        ended = time.time() if state == "ended" else None
        conn.execute(
            "UPDATE jobs SET state = ?, ended_at = ?, ready_at = coalesce(ready_at, ?) WHERE id = ?",
            (state, ended, time.time() if state == "ready" else None, job_id),
        )


def rows(db: Path | str, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The request rows of database ``db`` (optionally filtered), oldest first."""
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM requests WHERE {where} ORDER BY id", params)]


def request_rows(home: Path) -> list[dict[str, Any]]:
    """The request rows of ``home``'s database, oldest first."""
    return rows(home / "saia.db")


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
    """The real forced command."""
    return [str(CLOUD_INTERFACE)]


def process_env(home: Path) -> dict[str, str]:
    """The almost empty environment sshd gives a forced command."""
    return {"PATH": "/usr/bin:/bin", "SAIA_HOME": str(home), "LANG": "C.UTF-8"}


def run_process(
    command: bytes, home: Path, stdin: bytes = b"", timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cloud_interface.sh`` as sshd would, in sshd's almost empty environment."""
    env = {k.encode(): v.encode() for k, v in process_env(home).items()}
    env[b"SSH_ORIGINAL_COMMAND"] = command
    return subprocess.run(
        interface_argv(), input=stdin, capture_output=True, timeout=timeout, env=env, cwd=cwd
    )


def environment(home: Path | str, cmd: bytes) -> dict[str, str]:
    """This process's environment without its SAIA_* settings, pointed at ``home`` with ``cmd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIA_")}
    env["SAIA_HOME"] = str(home)
    env["SSH_ORIGINAL_COMMAND"] = cmd.decode("utf-8", "surrogateescape")
    return env


def run_interface(
    home: Path | str, cmd: bytes, stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cloud_interface.sh`` with this process's environment (see ``environment``), no SSH."""
    env_b = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in environment(home, cmd).items()}
    env_b[b"SSH_ORIGINAL_COMMAND"] = cmd
    return subprocess.run(
        interface_argv(),
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=env_b,  # type: ignore[arg-type]
    )


# --- the proxy's side of the wire ----------------------------------------------------


def command(
    inference_id: str,
    user: str,
    service: str,
    path: str,
    *,
    method: str = "POST",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | None = b"",
) -> bytes:
    """SSH_ORIGINAL_COMMAND exactly as saia-hub's proxy-hpc builds it
    (``\\n -X METHOD -H "k: v" ... -d `` + body); ``body=None`` leaves out ``-d``."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    headers_str = " ".join(f'-H "{k}: {v}"' for k, v in items)
    text = f"{inference_id}\n{user}\n{service}\n{path}\n -X {method} {headers_str}"
    if body is None:
        return text.encode()
    return (text + " -d ").encode() + body


def chat_body(stream: bool = False, **extra: Any) -> bytes:
    """A chat-completion request body for the fake backend's ``test-model``."""
    doc = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "say hello to me"}],
        "stream": stream,
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def parse_as_proxy(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a raw answer, read as the SAIA proxy reads it."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no end of head in {raw[:200]!r}"
    lines = head.decode("utf-8").split("\r\n")
    version, code, _reason = lines[0].split(" ", 2)
    assert version.startswith("HTTP/1.")
    headers = []
    for pair in lines[1:]:
        name, value = pair.split(": ", 1)  # what proxy-hpc does
        headers.append((name, value))
    return int(code), headers, body


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (any case) in ``headers``."""
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None
