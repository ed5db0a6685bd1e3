"""Slurm: the client interface, the subprocess implementation and pure parsers.

Slurm is called with argv lists (never a shell), every call has a timeout,
and a failed read raises ``SlurmError``: it is never taken as "no jobs".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class SlurmError(Exception):
    """A Slurm command failed, timed out or answered something we cannot parse."""


# Slurm job states, long form as `squeue %T` prints them.
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"})
# Everything else (COMPLETED, CANCELLED, TIMEOUT, FAILED, NODE_FAIL, PREEMPTED,
# OUT_OF_MEMORY, BOOT_FAIL, DEADLINE, SPECIAL_EXIT, REVOKED) is finished.


@dataclass(frozen=True)
class SlurmJob:
    """A job as Slurm reports it now (observed state; the stored row is ``models.Job``)."""

    job_id: int
    name: str
    state: str  # long state name, e.g. PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT
    node: str | None = None  # batch host; None while pending
    elapsed: int | None = None  # seconds run so far
    time_limit: int | None = None  # seconds; None = UNLIMITED
    gpus: int = 0  # GPUs allocated (or asked for, while pending)
    reason: str | None = None  # pending/finish reason, e.g. Resources, TimeLimit, None

    @property
    def is_pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def is_running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def is_finished(self) -> bool:
        return not (self.is_pending or self.is_running)


class SlurmClient(Protocol):
    """What saia-ctl needs from Slurm. ``RealSlurm`` and ``FakeSlurm`` implement it."""

    def submit(
        self,
        script: str,
        *,
        name: str,
        port: int,
        env: Mapping[str, str],
        workdir: str,
        output: str,
        extra_args: Sequence[str] = (),
    ) -> int:
        """``sbatch --parsable --job-name=NAME ... SCRIPT PORT`` with ``SAIA_PORT`` and ``env``
        added to the job's environment; returns the Slurm job id."""
        ...

    def queue(self, name_prefix: str) -> list[SlurmJob]:
        """All jobs whose name starts with ``name_prefix``, in ONE squeue call
        (including recently finished ones Slurm still shows)."""
        ...

    def cancel(self, job_id: int) -> None:
        """scancel; cancelling a job that is already gone is not an error."""
        ...

    def job_info(self, job_id: int) -> SlurmJob | None:
        """Details of one job, finished ones included; None once Slurm has forgotten it."""
        ...
