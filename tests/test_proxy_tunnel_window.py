"""Flow control on the proxy's side of the tunnel: a client that stops reading holds
at most a window of its answer in the proxy (the login node waits, and its
backend with it), then gets the whole answer once it reads again; a login node
whose tunnel has no flow control (an earlier version) is still used, without it."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from saia_ctl.proxy import tunnel as ptunnel
from tests.support.backend import FakeBackend
from tests.support.proxy_fakes import Fakes, write_script
from tests.support.tunnel_proxy import client, proxy
from tests.support.wire import rows

pytestmark = pytest.mark.timeout(180)

WORDS = 1_200_000  # "word0 word1 ...": ~10 MB of answer, more than the sockets hold (4 MB each)


def _ask_big(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"model": "svc", "messages": [{"role": "user", "content": "x"}], "max_tokens": WORDS})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: the TCP window
    sock.connect((host, int(port)))
    sock.sendall(
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Consumer-Custom-ID: alice@uni.de\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            f"{body}"
        ).encode()
    )
    return sock


def test_a_client_that_stops_reading_holds_at_most_a_window(
    fakes: Fakes,
    home: Path,
    real_login: FakeBackend,
) -> None:
    with proxy(fakes, tunnel_sessions=1) as (p, base):
        sock = _ask_big(base)
        received = bytearray(sock.recv(100))  # the answer began; then the client reads nothing for a while
        assert p.tunnels is not None
        deadline = time.monotonic() + 3
        most = 0
        while time.monotonic() < deadline:
            for conn in p.tunnels.conns:
                assert conn.window == ptunnel.WINDOW  # the login node took the offer
                for stream in list(conn.streams.values()):
                    most = max(most, stream.buffered)
            time.sleep(0.01)
        assert 0 < most <= ptunnel.WINDOW
        while chunk := sock.recv(1 << 20):
            received += chunk
        sock.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(
        b'"completion_tokens": %d, "total_tokens": %d}}\r\n0\r\n\r\n' % (WORDS, WORDS + 1)
    )
    assert len(received) > WORDS * 7  # the whole answer, in the end
    (row,) = rows(home / "saia.db")
    assert row["outcome"] == "ok" and row["output_tokens"] == WORDS


# An earlier login node: knows `tunnel`, answers a request, but ends the session at the
# first frame kind it does not know (as `tunnel_frames.Decoder` did before flow control).
OLD_LOGIN = r"""
import os, sys
sys.path.insert(0, %(repo)r)
from saia_ctl.request_path import tunnel_frames as tf
KINDS = frozenset({tf.OPEN, tf.BODY, tf.END, tf.CANCEL, tf.PING})
os.write(1, tf.encode(tf.HELLO, 0, tf.GREETING))
dec = tf.Decoder(KINDS)
while data := os.read(0, 65536):
    try:
        frames = dec.feed(data)
    except tf.FrameError as e:
        os.write(1, tf.encode(tf.ERROR, 0, str(e).encode()))
        sys.exit(1)
    for kind, sid, payload in frames:
        if kind == tf.END:
            body = b'{"id": "x", "object": "chat.completion", "choices": [], "usage": null}'
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %%d\r\n\r\n" %% len(body)
            os.write(1, tf.encode(tf.DATA, sid, head + body) + tf.encode(tf.DONE, sid, b"ok"))
"""


def test_a_login_node_without_flow_control_is_used_without_it(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced = tmp_path / "old-login"
    write_script(forced, OLD_LOGIN % {"repo": str(Path(__file__).resolve().parents[1])})
    monkeypatch.setenv("FAKE_SSH_FORCED", str(forced))
    with proxy(fakes, tunnel_sessions=1) as (p, base):
        for _ in range(3):
            done = client(base).chat.completions.create(
                model="svc", messages=[{"role": "user", "content": "x"}]
            )
            assert done.id == "x"
        assert p.tunnels is not None
        assert p.tunnels.windows is False
        assert [c.window for c in p.tunnels.conns] == [None]
        assert p.tunnels.opened == 1  # the session that refused the offer, then one for every request
    tunnels = [argv[-1] for argv in fakes.argvs() if argv[-1] == "tunnel"]
    assert len(tunnels) == 2


# A login node that takes the offer but then sends an answer past the stream's window,
# and notes the frames it receives (to see the proxy's cancel).
PUSHY_LOGIN = r"""
import json, os, sys
sys.path.insert(0, %(repo)r)
from saia_ctl.request_path import tunnel_frames as tf
os.write(1, tf.encode(tf.HELLO, 0, tf.GREETING))
dec = tf.Decoder(tf.TO_LOGIN)
with open(%(notes)r, "a") as notes:
    while data := os.read(0, 1 << 20):
        for kind, sid, payload in dec.feed(data):
            notes.write(json.dumps([chr(kind), sid]) + "\n")
            notes.flush()
            if kind == tf.WINDOW and sid == 0:
                os.write(1, tf.encode(tf.WINDOW, 0, payload))
            elif kind == tf.END:
                size = 3 * %(window)d
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %%d\r\n\r\n" %% size
                os.write(1, tf.encode(tf.DATA, sid, head))
                for _ in range(3):
                    os.write(1, tf.encode(tf.DATA, sid, b"y" * %(window)d))
                os.write(1, tf.encode(tf.DONE, sid, b"ok"))
"""


def test_a_login_node_that_sends_past_the_window_has_its_stream_cancelled(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced, notes = tmp_path / "pushy-login", tmp_path / "notes"
    repo = str(Path(__file__).resolve().parents[1])
    write_script(forced, PUSHY_LOGIN % {"repo": repo, "notes": str(notes), "window": ptunnel.WINDOW})
    monkeypatch.setenv("FAKE_SSH_FORCED", str(forced))
    with proxy(fakes, tunnel_sessions=1) as (p, base):
        sock = _ask_big(base)
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
        sock.close()
        assert p.tunnels is not None and p.tunnels.conns[0].window == ptunnel.WINDOW
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(received) < 3 * ptunnel.WINDOW  # cut at the window, not the whole answer
    assert b"0\r\n\r\n" not in received[-5:]  # and not ended as if it were complete
    noted = [tuple(json.loads(line)) for line in notes.read_text().splitlines()]
    assert ("C", 1) in noted  # the proxy cancelled the stream
