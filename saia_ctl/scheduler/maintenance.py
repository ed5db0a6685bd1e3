"""Maintenance windows: Slurm reservations with the MAINT flag, read once per tick
(one ``scontrol show reservation``; ``sinfo`` for the node names only while a
window on some nodes is announced).

A window puts a service down for maintenance while it is active and covers the
nodes the service runs on (those of its running jobs; with none, every node of
the cluster). The tick stores the window's end on the service
(``service_states.maintenance_until``): the planner submits nothing for it until
then, the request path answers 503 with ``Retry-After`` set to the end, and
``status`` shows the phase ``maintenance``. Before a window: no job is submitted
whose walltime (that of the service's newest job) would run into a window that
covers every node of the cluster (``submit_hold``). A ready job on a node that a
window starting within its service's ``job_expiry_time`` covers, whose walltime
runs into the window, is replaced when nodes outside the window exist
(``move_off``): the planner rotates it as a job near its walltime end, its
replacement submitted with ``--exclude`` of the window's nodes.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text

from ..db import read_session, write_session
from ..models import JobState
from ..slurm import SlurmError, SlurmJob, parse_scontrol_fields
from .views import JobView, ServiceView

_RANGE = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class Window:
    name: str
    start: float
    end: float
    nodes: frozenset[str] | None  # None: every node (Nodes=ALL)
    maint: bool

    def active(self, now: float) -> bool:
        return self.start <= now < self.end


def expand_hostlist(text_: str) -> list[str]:
    """``n[01-03,07],gpu1`` -> n01 n02 n03 n07 gpu1 (one bracket group per host expression)."""
    out: list[str] = []
    depth, cur = 0, ""
    parts = []
    for c in text_.strip():
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += c == "["
        depth -= c == "]"
        cur += c
    parts.append(cur)
    for part in (p.strip() for p in parts):
        if not part:
            continue
        m = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", part)
        if not m:
            out.append(part)
            continue
        prefix, inner, suffix = m.groups()
        for item in inner.split(","):
            r = _RANGE.match(item)
            if r:
                lo, hi = r.groups()
                out.extend(f"{prefix}{n:0{len(lo)}d}{suffix}" for n in range(int(lo), int(hi) + 1))
            else:
                out.append(f"{prefix}{item}{suffix}")
    return out


def _epoch(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value).astimezone().timestamp()
    except ValueError:
        return None


def parse_reservations(stdout: str) -> list[Window]:
    """``scontrol show reservation -o`` -> windows; lines that are not reservations are skipped."""
    windows = []
    for line in stdout.splitlines():
        f = parse_scontrol_fields(line.strip())
        name = f.get("ReservationName")
        start, end = _epoch(f.get("StartTime", "")), _epoch(f.get("EndTime", ""))
        if not name or start is None or end is None:
            continue
        nodes_text = f.get("Nodes", "")
        nodes = None if nodes_text.upper() == "ALL" else frozenset(expand_hostlist(nodes_text))
        flags = {x.strip().upper() for x in f.get("Flags", "").split(",")}
        windows.append(Window(name, start, end, nodes, "MAINT" in flags))
    return windows


def _run(slurm: object, *args: str) -> str | None:
    run: Callable[..., subprocess.CompletedProcess[str]] | None = getattr(slurm, "run", None)
    if run is None:
        return None
    try:
        proc = run(*args)
    except SlurmError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def read_windows(slurm: object) -> list[Window] | None:
    """The MAINT reservations; None when they cannot be read (then nothing changes)."""
    out = _run(slurm, "scontrol", "show", "reservation", "-o")
    return None if out is None else [w for w in parse_reservations(out) if w.maint]


def cluster_nodes(slurm: object) -> frozenset[str] | None:
    out = _run(slurm, "sinfo", "-h", "-o", "%N")
    if out is None:
        return None
    return frozenset(n for line in out.splitlines() for n in expand_hostlist(line))


def service_maintenance(
    windows: Sequence[Window],
    services: Iterable[ServiceView],
    jobs: Sequence[JobView],
    queue: Sequence[SlurmJob],
    all_nodes: frozenset[str] | None,
    now: float,
) -> dict[str, tuple[float, str]]:
    """{service id: (end, name)} of the active window each service is down for (pure)."""
    active = [w for w in windows if w.active(now)]
    if not active:
        return {}
    running = {j.job_id: j.node for j in queue if j.is_running and j.node}
    nodes_of: dict[str, set[str]] = {}
    for job in jobs:
        node = running.get(job.slurm_job_id) if job.slurm_job_id is not None else None
        if node:
            nodes_of.setdefault(job.service_id, set()).add(node)
    out: dict[str, tuple[float, str]] = {}
    for svc in services:
        needed = nodes_of.get(svc.id) or set(all_nodes or ())
        covering = [w for w in active if w.nodes is None or (needed and needed <= w.nodes)]
        if covering:
            w = max(covering, key=lambda x: x.end)
            out[svc.id] = (w.end, w.name)
    return out


def submit_hold(
    windows: Sequence[Window], all_nodes: frozenset[str] | None, now: float, walltime: int | None
) -> float | None:
    """The end of the maintenance window a job submitted now would run into on every node
    of the cluster (its walltime reaches the window's start), or None: submit. Without a
    known walltime, or with nodes outside the window, Slurm decides (pure)."""
    if walltime is None:
        return None
    ends = [
        w.end
        for w in windows
        if w.end > now
        and w.start < now + walltime
        and (w.nodes is None or (all_nodes is not None and all_nodes <= w.nodes))
    ]
    return max(ends) if ends else None


def move_off(
    windows: Sequence[Window],
    services: Iterable[ServiceView],
    jobs: Sequence[JobView],
    queue: Sequence[SlurmJob],
    all_nodes: frozenset[str] | None,
    now: float,
) -> dict[int, tuple[str, ...]]:
    """{jobs.id: nodes to exclude} of the ready jobs to replace before a window (pure): the
    job runs on a node the window covers, the window starts within its service's
    job_expiry_time, the job's walltime reaches the window's start, and some node of the
    cluster is outside the window (a window on every node: nowhere to go, nothing done)."""
    if all_nodes is None:
        return {}
    expiry = {s.id: s.job_expiry_time for s in services}
    running = {j.job_id: j.node for j in queue if j.is_running and j.node}
    out: dict[int, tuple[str, ...]] = {}
    for job in jobs:
        node = running.get(job.slurm_job_id) if job.slurm_job_id is not None else None
        lead = expiry.get(job.service_id)
        if (
            job.state != JobState.READY
            or node is None
            or lead is None
            or job.started_at is None
            or job.walltime_limit is None
        ):
            continue
        ends_at = job.started_at + job.walltime_limit
        for w in sorted(windows, key=lambda x: x.start):
            if (
                w.nodes is not None
                and node in w.nodes
                and w.end > now
                and w.start - now <= lead
                and ends_at > w.start
                and all_nodes - w.nodes
            ):
                out[job.id] = tuple(sorted(w.nodes))
                break
    return out


_READ = text("SELECT service_id, maintenance_until, maintenance_name FROM service_states")
_WRITE = text(
    "INSERT INTO service_states (service_id, load_avg, target, maintenance_until, maintenance_name)"
    " VALUES (:sid, 0, 0, :until, :name) ON CONFLICT (service_id) DO UPDATE SET"
    " maintenance_until = excluded.maintenance_until, maintenance_name = excluded.maintenance_name"
)


@dataclass(frozen=True)
class Maintenance:
    down: dict[str, tuple[float, str]]  # service id -> (end, name) of the window it is down for
    hold: dict[str, float]  # service id -> no new job before this (the window a job would run into)
    move: dict[int, tuple[str, ...]]  # jobs.id -> the window's nodes its replacement excludes


def record_maintenance(
    engine: Engine,
    slurm: object,
    services: Sequence[ServiceView],
    jobs: Sequence[JobView],
    queue: Sequence[SlurmJob],
    now: float,
) -> Maintenance | None:
    """Read the windows, store each service's (only the changes); what applies now,
    None when the reservations cannot be read (the stored windows stay)."""
    windows = read_windows(slurm)
    if windows is None:
        return None
    all_nodes = cluster_nodes(slurm) if any(w.nodes is not None and w.end > now for w in windows) else None
    down = service_maintenance(windows, services, jobs, queue, all_nodes, now)
    with read_session(engine) as s:  # the write lock only when something changed
        stored = {str(r[0]): (r[1], r[2]) for r in s.execute(_READ)}
    changes = []
    for svc in services:
        until, name = down.get(svc.id, (None, None))
        if stored.get(svc.id, (None, None)) != (until, name):
            changes.append({"sid": svc.id, "until": until, "name": name})
    if changes:
        with write_session(engine) as s:
            s.execute(_WRITE, changes)
    hold = {}
    for svc in services:
        until = submit_hold(windows, all_nodes, now, svc.last_walltime)
        if until is not None:
            hold[svc.id] = until
    return Maintenance(down, hold, move_off(windows, services, jobs, queue, all_nodes, now))
