"""The login node's side of the tunnel in-process, for the request path's tunnel tests:
``Session`` (a ``Tunnel`` on pipes in a thread, the test playing the proxy), the
fixtures ``svc`` (one service, no jobs of its own) and ``backend`` (a fake backend),
and ``open_fds`` (what a leak check compares)."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.request_path import tunnel_frames as tf
from saia_ctl.request_path.handler import handle_request
from saia_ctl.request_path.log import Log
from saia_ctl.request_path.tunnel import Tunnel
from saia_ctl.settings import Settings
from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config


class Session:
    """A Tunnel on pipes in a thread; the test is the proxy."""

    def __init__(self, settings: Settings | None, home: Path | None, serve: object = None) -> None:
        in_r, self.in_w = os.pipe()
        self.out_r, out_w = os.pipe()
        log = Log(str(home) if home else None)
        self.tunnel = Tunnel(settings, log, in_r, out_w, serve, handle=handle_request)
        self.rc: int | None = None
        self._fds = (in_r, out_w)
        self._pushback: list[tuple[int, int, bytes]] = []
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        self.dec = tf.Decoder(tf.TO_PROXY)
        self.answers: dict[int, bytearray] = {}
        self.done: dict[int, bytes] = {}
        self.errors: dict[int, bytes] = {}
        self.hello = self.next_frame()

    def _main(self) -> None:
        try:
            self.rc = self.tunnel.run()
        finally:
            for fd in self._fds:
                os.close(fd)

    def send(self, kind: int, sid: int, payload: bytes = b"") -> None:
        os.write(self.in_w, tf.encode(kind, sid, payload))

    def close(self) -> None:
        os.close(self.in_w)

    def next_frame(self) -> tuple[int, int, bytes]:
        buf: list[tuple[int, int, bytes]] = []
        while not buf:
            data = os.read(self.out_r, 65536)
            assert data, "the session ended"
            buf = self.dec.feed(data)
        self._pushback = buf[1:]
        return buf[0]

    def collect(self, until: set[int], timeout: float = 120) -> None:
        """Read frames until every stream in ``until`` has its DONE or ERROR; fail (not
        hang) when they have not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pending, self._pushback = self._pushback, []
        while until - self.done.keys() - self.errors.keys():
            if not pending:
                left = deadline - time.monotonic()
                assert left > 0 and select.select([self.out_r], [], [], left)[0], (
                    f"streams {sorted(until - self.done.keys() - self.errors.keys())} not ended within {timeout} s"
                )
                data = os.read(self.out_r, 1 << 20)
                assert data, "the session ended"
                pending = self.dec.feed(data)
                continue
            kind, sid, payload = pending.pop(0)
            if kind == tf.DATA:
                self.answers.setdefault(sid, bytearray()).extend(payload)
            elif kind == tf.DONE:
                self.done[sid] = payload
            elif kind == tf.ERROR:
                self.errors[sid] = payload


@pytest.fixture
def svc(home: Path, import_services: Any) -> Path:
    import_services(
        service_config("svc", minimum_number_instances=0, maximum_number_instances=0, request_hold_time=0)
    )
    return home / "saia.db"


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend() as b:
        yield b


def open_fds() -> set[str]:
    """This process's open pipes, sockets and memory files as "fd -> target" (a tunnel
    opens a pipe and a socketpair per stream): one that threads left by earlier tests
    close meanwhile is no leak, one that is new after the run is."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (or the listing's own descriptor)
            continue
        if target.startswith(("pipe:", "socket:", "/memfd:")):
            found.add(f"{fd} -> {target}")
    return found
