"""The proxy's tunnel mode (``--tunnel-sessions``) with the fake ``ssh`` in front of
the real ``cloud_interface.sh``: many requests over two sessions, recycling,
a session that dies, and the fall-back to one session per request when the
login node does not know the word (the fake forced command does not)."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.backend import FakeBackend
from tests.support.proxy_fakes import Fakes
from tests.support.tunnel_proxy import client, proxy
from tests.support.wire import rows

pytestmark = pytest.mark.timeout(180)


def commands(fakes: Fakes) -> list[str]:
    """The command argument of every ssh call (``-O`` operations left out)."""
    calls = [json.loads(line) for line in fakes.log.read_text().splitlines()]
    return [argv[-1] for argv in calls if "-O" not in argv]


def test_many_requests_over_two_sessions(fakes: Fakes, home: Path, real_login: FakeBackend) -> None:
    n = 40
    with proxy(fakes) as (p, base):
        c = client(base)

        def ask(i: int) -> str:
            done = c.chat.completions.create(
                model="svc",
                messages=[{"role": "user", "content": f"n{i}"}],
                max_tokens=i % 7 + 1,
                extra_headers={"inference-id": f"tq-{i}"},
            )
            return str(done.choices[0].message.content)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(n)))
        assert p.tunnels is not None and p.tunnels.opened == 2
    assert [len(a.split()) for a in answers] == [i % 7 + 1 for i in range(n)]
    sent = commands(fakes)
    assert sent.count("tunnel") == 2
    assert not [c for c in sent if "\n" in c]  # no request took a session of its own
    recorded = rows(home / "saia.db")
    assert sorted(r["inference_id"] for r in recorded) == sorted(f"tq-{i}" for i in range(n))
    assert {r["outcome"] for r in recorded} == {"ok"}


def test_streaming_through_the_tunnel(fakes: Fakes, home: Path, real_login: FakeBackend) -> None:
    with proxy(fakes, tunnel_sessions=1) as (_, base):
        chunks = list(
            client(base).chat.completions.create(
                model="svc", messages=[{"role": "user", "content": "x"}], max_tokens=4, stream=True
            )
        )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(text.split()) == 4
    assert all(ch.usage is None for ch in chunks)  # the injected usage chunk is stripped
    (row,) = rows(home / "saia.db")
    assert row["outcome"] == "ok" and row["output_tokens"] is not None


def _tunnel_pids(home: Path) -> set[int]:
    """Processes serving a tunnel for ``home`` (their environment names it)."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"SSH_ORIGINAL_COMMAND=tunnel" in env and f"SAIA_HOME={home}".encode() in env:
            found.add(int(pid))
    return found


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_sessions_are_recycled_and_reopened(fakes: Fakes, home: Path, real_login: FakeBackend) -> None:
    msg = [{"role": "user", "content": "x"}]
    with proxy(fakes, tunnel_sessions=1, tunnel_max_age=1.0) as (p, base):
        c = client(base)
        c.chat.completions.create(model="svc", messages=msg)
        first = _tunnel_pids(home)
        assert len(first) == 1
        time.sleep(1.2)
        c.chat.completions.create(model="svc", messages=msg)  # the old session is past its age
        assert p.tunnels is not None and p.tunnels.opened == 2
        wait_until(lambda: not first & _tunnel_pids(home), 20, "the old session's process to exit")
        # a session that dies is replaced by the next request
        (second,) = _tunnel_pids(home)
        os.kill(second, signal.SIGHUP)  # hung up on: it closes its rows and exits
        wait_until(lambda: all(c.dead for c in p.tunnels.conns), 20, "the proxy to see the death")
        c.chat.completions.create(model="svc", messages=msg)
        assert p.tunnels.opened == 3
    wait_until(lambda: not _tunnel_pids(home), 20, "every tunnel process to exit with the proxy")
    assert [r["outcome"] for r in rows(home / "saia.db")] == ["ok"] * 3


def _slow_stream(base: str, timeout: float) -> None:
    """A streaming request whose tokens come 30 s apart; the client gives up after ``timeout``."""
    c = openai.OpenAI(
        base_url=base + "/v1",
        api_key="x",
        default_headers={"X-Consumer-Custom-ID": "bob"},
        max_retries=0,
        timeout=timeout,
    )
    for _ in c.chat.completions.create(
        model="svc",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        stream=True,
        extra_body={"token_delay": 30},
    ):
        pass


def test_a_client_that_goes_away_is_cancelled_and_recorded_aborted(
    fakes: Fakes, home: Path, real_login: FakeBackend
) -> None:
    with proxy(fakes, tunnel_sessions=1) as (p, base):
        with pytest.raises(openai.APITimeoutError):
            _slow_stream(base, 2)
        wait_until(lambda: [r["outcome"] for r in rows(home / "saia.db")] == ["aborted"], 20, "aborted")
        assert p.tunnels is not None and len(_tunnel_pids(home)) == 1  # the session lives on


def test_a_session_that_dies_records_its_requests_aborted_and_is_reopened(
    fakes: Fakes, home: Path, real_login: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException] = []

    def ask(base: str) -> None:
        try:
            _slow_stream(base, 60)
        except Exception as e:
            errors.append(e)

    def cut() -> list[str]:
        return [r.getMessage() for r in caplog.records if " -> 200 cut " in r.getMessage()]

    caplog.set_level(logging.INFO, logger="saia_ctl.proxy")
    with proxy(fakes, tunnel_sessions=1) as (p, base):
        worker = threading.Thread(target=ask, args=(base,), daemon=True)
        worker.start()
        wait_until(lambda: len(rows(home / "saia.db")) == 1, 20, "the request in flight")
        (pid,) = _tunnel_pids(home)
        os.kill(pid, signal.SIGHUP)  # the session is hung up on
        wait_until(lambda: not _tunnel_pids(home), 20, "the tunnel process to exit")
        (row,) = rows(home / "saia.db")
        assert row["outcome"] == "aborted" and row["ended_at"] is not None
        worker.join(30)
        assert errors  # the client saw its answer cut, not a complete one
        # and the proxy's log has the request's line (seen in the tunnel soak: closing the
        # client's connection cancelled the handler before it was written)
        wait_until(lambda: len(cut()) == 1, 10, "the summary line of the cut answer")
        assert "user=bob" in cut()[0] and "slot=tunnel:" in cut()[0]
        done = client(base).chat.completions.create(model="svc", messages=[{"role": "user", "content": "x"}])
        assert done.choices[0].message.content
        assert p.tunnels is not None and p.tunnels.opened == 2


def test_sessions_hung_up_under_load_leave_no_row_open(
    fakes: Fakes, home: Path, real_login: FakeBackend
) -> None:
    """A short soak: sessions hung up on, five times, while 8 clients keep asking."""
    stop = threading.Event()
    answered: list[str] = []
    failed: list[str] = []

    def ask(base: str, k: int) -> None:
        c = client(base)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                c.chat.completions.create(
                    model="svc", messages=[{"role": "user", "content": "x"}], extra_body={"token_delay": 0.02}
                )
                answered.append(f"{k}-{i}")
            except openai.APIError as e:
                failed.append(type(e).__name__)

    with proxy(fakes, tunnel_sessions=2) as (p, base):
        workers = [threading.Thread(target=ask, args=(base, k), daemon=True) for k in range(8)]
        for w in workers:
            w.start()
        killed: set[int] = set()
        for _ in range(5):  # each round: wait for a session serving requests, then hang up on all
            wait_until(lambda: _tunnel_pids(home) - killed, 60, "a (new) tunnel session")
            time.sleep(0.3)
            for pid in _tunnel_pids(home) - killed:
                os.kill(pid, signal.SIGHUP)
                killed.add(pid)
        stop.set()
        for w in workers:
            w.join(60)
        assert p.tunnels is not None and p.tunnels.opened > 2  # sessions were reopened
    wait_until(lambda: not _tunnel_pids(home), 20, "every tunnel process to exit")
    recorded = rows(home / "saia.db")
    assert answered and len(recorded) >= len(answered)
    assert [r for r in recorded if r["ended_at"] is None] == []  # no row left open
    assert {r["outcome"] for r in recorded} <= {"ok", "aborted"}


def test_a_login_node_without_the_word_gets_one_session_per_request(fakes: Fakes) -> None:
    with proxy(fakes) as (p, base):
        c = client(base)
        for _ in range(2):
            done = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
            assert done.choices[0].message.content == "Hello from echo"
        assert p.tunnels is not None and p.tunnels.opened == 0
    sent = commands(fakes)
    assert sent.count("tunnel") == 1  # asked once, then not again for a while
    assert len([c for c in sent if "\n" in c]) == 2
