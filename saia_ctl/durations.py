"""Slurm durations, as squeue prints them and config.json writes them."""

from __future__ import annotations

import re

from .errors import SaiaError

_DURATION = re.compile(
    r"""^(?:(?P<days>\d+)-)?          # D-
        (?:(?P<a>\d+):)?              # first of H:MM:SS
        (?P<b>\d+):(?P<c>\d{2})$      # MM:SS
    """,
    re.VERBOSE,
)
_DAYS_HOURS = re.compile(r"^(?P<days>\d+)-(?P<hours>\d+)$")  # D-HH, Slurm input form

UNLIMITED = ("UNLIMITED", "INFINITE", "Partition_Limit")


class DurationError(SaiaError, ValueError):
    """Not a Slurm duration."""


def parse_duration(text: str) -> int | None:
    """Seconds of a Slurm duration; None for UNLIMITED. Raises DurationError otherwise.

    Accepts ``SS``-less forms as Slurm prints them: ``MM:SS``, ``H:MM:SS``,
    ``D-HH:MM:SS`` (and ``D-HH`` as Slurm accepts on input).
    """
    s = text.strip()
    if s in UNLIMITED:
        return None
    if s in ("INVALID", "NOT_SET", "N/A", ""):
        raise DurationError(f"not a duration: {text!r}")
    m = _DURATION.match(s)
    if m:
        days = int(m["days"] or 0)
        if m["a"] is not None:
            hours, minutes, seconds = int(m["a"]), int(m["b"]), int(m["c"])
            if minutes > 59:
                raise DurationError(f"minutes above 59 in {text!r}")
        else:
            hours, minutes, seconds = 0, int(m["b"]), int(m["c"])
            if m["days"] is not None:
                # D-MM:SS is not a Slurm form; D-HH:MM is, and means hours:minutes.
                hours, minutes, seconds = minutes, seconds, 0
        if seconds > 59:
            raise DurationError(f"seconds above 59 in {text!r}")
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    m = _DAYS_HOURS.match(s)
    if m:
        return (int(m["days"]) * 24 + int(m["hours"])) * 3600
    raise DurationError(f"not a duration (MM:SS, H:MM:SS or D-HH:MM:SS): {text!r}")


def format_duration(seconds: float | None) -> str:
    """The inverse, as Slurm prints it (``UNLIMITED`` for None)."""
    if seconds is None:
        return "UNLIMITED"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"
