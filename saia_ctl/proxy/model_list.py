"""``/v1/models`` from the cluster's ``status`` control command (OpenAI shape).

The ``status`` answer lists the services (id, name, owned_by, input, output)
and their live state (ready instances, starting instances, target). Each
becomes an OpenAI model object plus SAIA's ``name``, ``input``, ``output``
and ``status``: ``ready`` (a backend answers), ``starting`` (a job is queued or
loading) or ``offline`` (none).

The live catalogue's fields pass through when the cluster tells them:
``phase`` (ready, loading, queued with ``reason``, draining, offline,
maintenance), ``demand`` (the number GWDG's Chat AI frontend reads: up to 1
low, 3 medium, 5 high, above that very high), ``contextLength`` (a string, as
that frontend reads it), ``estimated_wait`` and the config's further keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_READY_KEYS = ("ready_instances", "ready", "instances_ready", "ready_jobs")
_STARTING_KEYS = (
    "starting_instances",
    "starting",
    "pending_instances",
    "pending",
    "loading",
    "starting_jobs",
)
_TARGET_KEYS = ("target", "target_instances")
_STATES = ("ready", "starting", "offline")
# Catalogue fields copied from the status answer when present.
_PASS = (
    "phase",
    "admin",
    "reason",
    "estimated_wait",
    "slurm_start",
    "maintenance",
    "maintenance_until",
    "message",
)
# Fields of the status answer that are counts or limits, not model facts.
_INTERNAL = frozenset(
    {
        "state",
        "ready",
        "starting",
        "draining",
        "target",
        "queued",
        "loading",
        "in_flight",
        "capacity",
        "minimum_number_instances",
        "maximum_number_instances",
        *_READY_KEYS,
        *_STARTING_KEYS,
        *_TARGET_KEYS,
    }
)


class StatusError(ValueError):
    """The ``status`` answer cannot be read."""


def _count(info: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = info.get(key)
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, list):
            return len(value)
    return None


def _services(doc: Any) -> list[Mapping[str, Any]]:
    if isinstance(doc, Mapping):
        for key in ("services", "data", "models"):
            if isinstance(doc.get(key), list):
                doc = doc[key]
                break
        else:
            if all(isinstance(v, Mapping) for v in doc.values()):
                return [{"id": k, **v} for k, v in doc.items()]
    if not isinstance(doc, list):
        raise StatusError("the status answer holds no list of services")
    return [s for s in doc if isinstance(s, Mapping) and isinstance(s.get("id"), str)]


def model_object(info: Mapping[str, Any], created: int) -> dict[str, Any]:
    """One service of the ``status`` answer as an OpenAI model object."""
    live: Mapping[str, Any] = info
    for key in ("instances", "state", "live"):
        if isinstance(info.get(key), Mapping):
            live = {**info, **info[key]}
            break
    ready = _count(live, _READY_KEYS)
    starting = _count(live, _STARTING_KEYS)
    target = _count(live, _TARGET_KEYS)
    state = next((v for k in ("status", "state") if isinstance(v := info.get(k), str) and v in _STATES), None)
    if state is None:
        state = "ready" if ready else "starting" if starting else "offline"
    raw_created = info.get("created")
    extra = {k: v for k, v in info.items() if k not in _INTERNAL and k not in _PASS}
    demand = info.get("demand")
    return {
        **extra,
        "id": info["id"],
        "object": "model",
        "created": raw_created if isinstance(raw_created, int) else created,
        "owned_by": str(info.get("owned_by") or "saia"),
        "name": str(info.get("name") or info["id"]),
        "input": info.get("input", ["text"]),
        "output": info.get("output", ["text"]),
        "status": state,
        "instances": {"ready": ready or 0, "starting": starting or 0, "target": target},
        "demand": demand if isinstance(demand, (int, float)) and not isinstance(demand, bool) else 0,
        **{k: info[k] for k in _PASS if info.get(k) is not None},
        **({"contextLength": str(info["contextLength"])} if info.get("contextLength") is not None else {}),
    }


def models_from_status(answer: bytes, created: int) -> list[dict[str, Any]]:
    try:
        doc = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        raise StatusError(f"the status answer is not JSON: {answer[:80]!r}") from None
    return [model_object(info, created) for info in _services(doc)]
