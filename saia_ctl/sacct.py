"""Slurm's own accounting record of finished jobs (``sacct``): argv and pure parsers.

The tick asks ``sacct`` once for every live job that left the queue (see
``scheduler/records.py``); the report reads the same records to reconcile
GPU-hours. Parsers are tested on output captured from a real slurmdbd
(``tests/data/slurm/sacct-*``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

# The fields asked for, in this order; JobName last, so a name holding the delimiter
# still parses (maxsplit). ElapsedRaw is seconds; times are epoch seconds through
# SLURM_TIME_FORMAT=%s (an ISO time without a zone is read as local time, as sacct prints it).
FIELDS = (
    "JobIDRaw",
    "State",
    "ExitCode",
    "Start",
    "End",
    "ElapsedRaw",
    "AllocTRES",
    "Account",
    "Partition",
    "QOS",
    "JobName",
)
ENV = {"SLURM_TIME_FORMAT": "%s"}
# A job id list this long still fits a command line many times over; more are asked next tick.
MAX_IDS = 500

# States after which Slurm writes nothing more for the job (its record is final).
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)
_NO_TIME = frozenset({"", "Unknown", "None", "N/A"})
_EXIT_RE = re.compile(r"^\d{1,3}:\d{1,3}$")
_STATE_RE = re.compile(r"^[A-Z_]+$")


class SacctError(ValueError):
    """sacct printed something this parser does not understand."""


@dataclass(frozen=True)
class SacctRecord:
    """One job as Slurm's accounting database records it."""

    job_id: int
    state: str  # base state, e.g. CANCELLED (sacct prints "CANCELLED by 0")
    exit_code: str  # "RC:SIGNAL", e.g. "3:0", "0:9"
    start: float | None  # epoch seconds; None before it started
    end: float | None
    elapsed: int  # seconds Slurm counts (ElapsedRaw)
    gpus: int  # allocated GPUs (AllocTRES gres/gpu)
    account: str
    partition: str
    qos: str
    name: str

    @property
    def is_final(self) -> bool:
        """Slurm wrote the job's end: state, end time and elapsed are what it bills."""
        return self.state in FINAL_STATES and self.end is not None

    @property
    def gpu_seconds(self) -> int:
        return self.gpus * self.elapsed


def sacct_argv(sacct: str, job_ids: Iterable[int]) -> list[str]:
    """One call for all ``job_ids``: allocations only (-X), parsable, no header."""
    ids = ",".join(str(int(i)) for i in sorted(set(job_ids)))
    return [sacct, "-X", "-P", "-n", "--noconvert", "-j", ids, "-o", ",".join(FIELDS)]


def sacct_window_argv(sacct: str, start: float, end: float) -> list[str]:
    """One call for every user's jobs that ran between ``start`` and ``end`` (epoch seconds;
    sacct reads -S/-E as local time, so they are written as local time)."""
    return [
        sacct,
        "-a",
        "-X",
        "-P",
        "-n",
        "--noconvert",
        "-S",
        _local_iso(start),
        "-E",
        _local_iso(end),
        "-o",
        ",".join(FIELDS),
    ]


def _local_iso(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time(value: str) -> float | None:
    """``1796192526`` (SLURM_TIME_FORMAT=%s) or ``2026-12-02T06:22:06`` (local time); None if unknown."""
    value = value.strip()
    if value in _NO_TIME:
        return None
    if value.isdigit():
        return float(value)
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise SacctError(f"unexpected time {value!r}") from None


def tres_gpus(tres: str) -> int:
    """GPUs in an AllocTRES list: ``gres/gpu=2``; typed entries only (``gres/gpu:a100=2``) are summed."""
    total: int | None = None
    typed = 0
    for item in tres.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "gres/gpu" or key.startswith("gres/gpu:"):
            if not value.isdigit():
                raise SacctError(f"unexpected GPU count in AllocTRES {tres!r}")
            if key == "gres/gpu":
                total = int(value)
            else:
                typed += int(value)
    return total if total is not None else typed


def parse_sacct(text: str) -> dict[int, SacctRecord]:
    """``sacct -X -P -n -o FIELDS`` output, by job id; SacctError on any line it does not understand."""
    out: dict[int, SacctRecord] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", len(FIELDS) - 1)
        if len(parts) != len(FIELDS):
            raise SacctError(f"expected {len(FIELDS)} fields, got {len(parts)}: {line[:120]!r}")
        jid, state, exit_code, start, end, elapsed, tres, account, partition, qos, name = parts
        if not jid.isdigit():
            raise SacctError(f"unexpected job id {jid!r}")
        base = state.split(" ", 1)[0]
        if not _STATE_RE.match(base):
            raise SacctError(f"unexpected state {state!r}")
        if not _EXIT_RE.match(exit_code):
            raise SacctError(f"unexpected exit code {exit_code!r}")
        if not elapsed.isdigit():
            raise SacctError(f"unexpected ElapsedRaw {elapsed!r}")
        out[int(jid)] = SacctRecord(
            job_id=int(jid),
            state=base,
            exit_code=exit_code,
            start=parse_time(start),
            end=parse_time(end),
            elapsed=int(elapsed),
            gpus=tres_gpus(tres),
            account=account,
            partition=partition,
            qos=qos,
            name=name,
        )
    return out


def accounting_disabled(message: str) -> bool:
    """sacct's answer on a cluster without slurmdbd (AccountingStorageType=accounting_storage/none)."""
    return "accounting storage is disabled" in message.lower()
