"""GPU time of jobs and its attribution to users: pure functions over intervals.

Each instant of a job's GPU time (run time clipped to the month, times its
GPUs) goes to the users with a request in flight on that job at that
instant, in proportion to their number of requests in flight; an instant
with no request in flight is idle. So, per job, attributed + idle = GPU time.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False  # the request path's usage reads this module: no typing, no dataclasses
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


# Plain classes, not dataclasses: importing ``dataclasses`` (with ``inspect``) costs every
# ``GET /v1/usage`` of the request path ~12 ms, and nothing compares or copies these.
class JobSpan:
    """The times of one job (epoch seconds; None = not reached / still going)."""

    __slots__ = ("draining_at", "ended_at", "gpus", "id", "ready_at", "service", "started_at", "submitted_at")

    def __init__(
        self,
        id: int,
        service: str,
        gpus: int,
        submitted_at: float,
        started_at: float | None,
        ready_at: float | None,
        draining_at: float | None,
        ended_at: float | None,
    ) -> None:
        self.id = id
        self.service = service
        self.gpus = gpus
        self.submitted_at = submitted_at
        self.started_at = started_at
        self.ready_at = ready_at
        self.draining_at = draining_at
        self.ended_at = ended_at


class JobGPU:
    """One job's figures inside a window (seconds)."""

    __slots__ = ("gpu_seconds", "idle_gpu_seconds", "idle_ready_gpu_seconds", "run_seconds", "users")

    def __init__(
        self,
        run_seconds: float = 0.0,
        gpu_seconds: float = 0.0,
        idle_gpu_seconds: float = 0.0,
        idle_ready_gpu_seconds: float = 0.0,
        users: dict[str, float] | None = None,
    ) -> None:
        self.run_seconds = run_seconds
        self.gpu_seconds = gpu_seconds
        self.idle_gpu_seconds = idle_gpu_seconds  # no request in flight (loading, ready-idle, draining-idle)
        self.idle_ready_gpu_seconds = idle_ready_gpu_seconds  # ready and no request in flight
        self.users = {} if users is None else users  # attributed GPU seconds


def clip(lo: float, hi: float, start: float, end: float) -> tuple[float, float]:
    a, b = max(lo, start), min(hi, end)
    return (a, b) if b > a else (a, a)


def ready_interval(job: JobSpan, now: float) -> tuple[float, float] | None:
    """When the job was ready: ready_at until it began draining or ended (or now)."""
    if job.ready_at is None:
        return None
    end = job.draining_at if job.draining_at is not None else job.ended_at
    return job.ready_at, (now if end is None else end)


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    total = 0.0
    cur_a = cur_b = -math.inf
    for a, b in sorted(intervals):
        if b <= a:
            continue
        if a > cur_b:
            if cur_b > cur_a:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        elif b > cur_b:
            cur_b = b
    if cur_b > cur_a:
        total += cur_b - cur_a
    return total


def attribute(
    job: JobSpan,
    requests: Sequence[tuple[float, float | None, str]],
    lo: float,
    hi: float,
    now: float,
) -> JobGPU:
    """Split the job's GPU time in [lo, hi) among users; ``requests`` are (start, end or None, user)."""
    out = JobGPU()
    if job.started_at is None:
        return out
    run_a, run_b = clip(lo, hi, job.started_at, now if job.ended_at is None else job.ended_at)
    if run_b <= run_a:
        return out
    g = float(job.gpus)
    out.run_seconds = run_b - run_a
    out.gpu_seconds = out.run_seconds * g
    ready = ready_interval(job, now)
    ready_a, ready_b = clip(run_a, run_b, *ready) if ready else (run_a, run_a)

    # All ends, then all starts, sorted by time with a stable sort: at one instant the
    # ends come first, so back-to-back requests never overlap. F is the integral of
    # 1/n over busy time: a request that runs from s to e earns F(e) - F(s) seconds.
    users: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    for start, end, user in requests:
        a = run_a if start < run_a else start
        b = now if end is None else end
        if b > run_b:
            b = run_b
        if b > a:
            users.append(user)
            starts.append(a)
            ends.append(b)
    n_req = len(users)
    times = ends + starts
    f_at = [0.0] * (2 * n_req)
    f = 0.0
    n = 0
    t_prev = run_a
    idle = idle_ready = 0.0

    def gap(a: float, b: float) -> None:
        nonlocal idle, idle_ready
        idle += b - a
        ra, rb = max(a, ready_a), min(b, ready_b)
        if rb > ra:
            idle_ready += rb - ra

    for k in sorted(range(2 * n_req), key=times.__getitem__):
        t = times[k]
        if t > t_prev:
            if n:
                f += (t - t_prev) / n
            else:
                gap(t_prev, t)
            t_prev = t
        f_at[k] = f
        n += 1 if k >= n_req else -1
    if run_b > t_prev:
        gap(t_prev, run_b)
    shares: dict[str, float] = {}
    get = shares.get
    for user, fe, fs in zip(users, f_at[:n_req], f_at[n_req:], strict=True):
        shares[user] = get(user, 0.0) + (fe - fs)
    out.idle_gpu_seconds = idle * g
    out.idle_ready_gpu_seconds = idle_ready * g
    out.users = {u: v * g for u, v in shares.items()}
    return out


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None for none)."""
    n = len(sorted_values)
    if not n:
        return None
    rank = max(1, math.ceil(p * n / 100))  # p * n first: exact for whole p
    return sorted_values[min(rank, n) - 1]


def median(values: Iterable[float]) -> float | None:
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
