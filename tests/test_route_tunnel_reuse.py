"""What the tunnel's process keeps between streams: its handler threads, and
kept-alive connections to the backends (a kept connection the backend closed
meanwhile costs a second try on a new one, never the request); and the one CPU
it keeps to (``SAIA_TUNNEL_CPUS``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.request_path import tunnel_frames as tf
from saia_ctl.settings import Settings
from tests.support.backend import FakeBackend
from tests.support.tunnel import Session
from tests.support.wire import add_ready_job, command, environment, interface_argv, parse_http, rows

JSON = {"content-type": "application/json"}


def _ask(s: Session, sid: int, inline: bool) -> dict[str, Any]:
    body = json.dumps({"n": sid}).encode()
    if inline:
        s.send(tf.OPEN, sid, command(f"re-{sid}", "u", "svc", "/echo", headers=JSON, body=body))
    else:
        s.send(tf.OPEN, sid, command(f"re-{sid}", "u", "svc", "/echo", headers=JSON, body=None))
        s.send(tf.BODY, sid, body)
        s.send(tf.END, sid)
    s.collect({sid})
    ans = parse_http(bytes(s.answers[sid]))
    assert ans.status == 200 and s.done[sid] == b"ok"
    return dict(ans.json())


def test_streams_one_after_another_share_a_thread_and_a_backend_connection(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    n = 12
    for sid in range(1, n + 1):
        assert json.loads(_ask(s, sid, inline=sid % 2 == 0)["body"]) == {"n": sid}
    assert s.tunnel.workers.started < n
    assert backend.connections < n
    heads = [head.lower() for head, _ in backend.received]
    assert len(heads) == n and not any(b"connection: close" in h for h in heads)
    s.close()
    s.thread.join(30)
    assert {r["outcome"] for r in rows(svc)} == {"ok"}


def test_a_kept_connection_the_backend_closed_is_replaced(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    """The pool holds a connection to a stand-in that reads the request and hangs up
    without answering (a backend closing an idle connection as it is used)."""
    add_ready_job(home, "svc", backend.port)
    closer = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def hang_up() -> None:
        conn, _ = closer.accept()
        got.append(conn.recv(65536))
        conn.close()

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    s = Session(settings, home)
    stale = socket.create_connection(closer.getsockname())
    s.tunnel.backends.give("127.0.0.1", backend.port, stale)
    for sid, inline in ((1, False), (2, True)):
        if sid == 2:  # again, with the body inline
            t = threading.Thread(target=hang_up, daemon=True)
            t.start()
            s.tunnel.backends.give("127.0.0.1", backend.port, socket.create_connection(closer.getsockname()))
        assert json.loads(_ask(s, sid, inline)["body"]) == {"n": sid}
        t.join(10)
    assert len(got) == 2 and all(g.startswith(b"POST /echo HTTP/1.1") for g in got)
    assert len(backend.received) == 2  # each sent once more, whole, on a new connection
    assert [json.loads(body) for _, body in backend.received] == [{"n": 1}, {"n": 2}]
    s.close()
    s.thread.join(30)
    assert [r["outcome"] for r in rows(svc)] == ["ok", "ok"]
    closer.close()


def _cpus_of_a_session(home: Path, **env: str) -> set[int]:
    """The CPUs a `tunnel` session's process (the real forced command) may run on."""
    proc = subprocess.Popen(
        interface_argv(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**environment(home, b"tunnel"), **env},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.read(tf.HEADER + len(tf.GREETING)) == tf.encode(tf.HELLO, 0, tf.GREETING)
        return os.sched_getaffinity(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to choose")
def test_a_session_keeps_to_one_cpu_unless_told_otherwise(svc: Path, home: Path) -> None:
    mine = os.sched_getaffinity(0)
    one = _cpus_of_a_session(home)
    assert len(one) == 1 and one <= mine
    assert _cpus_of_a_session(home, SAIA_TUNNEL_CPUS="all") == mine
