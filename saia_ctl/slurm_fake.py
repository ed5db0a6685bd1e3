"""An in-memory Slurm behind the ``SlurmClient`` interface, for unit tests and benches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .sacct import SacctRecord
from .slurm import SlurmError, SlurmJob


@dataclass
class FakeJob:
    job: SlurmJob
    script: str
    port: int
    env: dict[str, str]
    submitted_at: float
    started_at: float | None = None
    args: list[str] = field(default_factory=list)


class FakeSlurm:
    """Jobs live in a dict; time comes from ``clock``; tests move jobs along by hand.

    ``fail_next`` makes the next call of that kind raise ``SlurmError`` (e.g.
    ``fake.fail_next.add("queue")``); ``calls`` counts calls by kind.
    """

    def __init__(self, clock: Callable[[], float], time_limit: int | None = 3600, gpus: int = 1) -> None:
        self.clock = clock
        self.time_limit = time_limit
        self.gpus = gpus
        self.jobs: dict[int, FakeJob] = {}
        self.next_id = 1000
        self.fail_next: set[str] = set()
        self.calls: dict[str, int] = {"submit": 0, "queue": 0, "cancel": 0, "job_info": 0, "accounting": 0}
        self.forgotten: set[int] = set()
        # Slurm's accounting database: what ``accounting`` (sacct) answers; tests fill it.
        self.records: dict[int, SacctRecord] = {}

    def _check(self, kind: str) -> None:
        self.calls[kind] += 1
        if kind in self.fail_next:
            self.fail_next.discard(kind)
            raise SlurmError(f"fake {kind} failure: Unable to contact slurm controller")

    # --- SlurmClient
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
        self._check("submit")
        job_id = self.next_id
        self.next_id += 1
        job = SlurmJob(job_id=job_id, name=name, state="PENDING", time_limit=self.time_limit, gpus=self.gpus)
        self.jobs[job_id] = FakeJob(job, script, port, dict(env), self.clock(), args=list(extra_args))
        return job_id

    def queue(self, name_prefix: str) -> list[SlurmJob]:
        self._check("queue")
        out = []
        for job_id, fj in self.jobs.items():
            if job_id in self.forgotten or not fj.job.name.startswith(name_prefix):
                continue
            job = fj.job
            if fj.started_at is not None and job.is_running:
                job = replace(job, elapsed=int(self.clock() - fj.started_at))
            out.append(job)
        return out

    def accounting(self, job_ids: Sequence[int]) -> dict[int, SacctRecord]:
        self._check("accounting")
        return {i: self.records[i] for i in job_ids if i in self.records}

    def accounting_window(self, start: float, end: float) -> list[SacctRecord]:
        self._check("accounting")
        return [
            r
            for r in self.records.values()
            if r.start is not None and r.start < end and (r.end is None or r.end > start)
        ]

    def cancel(self, job_id: int) -> None:
        self._check("cancel")
        fj = self.jobs.get(job_id)
        if fj is not None and not fj.job.is_finished:
            fj.job = replace(fj.job, state="CANCELLED", end_time=self.clock())

    def job_info(self, job_id: int) -> SlurmJob | None:
        self._check("job_info")
        fj = self.jobs.get(job_id)
        if fj is None or job_id in self.forgotten:
            return None
        return fj.job

    # --- test controls
    def start(self, job_id: int, node: str = "node1") -> None:
        fj = self.jobs[job_id]
        fj.started_at = self.clock()
        fj.job = replace(fj.job, state="RUNNING", node=node, elapsed=0, start_time=fj.started_at)

    def finish(self, job_id: int, state: str = "COMPLETED", reason: str | None = None) -> None:
        fj = self.jobs[job_id]
        fj.job = replace(fj.job, state=state, reason=reason, end_time=self.clock())

    def forget(self, job_id: int) -> None:
        """Slurm purged the job (MinJobAge passed): neither squeue nor scontrol know it."""
        self.forgotten.add(job_id)

    def live(self) -> list[SlurmJob]:
        return [
            fj.job
            for fj in self.jobs.values()
            if not fj.job.is_finished and fj.job.job_id not in self.forgotten
        ]
