"""The live catalogue of the ``status`` answer: per service its phase, demand,
context length, capabilities and estimated wait (pure functions, stdlib only).

Phases: ``ready`` (a job answers), ``loading`` (a job runs, does not answer
yet), ``queued`` (a job waits in Slurm, with Slurm's reason), ``draining``
(only draining jobs left, or drained by its operator), ``offline`` (no job).

``demand`` is the number GWDG's Chat AI frontend reads from the model list:
up to 1 low, up to 3 medium, up to 5 high, above that very high. Here it is
in-flight requests against capacity (ready jobs x inferences_per_instance)
scaled so that a service at capacity shows 5: requests beyond capacity (or
any request with no ready job) show above 5.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

DEMAND_AT_CAPACITY = 5.0
DEMAND_NO_CAPACITY = 6.0  # requests in flight and no ready job: "very high"
# Keys of a service's config object that shape its jobs, not what it offers.
JOB_KEYS = frozenset(
    {
        "id",
        "name",
        "owned_by",
        "sbatch",
        "inferences_per_instance",
        "maximum_number_instances",
        "minimum_number_instances",
        "job_expiry_time",
        "ready_timeout",
        "idle_timeout",
        "scale_down_cooldown",
        "health_failures",
        "request_hold_time",
        "input",
        "output",
        "contextLength",
    }
)
# Fields of the answer that capability keys from the config never overwrite.
RESERVED = frozenset(
    {
        "state",
        "phase",
        "admin",
        "reason",
        "ready",
        "starting",
        "queued",
        "loading",
        "draining",
        "target",
        "demand",
        "in_flight",
        "capacity",
        "estimated_wait",
        "queued_since",
        "slurm_start",
        "maintenance",
        "maintenance_until",
        "message",
    }
)


def demand(in_flight: int, capacity: int) -> float:
    """In-flight requests against capacity, on the frontend's scale (5 = at capacity)."""
    if in_flight <= 0:
        return 0.0
    if capacity <= 0:
        return DEMAND_NO_CAPACITY
    return round(DEMAND_AT_CAPACITY * in_flight / capacity, 2)


def phase(counts: Mapping[str, int], admin: str = "active") -> str:
    """The service's phase from its live jobs' states; drained or disabled by its operator:
    ``draining`` while jobs are left, then ``offline``."""
    if admin != "active":
        return "draining" if any(counts.values()) else "offline"
    if counts.get("ready", 0):
        return "ready"
    if counts.get("starting", 0):
        return "loading"
    if counts.get("pending", 0) or counts.get("submitting", 0):
        return "queued"
    if counts.get("draining", 0):
        return "draining"
    return "offline"


def context_length(config: Mapping[str, object], learned: int | None) -> str | None:
    """``contextLength`` as the frontend reads it: a string of digits (it strips
    non-digits to sort). The config key wins; else what the backend told."""
    value = config.get("contextLength")
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if learned is not None and learned > 0:
        return str(learned)
    return None


def capabilities(config_json: str | None) -> dict[str, object]:
    """The service's config object (empty if unreadable)."""
    try:
        value = json.loads(config_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def extra_keys(config: Mapping[str, object]) -> dict[str, object]:
    """Further keys of the service's config (capabilities), kept as imported."""
    return {k: v for k, v in config.items() if k not in JOB_KEYS and k not in RESERVED}


def estimated_wait(
    now: float,
    history: Sequence[float],
    oldest_submit: float | None,
    oldest_start: float | None,
    slurm_start: float | None,
    load_history: Sequence[float],
) -> int | None:
    """Seconds until a job is likely ready, or None with nothing to go by.

    ``history``: recent submit-to-ready durations; ``load_history``: recent
    start-to-ready durations. A running job: typical load time minus its time
    running. A pending job: Slurm's expected start (``squeue --start``) plus the
    load time when Slurm has one, else the typical submit-to-ready minus its
    time waiting. No job: the typical submit-to-ready.
    """
    typical = _median(history)
    load = _median(load_history)
    if oldest_start is not None:
        if load is None:
            return None
        return max(0, round(load - (now - oldest_start)))
    if slurm_start is not None and slurm_start > now:
        return round(slurm_start - now + (load or 0.0))
    if typical is None:
        return None
    if oldest_submit is not None:
        return max(0, round(typical - (now - oldest_submit)))
    return round(typical)


def _median(values: Sequence[float]) -> float | None:
    xs = sorted(v for v in values if v >= 0)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
