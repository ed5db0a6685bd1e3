"""Readiness (``GET /``) and health (``GET /health``) probes of backends, concurrently.

Raw sockets with one deadline per probe: only the status line matters, and a
backend that accepts but never answers must not hold the tick.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .views import ProbeResult

MAX_THREADS = 32


@dataclass(frozen=True)
class ProbeTarget:
    job_id: int
    host: str
    port: int
    path: str  # "/" (readiness) or "/health"

    @property
    def readiness(self) -> bool:
        return self.path == "/"


Prober = Callable[[Sequence[ProbeTarget], float], dict[int, ProbeResult]]


def http_status(host: str, port: int, path: str, timeout: float) -> int:
    """The status code of ``GET path``; raises OSError (or ValueError on a non-HTTP answer)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: saia-ctl-probe\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        data = b""
        while b"\r\n" not in data and len(data) < 1024:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no status line in time")
            sock.settimeout(left)
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {line[:60]!r}")
    return int(parts[1])


def judge(target: ProbeTarget, status: int) -> bool:
    """Ready: any status below 500. Healthy: 200, or 404 for services without /health."""
    if target.readiness:
        return status < 500
    return status in (200, 404)


def probe_one(target: ProbeTarget, timeout: float) -> ProbeResult:
    try:
        status = http_status(target.host, target.port, target.path, timeout)
    except TimeoutError:
        return ProbeResult(False, f"GET {target.path}: timed out after {timeout:g}s")
    except (OSError, ValueError) as e:
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or e.__class__.__name__
        return ProbeResult(False, f"GET {target.path}: {text}")
    return ProbeResult(judge(target, status), f"GET {target.path}: {status}")


def probe_all(targets: Sequence[ProbeTarget], timeout: float) -> dict[int, ProbeResult]:
    """Probe every target at once (threads); each probe is bounded by ``timeout``."""
    if not targets:
        return {}
    if len(targets) == 1:
        return {targets[0].job_id: probe_one(targets[0], timeout)}
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(targets))) as pool:
        results = pool.map(lambda t: probe_one(t, timeout), targets)
        return {t.job_id: r for t, r in zip(targets, results, strict=True)}
