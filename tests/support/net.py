"""Loopback helpers shared by the tests: a free port, a free block of ports for jobs,
waiting for a listener."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


_blocks = itertools.count(os.getpid() % 97 * 7)  # this process's walk over the blocks


def free_block(n: int = 50) -> int:
    """The first of ``n`` consecutive TCP ports that nothing is bound to now, below the
    ephemeral range (so no outgoing connection takes one later): a ``SAIA_PORT_RANGE``
    for jobs that listen on all interfaces. Successive calls walk successive blocks (a
    job of an earlier home may not have bound its port yet), from a place that differs
    between processes."""
    first = 10000
    blocks = (_ephemeral_low() - first) // n
    for _ in range(blocks):
        start = first + next(_blocks) % blocks * n
        if all(_bindable(p) for p in range(start, start + n)):
            return start
    raise AssertionError(f"no {n} free ports in a row between {first} and {first + blocks * n}")


def wait_port(port: int, timeout: float = 10) -> None:
    """Return once something accepts connections on 127.0.0.1:port; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")
