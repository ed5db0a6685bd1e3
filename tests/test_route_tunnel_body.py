"""Request bodies in the tunnel on the login node's side (wire protocol section 8):
a backend that does not read its request's body stalls only its own stream. The
session's one reader never waits for a handler; what a handler's stdin does not
take is kept for it (bounded per stream and per session), and a stream stuck that
way still ends, recorded, when it is cancelled or when the session ends."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.request_path import tunnel
from saia_ctl.request_path import tunnel_frames as tf
from saia_ctl.request_path.forward import ClientGone, send_watching
from saia_ctl.settings import Settings
from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.tunnel import Session, open_fds
from tests.support.wire import add_ready_job, command, parse_http, rows

JSON = {"content-type": "application/json"}
# Far more than the handler's stdin pipe (64 KiB) and the loopback socket's buffers
# (a few MiB) can hold, and less than a stream may keep (tunnel.BODY_BUFFER).
BIG = 24
PROMPT = 20.0  # seconds: "answered promptly"; the backend timeout is 600


@pytest.fixture
def db(home: Path, import_services: Any) -> Path:
    import_services(
        *(
            service_config(sid, minimum_number_instances=0, maximum_number_instances=0, request_hold_time=0)
            for sid in ("svc", "stuck")
        )
    )
    return home / "saia.db"


@pytest.fixture
def backends(db: Path, home: Path) -> Iterator[tuple[FakeBackend, FakeBackend]]:
    """A backend that answers (service svc) and one that never reads a byte (service stuck)."""
    with FakeBackend() as ok, FakeBackend("hang") as stuck:
        add_ready_job(home, "svc", ok.port)
        add_ready_job(home, "stuck", stuck.port)
        yield ok, stuck


def _send_in_thread(s: Session, frames: list[tuple[int, int, bytes]]) -> threading.Thread:
    """The proxy's writes: a session whose reader stalls must stall this thread, not the test."""

    def run() -> None:
        for frame in frames:
            s.send(*frame)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stuck_body(sid: int, end: bool) -> list[tuple[int, int, bytes]]:
    frames = [(tf.OPEN, sid, command(f"stuck-{sid}", "u", "stuck", "/echo", headers=JSON, body=None))]
    frames += [(tf.BODY, sid, bytes([65 + i]) * tf.MAX_PAYLOAD) for i in range(BIG)]
    return [*frames, (tf.END, sid, b"")] if end else frames


def _answered(s: Session, sid: int) -> None:
    assert s.done[sid] == b"ok"
    ans = parse_http(bytes(s.answers[sid]))
    assert ans.status == 200 and ans.json()["body"] == f'{{"n": {sid}}}'


def _ended_cleanly(s: Session, db: Path) -> list[dict[str, Any]]:
    """After ``s.close()``: the session's last frames read, it exits, nothing is left behind;
    the rows of the stuck streams."""
    s.collect(set(s.tunnel.streams), PROMPT)
    while select.select([s.out_r], [], [], PROMPT)[0] and (data := os.read(s.out_r, 1 << 20)):
        for kind, sid, payload in s.dec.feed(data):
            if kind == tf.DONE:
                assert sid not in s.done and sid not in s.errors  # a stream ends once
                s.done[sid] = payload
    s.thread.join(PROMPT)
    assert not s.thread.is_alive() and s.rc == 0
    assert s.tunnel.buffered == 0 and s.tunnel.streams == {}
    assert not [t for t in s.tunnel.workers._threads if t.is_alive()]  # no handler thread left
    os.close(s.out_r)
    found = [r for r in rows(db) if r["inference_id"].startswith("stuck-")]
    assert all(r["ended_at"] is not None for r in rows(db))  # no row left open
    return found


@pytest.mark.parametrize("end", [True, False], ids=["body-ended", "body-still-coming"])
def test_a_backend_that_never_reads_its_body_stalls_only_its_own_stream(
    db: Path, settings: Settings, backends: tuple[FakeBackend, FakeBackend], end: bool
) -> None:
    before = open_fds()
    s = Session(settings, db.parent)
    other = (tf.OPEN, 2, command("other-2", "u", "svc", "/echo", headers=JSON, body=b'{"n": 2}'))
    writer = _send_in_thread(s, [*_stuck_body(1, end), other])
    s.collect({2}, PROMPT)  # the second stream is answered while the first is stuck
    _answered(s, 2)
    writer.join(PROMPT)
    assert not writer.is_alive()  # the session took every frame: its reader never waited
    assert 1 not in s.done and 1 not in s.errors  # the stuck stream is still running
    assert s.tunnel.buffered > 0  # what its backend did not take is kept, not lost

    s.send(tf.OPEN, 3, command("other-3", "u", "svc", "/echo", headers=JSON, body=None))  # a body
    s.send(tf.BODY, 3, b'{"n": 3}')  # through the same reader, after the stuck one's
    s.send(tf.END, 3)
    s.collect({3}, PROMPT)
    _answered(s, 3)

    s.send(tf.CANCEL, 1)  # its client goes away: the stream ends, though its backend is stuck
    s.collect({1}, PROMPT)
    assert s.done[1] == b"aborted"
    s.close()
    (row,) = _ended_cleanly(s, db)
    assert row["outcome"] == "aborted"
    backends[1].close()  # the stuck backend's end of its connection
    deadline = time.monotonic() + PROMPT
    while open_fds() - before and time.monotonic() < deadline:  # the backends' threads close theirs
        time.sleep(0.05)
    assert open_fds() - before == set()  # no descriptor left behind


def test_the_session_ending_ends_a_stream_stuck_on_its_body(
    db: Path, settings: Settings, backends: tuple[FakeBackend, FakeBackend]
) -> None:
    s = Session(settings, db.parent)
    writer = _send_in_thread(s, _stuck_body(1, end=False))
    writer.join(PROMPT)
    assert not writer.is_alive()
    s.close()  # the SSH channel ends: the stream is aborted, its backend's send given up
    s.collect({1}, PROMPT)
    assert s.done[1] == b"aborted"
    (row,) = _ended_cleanly(s, db)
    assert row["outcome"] == "aborted"
    assert row["error"] == "the client went away (stdout closed)"


@pytest.mark.parametrize("limit", ["BODY_BUFFER", "SESSION_BODY_BUFFER"])
def test_a_body_kept_over_the_limit_ends_its_stream_only(
    db: Path,
    settings: Settings,
    backends: tuple[FakeBackend, FakeBackend],
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
) -> None:
    monkeypatch.setattr(tunnel, limit, 2 * tf.MAX_PAYLOAD)
    s = Session(settings, db.parent)
    other = (tf.OPEN, 2, command("other-2", "u", "svc", "/echo", headers=JSON, body=b'{"n": 2}'))
    writer = _send_in_thread(s, [*_stuck_body(1, end=True), other])
    s.collect({1, 2}, PROMPT)
    assert s.errors[1] == b"request body not taken by the backend: too much of it waiting"
    _answered(s, 2)
    writer.join(PROMPT)
    assert not writer.is_alive()
    s.close()
    (row,) = _ended_cleanly(s, db)
    assert row["outcome"] == "aborted"
    assert 1 not in s.done  # X ended it: no F follows


def test_a_send_to_a_backend_that_does_not_read_ends_when_the_client_goes() -> None:
    backend, backend_peer = socket.socketpair()  # the peer never reads
    client, client_peer = socket.socketpair()
    backend.settimeout(30)
    done: list[BaseException] = []

    def send() -> None:
        try:
            send_watching(backend, b"x" * (8 << 20), client.fileno(), 30)
        except BaseException as e:
            done.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive()  # waiting for the backend to take more
    client_peer.close()  # the client goes away
    t.join(PROMPT)
    assert not t.is_alive() and [type(e) for e in done] == [ClientGone]
    for s in (backend, backend_peer, client):
        s.close()


def test_a_send_to_a_backend_that_does_not_read_times_out() -> None:
    backend, backend_peer = socket.socketpair()
    client, client_peer = socket.socketpair()
    backend.settimeout(0.2)
    with pytest.raises(TimeoutError):
        send_watching(backend, b"x" * (8 << 20), client.fileno(), 0.2)
    for s in (backend, backend_peer, client, client_peer):
        s.close()
