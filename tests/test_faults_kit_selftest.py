"""The support kit's own checks: the strict HTTP parser refuses incomplete
answers, the fake backend answers in each mode, the cluster fixture's error
carries the daemon's log."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from tests.support.backend import BackendProcess, FakeBackend
from tests.support.cluster import start_cluster
from tests.support.wire import parse_as_proxy, parse_http


def test_parse_http_rejects_incomplete_answers() -> None:
    good = b'HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\n\r\n{"error":"x"}'
    assert parse_http(good).status == 400
    for bad in (
        b"",
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\n",  # no blank line
        b'HTTP/1.1 400 Bad Request\r\nContent-Length: 20\r\n\r\n{"error":"x"}',  # short body
        b"HTTP/1.0 400 Bad\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 4000 Bad\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 400 Bad\r\nno colon\r\nContent-Length: 0\r\n\r\n",
        b"Traceback (most recent call last):\n",
    ):
        with pytest.raises(AssertionError):
            parse_http(bad)


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_backend_answers_and_records() -> None:
    with FakeBackend("ok") as backend:
        data = exchange(backend.port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        assert parse_http(data).json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}
        assert backend.received[0][1] == b"abc" and backend.connections == 1


def test_backend_fault_modes() -> None:
    with FakeBackend("garbage") as b:
        assert not exchange(b.port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/")
    with FakeBackend("close") as b:
        assert exchange(b.port, b"") == b""
    with FakeBackend("stream", delay=0, events=3) as b:
        data = exchange(b.port, b"GET / HTTP/1.1\r\n\r\n")
        assert data.count(b"data: {") == 4 and data.endswith(b"0\r\n\r\n")
    with FakeBackend("hang") as b, socket.create_connection(("127.0.0.1", b.port), timeout=0.5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(TimeoutError):
            s.recv(1)
    with pytest.raises(ValueError, match="unknown mode"):
        FakeBackend("teapot")


def test_backend_routes_need_the_secret_and_keep_the_connection() -> None:
    with FakeBackend(secret="k") as b, socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
        s.sendall(
            b"GET /health HTTP/1.1\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        )
        s.sendall(b"GET /echo HTTP/1.1\r\nAuthorization: Bearer k\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"401", b"200"]
    echo = json.loads(answers[2].partition(b"\r\n\r\n")[2])
    assert echo["method"] == "GET" and ["Authorization", "Bearer k"] in echo["headers"]
    assert b.connections == 1


def test_backend_process_streams_a_chat() -> None:
    with BackendProcess(secret="k") as b:
        body = b'{"stream": true, "max_tokens": 3, "stream_options": {"include_usage": true}}'
        req = b"POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer k\r\nConnection: close\r\n"
        data = exchange(b.port, req + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    status, headers, payload = parse_as_proxy(data)
    assert status == 200 and ("Transfer-Encoding", "chunked") in headers
    assert b'"completion_tokens": 3' in payload and b"data: [DONE]" in payload


def failing_dev_cluster(tmp_path: Path, body: str) -> Path:
    """A stand-in for ``dev-cluster.sh``: ``up`` runs ``body`` (DIR is $2), ``down`` removes DIR."""
    script = tmp_path / "dev-cluster.sh"
    script.write_text(f'#!/bin/bash\n[[ $1 == up ]] || {{ rm -rf "$2"; exit 0; }}\n{body}\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_failed_cluster_start_carries_the_daemon_log(tmp_path: Path) -> None:
    """The error carries the log the script names, read before ``down`` deletes the folder."""
    script = failing_dev_cluster(
        tmp_path,
        'mkdir -p "$2/ssh"\n'
        'echo "sshd: error: Bind to port 2222 on 127.0.0.1 failed: Address already in use." > "$2/ssh/sshd.log"\n'
        'echo "dev-cluster: timeout after 15s waiting for: ssh to the forced command (see $2/ssh/sshd.log)" >&2',
    )
    folder = tmp_path / "cluster"
    with pytest.raises(RuntimeError) as err:
        start_cluster(folder, script=script)
    message = str(err.value)
    assert not folder.exists()
    assert "waiting for: ssh to the forced command" in message
    assert "ssh/sshd.log" in message and "Address already in use" in message


def test_without_a_named_log_every_daemon_log_is_shown(tmp_path: Path) -> None:
    script = failing_dev_cluster(
        tmp_path,
        'mkdir -p "$2/log" "$2/munge"\n'
        'echo "fatal: Unable to bind listen port (6817): Address already in use" > "$2/log/slurmctld.log"\n'
        'echo "munged started" > "$2/munge/munged.log"\n'
        'echo "dev-cluster: slurmctld did not start" >&2',
    )
    with pytest.raises(RuntimeError) as err:
        start_cluster(tmp_path / "cluster", script=script)
    message = str(err.value)
    assert "log/slurmctld.log" in message and "Unable to bind listen port (6817)" in message
    assert "munge/munged.log" in message and "munged started" in message
