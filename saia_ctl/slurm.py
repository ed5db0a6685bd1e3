"""Slurm: the client interface, the subprocess implementation and pure parsers.

Slurm is called with argv lists (never a shell), every call has a timeout,
and a failed read raises ``SlurmError``: it is never taken as "no jobs".
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .durations import DurationError, parse_duration
from .errors import SaiaError
from .sacct import ENV as SACCT_ENV
from .sacct import SacctError, SacctRecord, parse_sacct, parse_time, sacct_argv, sacct_window_argv

if TYPE_CHECKING:
    from .settings import Settings


class SlurmError(SaiaError):
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
    start_time: float | None = None  # epoch seconds it started (Slurm's StartTime); None while pending
    end_time: float | None = None  # epoch seconds it ended (Slurm's EndTime); None until finished

    @property
    def is_pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def is_running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def is_finished(self) -> bool:
        return not (self.is_pending or self.is_running)

    def started_at(self, now: float) -> float:
        """When it started: Slurm's StartTime (exact, equal to sacct's Start) when squeue
        printed one, else ``now`` less the elapsed time (whole seconds: up to ~1 s early)."""
        return self.start_time if self.start_time is not None else now - (self.elapsed or 0)


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


@runtime_checkable
class SlurmAccounting(Protocol):
    """A client that can also read Slurm's accounting database (``sacct``)."""

    def accounting(self, job_ids: Sequence[int]) -> dict[int, SacctRecord]:
        """Slurm's records of ``job_ids`` in ONE sacct call (jobs it has no record of are
        absent); SlurmError when sacct cannot be run, times out, refuses (no slurmdbd)
        or prints what the parser does not understand."""
        ...

    def accounting_window(self, start: float, end: float) -> list[SacctRecord]:
        """Slurm's records of every job that ran between ``start`` and ``end`` (ONE sacct
        call, all users); SlurmError as for ``accounting``."""
        ...


# --- pure parsers -----------------------------------------------------------

# Every state squeue/scontrol print, short form -> long form.
_SHORT_STATES = {
    "PD": "PENDING",
    "R": "RUNNING",
    "S": "SUSPENDED",
    "CG": "COMPLETING",
    "CD": "COMPLETED",
    "CF": "CONFIGURING",
    "CA": "CANCELLED",
    "F": "FAILED",
    "TO": "TIMEOUT",
    "PR": "PREEMPTED",
    "NF": "NODE_FAIL",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "OOM": "OUT_OF_MEMORY",
    "RQ": "REQUEUED",
    "RF": "REQUEUE_FED",
    "RH": "REQUEUE_HOLD",
    "RS": "RESIZING",
    "RV": "REVOKED",
    "SI": "SIGNALING",
    "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT",
    "ST": "STOPPED",
}
KNOWN_STATES = frozenset(_SHORT_STATES.values())


def parse_state(text: str) -> str:
    """Long state name of a Slurm state in short or long form.

    Accepts what the tools print around it: ``CANCELLED by 0`` (scontrol/sacct),
    a trailing ``+`` (sacct), lower case. An unknown state raises ValueError
    rather than being guessed: taking a live job for finished would kill it.
    """
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    state = _SHORT_STATES.get(word, word)
    if state not in KNOWN_STATES:
        raise ValueError(f"unknown Slurm job state: {text!r}")
    return state


_NO_NODE = frozenset({"", "n/a", "N/A", "(null)", "None", "None assigned"})
_BRACKET = re.compile(r"\[([^\]]*)\]")


def first_node(nodelist: str) -> str | None:
    """The first host of a Slurm host list: ``n[01-03,07]`` -> ``n01``, ``a1,b2`` -> ``a1``.

    None for the placeholders Slurm prints when no node is assigned (``n/a``, ``(null)``, empty).
    """
    text = nodelist.strip()
    if text in _NO_NODE:
        return None
    # The first top-level comma ends the first host expression.
    depth = 0
    end = len(text)
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            end = i
            break
    first = text[:end]

    def lowest(m: re.Match[str]) -> str:
        return m.group(1).split(",", 1)[0].split("-", 1)[0]

    node = _BRACKET.sub(lowest, first)
    if not node or any(c in node for c in "[], "):
        raise ValueError(f"not a Slurm host list: {nodelist!r}")
    return node


_GRES_DETAIL = re.compile(r"\(.*\)$")  # scontrol -d: gpu:2(IDX:0-1)


def parse_gpus(text: str) -> int:
    """GPUs in a Slurm GRES/TRES string, summed over its entries (0 for none / ``N/A``).

    Forms seen: ``gres:gpu:2`` (squeue %b, 22.05), ``gres/gpu:2`` and
    ``gres/gpu=2`` (newer tres-per-node / TRES), ``gpu:a100:2`` (sbatch --gres),
    ``gpu:2(IDX:0-1)`` (scontrol -d), ``gpu`` (count 1).
    """
    s = text.strip()
    if s in ("", "N/A", "(null)", "None"):
        return 0
    total = 0
    for raw in re.split(r",(?![^()]*\))", s):  # commas inside (IDX:0,2) do not separate
        item = _GRES_DETAIL.sub("", raw.strip())
        for prefix in ("gres:", "gres/"):
            if item.startswith(prefix):
                item = item[len(prefix) :]
        name, _, rest = item.replace("=", ":").partition(":")
        if name != "gpu":
            continue
        if not rest:
            total += 1
            continue
        parts = rest.split(":")
        if parts[-1].isdigit():
            total += int(parts[-1])
        elif len(parts) == 1:  # gpu:a100 -> one GPU of that type
            total += 1
        else:
            raise ValueError(f"not a GPU count: {text!r}")
    return total


def _optional_duration(text: str) -> int | None:
    """A duration, None for UNLIMITED and the placeholders Slurm prints when it has none."""
    if text.strip() in ("INVALID", "NOT_SET", "N/A", "Unknown", ""):
        return None
    return parse_duration(text)


def _reason(text: str) -> str | None:
    r = text.strip()
    return None if r in ("", "None", "(null)") else r


def parse_sbatch(stdout: str) -> int:
    """Job id from ``sbatch --parsable`` output: ``123`` or ``123;cluster``."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("sbatch printed no job id")
    text = lines[-1].split(";", 1)[0]
    if not text.isdigit():
        raise ValueError(f"sbatch printed no job id: {lines[-1]!r}")
    return int(text)


# squeue format for queue(): %A is the unique id of each job (array elements
# included), %B the batch host ("n/a" while pending), %b tres-per-node (the GPUs
# asked for: "gres:gpu:4" in 22.05), %S and %e the start and end times (epoch
# seconds through SQUEUE_ENV; for a running job %e is its time limit's end, for a
# pending one %S an estimate). The job name comes last so that names containing
# the separator cannot break parsing; reasons never contain it.
SQUEUE_FIELDS = ("%A", "%T", "%B", "%N", "%M", "%l", "%b", "%r", "%S", "%e", "%j")
SQUEUE_ENV = {"SLURM_TIME_FORMAT": "%s"}
SQUEUE_FORMAT = "|".join(SQUEUE_FIELDS)


def parse_squeue_line(line: str) -> tuple[int, str, str]:
    """Structural check of one queue line: (job id, name, rest). ValueError if it is not one."""
    parts = line.split("|", len(SQUEUE_FIELDS) - 1)
    if len(parts) != len(SQUEUE_FIELDS) or not parts[0].isdigit():
        raise ValueError(f"not a squeue line: {line[:200]!r}")
    return int(parts[0]), parts[-1], line


def parse_squeue(stdout: str, name_prefix: str) -> list[SlurmJob]:
    """Jobs in ``squeue -h -o SQUEUE_FORMAT`` output whose name starts with ``name_prefix``.

    Every line must have the expected shape (garbage raises ValueError, it is
    never "no jobs"); only our jobs' fields are parsed further.
    """
    jobs = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        job_id, name, _ = parse_squeue_line(line)
        if not name.startswith(name_prefix):
            continue
        _, state, batch_host, nodelist, elapsed, limit, gres, reason, start, end, _name = line.split(
            "|", len(SQUEUE_FIELDS) - 1
        )
        st = parse_state(state)
        pending = st in PENDING_STATES
        finished = not pending and st not in RUNNING_STATES
        jobs.append(
            SlurmJob(
                job_id=job_id,
                name=name,
                state=st,
                node=None if pending else (first_node(batch_host) or first_node(nodelist)),
                elapsed=None if pending else _optional_duration(elapsed),
                time_limit=_optional_duration(limit),
                gpus=parse_gpus(gres),
                reason=_reason(reason),
                start_time=None if pending else parse_time(start),
                end_time=parse_time(end) if finished else None,
            )
        )
    return jobs


# Keys of `scontrol show job -o`: a capitalised word (may hold : / _) after a space.
_SCONTROL_KEY = re.compile(r"(?:^|(?<= ))([A-Z][A-Za-z0-9_:/]*)=")


def parse_scontrol_fields(line: str) -> dict[str, str]:
    """``Key=Value Key=Value`` of one ``scontrol show job -o`` line; values may contain spaces."""
    matches = list(_SCONTROL_KEY.finditer(line))
    fields: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        fields.setdefault(m.group(1), line[m.end() : end].rstrip(" \n"))
    return fields


def parse_scontrol_job(stdout: str, job_id: int) -> SlurmJob:
    """The job ``job_id`` from ``scontrol show job -o ID`` output. ValueError if absent or malformed."""
    for line in stdout.splitlines():
        f = parse_scontrol_fields(line)
        if f.get("JobId") != str(job_id):
            continue
        try:
            st = parse_state(f["JobState"])
            pending = st in PENDING_STATES
            finished = not pending and st not in RUNNING_STATES
            gres = f.get("TresPerNode") or f.get("TresPerJob") or f.get("Gres") or ""
            return SlurmJob(
                job_id=job_id,
                name=f["JobName"],
                state=st,
                node=None
                if pending
                else (first_node(f.get("BatchHost", "")) or first_node(f.get("NodeList", ""))),
                elapsed=None if pending else _optional_duration(f.get("RunTime", "")),
                time_limit=_optional_duration(f.get("TimeLimit", "")),
                gpus=parse_gpus(gres),
                reason=_reason(f.get("Reason", "")),
                start_time=None if pending else parse_time(f.get("StartTime", "")),
                end_time=parse_time(f.get("EndTime", "")) if finished else None,
            )
        except KeyError as e:
            raise ValueError(f"scontrol output lacks {e.args[0]}: {line[:200]!r}") from None
    raise ValueError(f"scontrol output has no JobId={job_id}: {stdout[:200]!r}")


# --- the subprocess client ---------------------------------------------------


class RealSlurm:
    """``SlurmClient`` over the Slurm commands: argv lists, a timeout on every call,
    ``SLURM_CONF`` and the binaries' folder from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.bin = settings.slurm_bin
        self.conf = settings.slurm_conf
        self.timeout = settings.slurm_timeout

    def _cmd(self, name: str) -> str:
        return os.path.join(self.bin, name) if self.bin else name

    def _run(
        self, argv: list[str], extra_env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if self.conf:
            env["SLURM_CONF"] = self.conf
        if extra_env:
            env.update(extra_env)
        name = os.path.basename(argv[0])
        try:
            return subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{name} timed out after {self.timeout:g} s") from None
        except OSError as e:
            raise SlurmError(f"{name} could not be run: {e.strerror or e}") from None

    @staticmethod
    def _failure(proc: subprocess.CompletedProcess[str]) -> SlurmError:
        """The command, its rc and the first line of its stderr (stdout if stderr is empty)."""
        name = os.path.basename(str(proc.args[0]))
        lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
        return SlurmError(f"{name} failed (rc={proc.returncode}): {lines[0] if lines else 'no output'}")

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
        argv = self.sbatch_argv(
            script, name=name, port=port, workdir=workdir, output=output, extra_args=extra_args
        )
        # The job inherits sbatch's environment (--export=ALL), so secrets go there, never on argv.
        proc = self._run(argv, {**env, "SAIA_PORT": str(port)})
        if proc.returncode != 0:
            raise self._failure(proc)
        try:
            return parse_sbatch(proc.stdout)
        except ValueError as e:
            raise SlurmError(str(e)) from None

    def sbatch_argv(
        self,
        script: str,
        *,
        name: str,
        port: int,
        workdir: str,
        output: str,
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        """The argv ``submit`` runs (``test_submit`` checks the same options)."""
        return [
            self._cmd("sbatch"),
            "--parsable",
            f"--job-name={name}",
            f"--chdir={workdir}",
            f"--output={output}",
            *extra_args,
            script,
            str(port),
        ]

    def test_submit(
        self,
        script: str,
        *,
        name: str,
        port: int,
        env: Mapping[str, str],
        workdir: str,
        output: str,
        extra_args: Sequence[str] = (),
    ) -> str:
        """``sbatch --test-only`` with the argv of ``submit``: submits nothing, returns
        Slurm's answer (when and where the job would start); SlurmError if it is refused."""
        argv = self.sbatch_argv(
            script, name=name, port=port, workdir=workdir, output=output, extra_args=extra_args
        )
        argv.insert(1, "--test-only")
        proc = self._run(argv, {**env, "SAIA_PORT": str(port)})
        if proc.returncode != 0:
            raise self._failure(proc)
        lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        return lines[-1] if lines else "accepted"

    def run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """One Slurm command by name, with this client's folder, SLURM_CONF and timeout
        (for diagnostics such as ``saia-ctl doctor``); SlurmError if it cannot be run."""
        return self._run([self._cmd(name), *args])

    def queue(self, name_prefix: str) -> list[SlurmJob]:
        proc = self._run([self._cmd("squeue"), "-h", "-t", "all", "-o", SQUEUE_FORMAT], SQUEUE_ENV)
        if proc.returncode != 0:
            raise self._failure(proc)
        try:
            return parse_squeue(proc.stdout, name_prefix)
        except (ValueError, DurationError) as e:
            raise SlurmError(f"squeue: {e}") from None

    def accounting(self, job_ids: Sequence[int]) -> dict[int, SacctRecord]:
        if not job_ids:
            return {}
        proc = self._run(sacct_argv(self._cmd("sacct"), job_ids), SACCT_ENV)
        if proc.returncode != 0:
            raise self._failure(proc)
        try:
            return parse_sacct(proc.stdout)
        except SacctError as e:
            raise SlurmError(f"sacct: {e}") from None

    def accounting_window(self, start: float, end: float) -> list[SacctRecord]:
        proc = self._run(sacct_window_argv(self._cmd("sacct"), start, end), SACCT_ENV)
        if proc.returncode != 0:
            raise self._failure(proc)
        try:
            return list(parse_sacct(proc.stdout).values())
        except SacctError as e:
            raise SlurmError(f"sacct: {e}") from None

    def cancel(self, job_id: int) -> None:
        # scancel exits 0 for ids Slurm no longer knows; non-zero means it could not ask.
        proc = self._run([self._cmd("scancel"), str(int(job_id))])
        if proc.returncode != 0:
            raise self._failure(proc)

    def job_info(self, job_id: int) -> SlurmJob | None:
        proc = self._run([self._cmd("scontrol"), "show", "job", "-o", str(int(job_id))], SQUEUE_ENV)
        if proc.returncode != 0:
            if "Invalid job id specified" in (proc.stderr or ""):
                return None
            raise self._failure(proc)
        try:
            return parse_scontrol_job(proc.stdout, job_id)
        except (ValueError, DurationError) as e:
            raise SlurmError(f"scontrol: {e}") from None
