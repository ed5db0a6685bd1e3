"""The ``tunnel`` control word on the login node's side (wire protocol section 7):
the frame codec, the session run in-process against a fake backend (1,000
concurrent streams, grouped rows, a session that dies), the word through
``cloud_interface.sh``, and generated frame sequences (malformed, oversized,
re-used ids, unknown streams, random bytes) that must never crash the
session, leak a stream, or reach a backend unvalidated."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saia_ctl.request_path import tunnel_frames as tf
from saia_ctl.request_path import wire
from saia_ctl.request_path.log import Log
from saia_ctl.request_path.tunnel import Tunnel
from saia_ctl.settings import Settings
from tests.support.backend import FakeBackend
from tests.support.tunnel import Session, open_fds
from tests.support.wire import add_ready_job, command, environment, interface_argv, parse_http, rows

JSON = {"content-type": "application/json"}


# --- the codec -------------------------------------------------------------------


def test_frames_round_trip_in_any_split() -> None:
    frames = [(tf.OPEN, 1, b"a\nb\nc\n/d"), (tf.BODY, 1, b"x" * 1000), (tf.END, 1, b""), (tf.CANCEL, 7, b"")]
    data = b"".join(tf.encode(*f) for f in frames)
    for step in (1, 2, 9, 10, 100, len(data)):
        dec = tf.Decoder(tf.TO_LOGIN)
        got = []
        for i in range(0, len(data), step):
            got += dec.feed(data[i : i + step])
        assert got == frames
        assert dec.pending == 0


def test_frames_refuse_unknown_kind_and_oversized_length() -> None:
    with pytest.raises(tf.FrameError, match="unknown frame kind"):
        tf.Decoder(tf.TO_LOGIN).feed(tf.encode(tf.DATA, 1, b"x"))  # a proxy-bound kind
    header = bytes((tf.BODY,)) + (1).to_bytes(4, "big") + (tf.MAX_PAYLOAD + 1).to_bytes(4, "big")
    with pytest.raises(tf.FrameError, match="over the limit"):
        tf.Decoder(tf.TO_LOGIN).feed(header)
    with pytest.raises(ValueError):
        tf.encode(tf.BODY, 1, b"x" * (tf.MAX_PAYLOAD + 1))
    assert [len(p) for p in tf.pieces(tf.DATA, 1, b"y" * (tf.MAX_PAYLOAD + 5))] == [
        tf.HEADER + tf.MAX_PAYLOAD,
        tf.HEADER + 5,
    ]


# --- a session in-process ------------------------------------------------------------


def test_hello_then_a_request_answered_as_curl_prints_it(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    assert s.hello == (tf.HELLO, 0, tf.GREETING)
    s.send(tf.OPEN, 1, command("tun-1", "u@x", "svc", "/echo", headers=JSON, body=None))
    s.send(tf.BODY, 1, b'{"hello": ')
    s.send(tf.BODY, 1, b"1}")
    s.send(tf.END, 1)
    s.collect({1})
    ans = parse_http(bytes(s.answers[1]))
    assert ans.status == 200
    assert ans.json()["body"] == '{"hello": 1}'
    assert s.done[1] == b"ok"
    s.send(tf.PING, 0)
    assert s.next_frame() == (tf.PONG, 0, b"")
    s.close()
    s.thread.join(30)
    assert not s.thread.is_alive() and s.rc == 0
    (row,) = rows(svc)
    assert (row["inference_id"], row["outcome"], row["status"], row["bytes_in"]) == ("tun-1", "ok", 200, 12)
    assert row["handler_pid"] == os.getpid()


def test_a_bad_request_gets_its_400_and_a_control_word_is_refused(svc: Path, settings: Settings) -> None:
    s = Session(settings, None)
    s.send(tf.OPEN, 1, b"bad id!\nu\nsvc\n/x")
    s.send(tf.OPEN, 2, b"status")
    s.send(tf.OPEN, 3, command("tun-404", "u", "nope", "/v1/chat/completions", headers=JSON, body=b"{}"))
    s.collect({1, 2, 3})
    assert [parse_http(bytes(s.answers[i])).status for i in (1, 2, 3)] == [400, 400, 404]
    assert s.done == {1: b"error", 2: b"error", 3: b"error"}
    s.close()
    s.thread.join(30)
    assert rows(svc) == []


def test_thousand_concurrent_streams_arrive_intact_with_grouped_rows(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    # 1,000 connections at once to a backend that accepts 128 at a time: on a loaded
    # machine some SYNs are retried after 1 and 3 s; the default 5 s would make them 504s.
    conf = home / "saia.conf"
    conf.write_text(conf.read_text() + "SAIA_CONNECT_TIMEOUT=60\n")
    s = Session(Settings(environ={"SAIA_HOME": str(home)}), home)
    n = 1000
    for i in range(1, n + 1):  # every stream opened before any body: all in flight together
        s.send(tf.OPEN, i, command(f"many-{i}", "u", "svc", "/echo", headers=JSON, body=None))
    for i in range(1, n + 1):
        s.send(tf.BODY, i, json.dumps({"stream": i, "pad": "z" * (i % 97)}).encode())
        s.send(tf.END, i)
    s.collect(set(range(1, n + 1)), timeout=300)
    assert not s.errors
    for i in range(1, n + 1):
        ans = parse_http(bytes(s.answers[i]))
        assert ans.status == 200, i
        assert json.loads(ans.json()["body"]) == {"stream": i, "pad": "z" * (i % 97)}
    s.close()
    s.thread.join(60)
    recorded = rows(svc)
    assert len(recorded) == n
    assert {r["outcome"] for r in recorded} == {"ok"}
    assert all(r["ended_at"] is not None for r in recorded)
    assert s.tunnel.batcher is not None
    assert s.tunnel.batcher.transactions < 2 * n  # starts and ends of concurrent requests shared some


def test_a_dying_session_records_its_streams_aborted(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    for i in (1, 2, 3):
        s.send(tf.OPEN, i, command(f"hang-{i}", "u", "svc", "/hang?seconds=60", method="GET", body=b""))
    deadline = time.monotonic() + 30
    while len(backend.received) < 3:  # all three reached the backend
        assert time.monotonic() < deadline
        time.sleep(0.05)
    s.close()  # the SSH channel is gone
    s.thread.join(30)
    assert not s.thread.is_alive()
    recorded = rows(svc)
    assert [r["outcome"] for r in recorded] == ["aborted"] * 3
    assert all(r["ended_at"] is not None for r in recorded)
    assert threading.active_count() < 10  # no stream thread left behind


def test_a_cancel_aborts_one_stream_only(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    s.send(tf.OPEN, 1, command("c-1", "u", "svc", "/hang?seconds=60", method="GET", body=b""))
    s.send(tf.OPEN, 2, command("c-2", "u", "svc", "/echo", headers=JSON, body=b"{}"))
    s.collect({2})
    s.send(tf.CANCEL, 1)
    s.collect({1})
    assert s.done == {1: b"aborted", 2: b"ok"}
    s.close()
    s.thread.join(30)
    outcome = {r["inference_id"]: r["outcome"] for r in rows(svc)}
    assert outcome == {"c-1": "aborted", "c-2": "ok"}


def test_a_start_row_that_cannot_be_written_is_a_503_and_nothing_is_served(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from saia_ctl.request_path import records

    add_ready_job(home, "svc", backend.port)

    def full(*args: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(records, "start_row", full)
    s = Session(settings, home)
    s.send(tf.OPEN, 1, command("full-1", "u", "svc", "/echo", headers=JSON, body=b"{}"))
    s.collect({1})
    assert parse_http(bytes(s.answers[1])).status == 503
    assert s.done[1] == b"error"
    s.close()
    s.thread.join(30)
    assert backend.received == [] and rows(svc) == []


def test_the_word_through_cloud_interface(svc: Path, home: Path, backend: FakeBackend) -> None:
    add_ready_job(home, "svc", backend.port)
    frames = tf.encode(tf.OPEN, 5, command("sh-1", "u", "svc", "/echo", headers=JSON, body=b'{"a": 1}'))
    env = environment(home, b"tunnel")
    proc = subprocess.Popen(interface_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(frames)
    proc.stdin.flush()
    dec = tf.Decoder(tf.TO_PROXY)
    got: list[tuple[int, int, bytes]] = []
    while not got or got[-1][0] != tf.DONE:  # the session stays open until the answer ended
        data = proc.stdout.read1(65536)
        assert data, got
        got += dec.feed(data)
    proc.stdin.close()  # the session ends: the process exits
    assert proc.wait(30) == 0
    assert got[0] == (tf.HELLO, 0, tf.GREETING)
    answer = b"".join(p for k, sid, p in got if k == tf.DATA and sid == 5)
    assert parse_http(answer).json()["body"] == '{"a": 1}'
    assert got[-1] == (tf.DONE, 5, b"ok")
    assert [r["outcome"] for r in rows(svc)] == ["ok"]


# --- generated frame sequences ------------------------------------------------------


class FakeServe:
    """Stands in for the handler: records what reached it, reads its body, answers."""

    def __init__(self) -> None:
        self.reached: list[wire.ParsedRequest] = []
        self.lock = threading.Lock()

    def __call__(self, req: wire.ParsedRequest, stdin: int, stdout: int) -> int:
        with self.lock:
            self.reached.append(req)
        while os.read(stdin, 65536):
            pass
        try:
            os.write(stdout, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return 1
        return 0


VALID = command("fz", "u", "svc", "/v1/x", headers=JSON, body=None)
sids = st.integers(0, 6) | st.integers(0, tf.MAX_STREAM)
payloads = st.sampled_from([VALID, b"", b"keep-alive", b"tunnel", b"a\nb\n", b"x\n" * 5]) | st.binary(
    max_size=64
)
good_frames = st.tuples(st.sampled_from(sorted(tf.TO_LOGIN)), sids, payloads).map(lambda f: tf.encode(*f))
bad_frames = st.one_of(
    st.binary(max_size=40),  # random bytes
    st.tuples(st.integers(0, 255), sids, st.binary(max_size=16)).map(  # any kind, even unknown
        lambda f: bytes((f[0],)) + f[1].to_bytes(4, "big") + len(f[2]).to_bytes(4, "big") + f[2]
    ),
    st.tuples(sids, st.integers(tf.MAX_PAYLOAD + 1, 2**32 - 1)).map(  # an oversized length
        lambda f: bytes((tf.BODY,)) + f[0].to_bytes(4, "big") + f[1].to_bytes(4, "big")
    ),
)
sequences = st.lists(st.one_of(good_frames, good_frames, bad_frames), max_size=12)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(seq=sequences)
def test_generated_frame_sequences_never_crash_or_leak(seq: list[bytes]) -> None:
    serve = FakeServe()
    before = open_fds()
    stdin = os.memfd_create("in")
    stdout = os.memfd_create("out")
    os.write(stdin, b"".join(seq))
    os.lseek(stdin, 0, os.SEEK_SET)
    tunnel = Tunnel(None, Log(None), stdin, stdout, serve)
    rc = tunnel.run()
    assert rc in (0, 1)
    assert tunnel.streams == {}  # every stream ended
    os.lseek(stdout, 0, os.SEEK_SET)
    out = b""
    while chunk := os.read(stdout, 1 << 20):
        out += chunk
    os.close(stdin)
    os.close(stdout)
    frames = tf.Decoder(tf.TO_PROXY).feed(out)  # what came back is frames, and nothing else
    assert frames[0] == (tf.HELLO, 0, tf.GREETING)
    done = [sid for kind, sid, _ in frames if kind == tf.DONE]
    assert len(done) == len(set(done))  # a stream ends once
    for req in serve.reached:  # only validated requests reach the handler
        assert isinstance(req, wire.ParsedRequest)
        assert req.inference_id == "fz" and req.service_id == "svc"
    assert len(serve.reached) <= len(done)
    assert open_fds() - before == set()  # no descriptor left behind
