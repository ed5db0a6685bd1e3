"""Slurm job names: ``{prefix}_{jobs.id}_{service_id}``, the link from a Slurm job back to its row."""

from __future__ import annotations

import re

# The prefix has no '_' (settings.job_prefix enforces it), so the first two
# underscores delimit the fields; service ids may contain '_' themselves.
_NAME = re.compile(
    r"^(?P<prefix>[A-Za-z0-9.-]+)_(?P<id>[1-9][0-9]{0,17})_(?P<service>[A-Za-z0-9._+-]{1,256})$"
)


def job_name(prefix: str, job_id: int, service_id: str) -> str:
    """The Slurm job name of row ``job_id`` of ``service_id``."""
    return f"{prefix}_{job_id}_{service_id}"


def name_prefix(prefix: str) -> str:
    """What every job name of this installation starts with (for ``squeue``)."""
    return f"{prefix}_"


def parse_job_name(name: str, prefix: str) -> tuple[int, str] | None:
    """``(jobs.id, service_id)`` of one of our job names; None for anybody else's job."""
    m = _NAME.match(name)
    if m is None or m["prefix"] != prefix:
        return None
    return int(m["id"]), m["service"]
