"""``proxy/ssh.py``'s ``Session.kill`` on a real child process: it stops a running ssh,
and leaves one that already exited to asyncio's child watcher (found by the tunnel
soak: reaping it ourselves made asyncio log "Unknown child process" and report 255)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from saia_ctl.proxy.ssh import Session


class Proc:
    """The part of an asyncio Process that ``kill`` uses, over a real child."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.pid = child.pid
        self.returncode = None
        self.signals: list[int] = []

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        os.kill(self.pid, sig)


def session(proc: Proc) -> Session:
    return Session(pool=None, proc=proc, slot=None, started=0.0)  # type: ignore[arg-type]


def unreaped_exit(pid: int) -> Any:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)


def test_kill_leaves_an_exited_ssh_for_its_watcher_to_reap() -> None:
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    deadline = time.monotonic() + 10
    while unreaped_exit(child.pid) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc = Proc(child)
    session(proc).kill()
    assert proc.signals == []  # not signalled, and so not reaped by Popen.send_signal's poll
    assert unreaped_exit(child.pid) is not None
    assert child.wait(5) == 3  # its true status is still there for the watcher


def test_kill_stops_a_running_ssh() -> None:
    child = subprocess.Popen(["sleep", "60"])
    proc = Proc(child)
    assert unreaped_exit(child.pid) is None
    session(proc).kill()
    assert proc.signals == [signal.SIGKILL]
    assert child.wait(5) == -signal.SIGKILL
