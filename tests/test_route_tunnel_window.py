"""Flow control of the tunnel's answers on the login node's side (wire protocol
section 8, ``W`` frames): once the proxy offered it, a stream sends no more of
its answer than the proxy granted, so a slow client holds a bounded amount in
the proxy and the handler (and its backend) waits; a proxy that never offered
it gets every answer whole, as before."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from saia_ctl.request_path import tunnel_frames as tf
from saia_ctl.settings import Settings
from tests.support.backend import FakeBackend
from tests.support.tunnel import Session
from tests.support.wire import add_ready_job, command, parse_http, rows

BIG = 3_000_000  # bytes of answer: far more than the window and the pipes' buffers
WINDOW = 65536


def _data_until_quiet(s: Session, sid: int, quiet: float = 1.0) -> int:
    """Read frames until none comes for ``quiet`` seconds; bytes of DATA seen for ``sid``."""
    got = 0
    pending = list(getattr(s, "_pushback", []))
    s._pushback = []
    while True:
        for kind, fsid, payload in pending:
            assert kind != tf.DONE, "the stream ended while its window was shut"
            if kind == tf.DATA and fsid == sid:
                got += len(payload)
        if not select.select([s.out_r], [], [], quiet)[0]:
            return got
        data = os.read(s.out_r, 1 << 20)
        assert data, "the session ended"
        pending = s.dec.feed(data)


def test_an_answer_waits_for_its_window(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    s.send(tf.WINDOW, 0, WINDOW.to_bytes(4, "big"))
    assert s.next_frame() == (tf.WINDOW, 0, WINDOW.to_bytes(4, "big"))  # the offer is taken
    s.send(tf.OPEN, 1, command("win-1", "u", "svc", f"/big?n={BIG}", method="GET"))
    sent = _data_until_quiet(s, 1)
    assert 0 < sent <= WINDOW  # the backend had more to send; the stream holds it back
    granted = WINDOW
    for _ in range(3):  # each grant lets exactly that much more through
        s.send(tf.WINDOW, 1, WINDOW.to_bytes(4, "big"))
        granted += WINDOW
        sent += _data_until_quiet(s, 1)
        assert granted - WINDOW < sent <= granted
    s.send(tf.WINDOW, 1, (BIG * 2).to_bytes(4, "big"))  # then the rest at once
    s.answers[1] = bytearray()
    s.collect({1})
    assert s.done[1] == b"ok"
    assert sent + len(s.answers[1]) > BIG
    s.close()
    s.thread.join(30)
    (row,) = rows(svc)
    assert (row["outcome"], row["output_tokens"]) == ("ok", 9)
    assert row["bytes_out"] > BIG - 100


def test_a_cancelled_stream_ends_even_with_its_window_shut(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    s.send(tf.WINDOW, 0, WINDOW.to_bytes(4, "big"))
    assert s.next_frame()[0] == tf.WINDOW
    s.send(tf.OPEN, 1, command("win-c", "u", "svc", f"/big?n={BIG}", method="GET"))
    assert _data_until_quiet(s, 1) <= WINDOW
    s.send(tf.CANCEL, 1)
    s.collect({1})
    assert s.done[1] == b"aborted"
    s.close()
    s.thread.join(30)
    assert not s.thread.is_alive() and s.rc == 0
    (row,) = rows(svc)
    assert row["outcome"] == "aborted"


def test_without_the_offer_an_answer_comes_whole(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    s.send(tf.OPEN, 1, command("win-old", "u", "svc", f"/big?n={BIG}", method="GET"))
    s.collect({1})
    assert s.done[1] == b"ok"
    ans = parse_http(bytes(s.answers[1]))
    assert len(ans.body) == int(ans.header("content-length") or 0) > BIG - 100
    s.close()
    s.thread.join(30)


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00\x00", b"\x01\x02\x03", b"\xff\xff\xff\xff\xff"])
def test_a_malformed_window_ends_its_stream_or_the_session(
    svc: Path, home: Path, settings: Settings, backend: FakeBackend, payload: bytes
) -> None:
    add_ready_job(home, "svc", backend.port)
    s = Session(settings, home)
    s.send(tf.WINDOW, 0, WINDOW.to_bytes(4, "big"))
    assert s.next_frame()[0] == tf.WINDOW
    s.send(tf.OPEN, 1, command("win-bad", "u", "svc", f"/big?n={BIG}", method="GET"))
    s.send(tf.WINDOW, 1, payload)
    s.collect({1})
    assert s.errors[1] == b"malformed window frame"
    s.send(tf.WINDOW, 0, payload)  # on stream 0: the session is broken
    s.collect({0})
    assert s.errors[0] == b"malformed window frame"
    s.thread.join(30)
    assert not s.thread.is_alive() and s.rc == 1
    assert [r["ended_at"] is not None for r in rows(svc)] == [True]
