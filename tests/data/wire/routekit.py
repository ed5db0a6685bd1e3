"""Helpers of the request-path tests and bench: a local backend process, job
rows, the SAIA proxy's command format, running cloud_interface.sh, parsing
its raw HTTP answer."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.netkit import free_port

REPO = Path(__file__).resolve().parents[3]
CLOUD_INTERFACE = REPO / "cloud_interface.sh"
BACKEND = Path(__file__).with_name("backend.py")


class Backend:
    """``backend.py`` as a child process on a free port."""

    def __init__(self, secret: str = "s3cret", port: int | None = None) -> None:
        self.secret = secret
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(BACKEND), str(self.port), secret],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


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
) -> int:
    """Insert a live job row as the scheduler would have (tests only)."""
    now = time.time()
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        cur = conn.execute(
            "INSERT INTO jobs (name, service_id, state, node, port, secret, submitted_at, started_at,"
            " ready_at, gpus, health_failures) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
            (
                f"test_{service_id}_{port}_{now}",
                service_id,
                state,
                node if state in ("starting", "ready", "draining") else None,
                port,
                secret,
                submitted_at if submitted_at is not None else now - 5,
                now - 4 if state in ("starting", "ready", "draining") else None,
                ready_at if ready_at is not None else (now if state in ("ready", "draining") else None),
            ),
        )
        job_id = cur.lastrowid
    conn.close()
    assert job_id is not None
    return job_id


def set_job_state(db: Path | str, job_id: int, state: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        ended = time.time() if state == "ended" else None
        conn.execute(
            "UPDATE jobs SET state = ?, ended_at = ?, ready_at = coalesce(ready_at, ?) WHERE id = ?",
            (state, ended, time.time() if state == "ready" else None, job_id),
        )
    finally:
        conn.close()


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


def environment(home: Path | str, cmd: bytes) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIA_")}
    env["SAIA_HOME"] = str(home)
    env["SSH_ORIGINAL_COMMAND"] = cmd.decode("utf-8", "surrogateescape")
    return env


def run_interface(
    home: Path | str, cmd: bytes, stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run cloud_interface.sh as sshd would (no SSH)."""
    env = environment(home, cmd)
    env_b = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items()}
    env_b[b"SSH_ORIGINAL_COMMAND"] = cmd
    return subprocess.run(
        [str(CLOUD_INTERFACE)],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=env_b,  # type: ignore[arg-type]
    )


def parse_http(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a raw answer, as the SAIA proxy reads it."""
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
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def rows(db: Path | str, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM requests WHERE {where} ORDER BY id", params)]
    finally:
        conn.close()


def chat_body(stream: bool = False, **extra: Any) -> bytes:
    doc = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "say hello to me"}],
        "stream": stream,
    }
    doc.update(extra)
    return json.dumps(doc).encode()
