"""How requests go over the tunnel sessions: to the oldest live one until it
carries ``FILL`` streams (one login-node process groups the rows of all of them,
and two sessions' processes do not contend for the database's write lock; the
others stand by for the overflow), each in one write to ssh."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest

from saia_ctl.proxy import tunnel as ptunnel
from tests.support.backend import FakeBackend
from tests.support.proxy_fakes import Fakes, write_script
from tests.support.tunnel_proxy import client, proxy
from tests.support.wire import rows

pytestmark = pytest.mark.timeout(180)


def _ask(base: str, n: int, threads: int) -> None:
    c = client(base)

    def one(i: int) -> None:
        c.chat.completions.create(model="svc", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=2)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))


def test_the_oldest_session_takes_the_requests_until_it_is_crowded(
    fakes: Fakes,
    home: Path,
    real_login: FakeBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with proxy(fakes, tunnel_sessions=2) as (p, base):
        _ask(base, 24, 8)
        assert p.tunnels is not None
        first, second = p.tunnels.conns
        assert first.opened_streams == 24 and second.opened_streams == 0  # both open, one used
        monkeypatch.setattr(ptunnel, "FILL", 2)  # crowded at 2: the rest overflow to the second
        _ask(base, 24, 8)
        assert second.opened_streams > 0
    assert len(rows(home / "saia.db")) == 48


# A login node that answers every request at once and notes, for each read of its
# standard input, which frames it held: (kind, stream) pairs, one line per read.
NOTING_LOGIN = r"""
import json, os, sys
sys.path.insert(0, %(repo)r)
from saia_ctl.request_path import tunnel_frames as tf
os.write(1, tf.encode(tf.HELLO, 0, tf.GREETING))
dec = tf.Decoder(tf.TO_LOGIN)
with open(%(notes)r, "a") as notes:
    while data := os.read(0, 1 << 20):
        frames = dec.feed(data)
        notes.write(json.dumps([[chr(kind), sid] for kind, sid, _ in frames]) + "\n")
        notes.flush()
        for kind, sid, payload in frames:
            if kind == tf.WINDOW and sid == 0:
                os.write(1, tf.encode(tf.WINDOW, 0, payload))
            elif kind == tf.END:
                body = b'{"id": "x", "object": "chat.completion", "choices": [], "usage": null}'
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %%d\r\n\r\n" %% len(body)
                os.write(1, tf.encode(tf.DATA, sid, head + body) + tf.encode(tf.DONE, sid, b"ok"))
"""


def test_a_request_goes_to_the_login_node_in_one_write(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its OPEN, body and END: one pipe write, one SSH packet, one wake-up on the login node
    (the body sent by a task of its own took a second of each)."""
    forced, notes = tmp_path / "noting-login", tmp_path / "notes"
    write_script(
        forced, NOTING_LOGIN % {"repo": str(Path(__file__).resolve().parents[1]), "notes": str(notes)}
    )
    monkeypatch.setenv("FAKE_SSH_FORCED", str(forced))
    with proxy(fakes, tunnel_sessions=1) as (_, base):
        c = client(base)
        for _ in range(5):  # one after the other: nothing else shares their writes
            assert (
                c.chat.completions.create(model="svc", messages=[{"role": "user", "content": "x"}]).id == "x"
            )
    reads = [json.loads(line) for line in notes.read_text().splitlines()]
    opened = [r for r in reads if any(kind == "O" for kind, _ in r)]
    assert len(opened) == 5
    for r in opened:
        (sid,) = {s for kind, s in r if kind == "O"}
        assert [kind for kind, s in r if s == sid] == ["O", "B", "E"]
