"""Pure Slurm parsers, on tables and on output captured from the real dev cluster
(tests/data/slurm/, slurm-wlm 22.05.8; see the file names for the situation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saia_ctl.durations import DurationError, format_duration, parse_duration
from saia_ctl.slurm import (
    SQUEUE_FORMAT,
    first_node,
    parse_gpus,
    parse_sbatch,
    parse_scontrol_fields,
    parse_scontrol_job,
    parse_squeue,
    parse_state,
)

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00", 0),
        ("0:59", 59),
        ("5:00", 300),
        ("59:59", 3599),
        ("1:00:00", 3600),
        ("00:01:00", 60),
        ("12:34:56", 45296),
        ("1-00:00:00", 86400),
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("1-02:03", 86400 + 2 * 3600 + 3 * 60),
        ("1-02", 86400 + 2 * 3600),
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("Partition_Limit", None),
    ],
)
def test_parse_duration(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["INVALID", "NOT_SET", "N/A", "", "abc", "1:2", "1:60", "1:60:00", "-1:00", "1-"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0, 59, 60, 3599, 3600, 86399, 86400, 200000])
def test_format_parse_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("vm", "vm"),
        ("n[01-03,07]", "n01"),
        ("n[07,01-03]", "n07"),
        ("a1,b2", "a1"),
        ("gpu[1-2],cpu5", "gpu1"),
        ("rack[2-3]-n[04-05]", "rack2-n04"),
        ("ggpu01", "ggpu01"),
        ("", None),
        ("n/a", None),
        ("(null)", None),
        ("None assigned", None),
    ],
)
def test_first_node(text: str, node: str | None) -> None:
    assert first_node(text) == node


@pytest.mark.parametrize("text", ["n[01", "a b"])
def test_first_node_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        first_node(text)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("PD", "PENDING"),
        ("R", "RUNNING"),
        ("CG", "COMPLETING"),
        ("CD", "COMPLETED"),
        ("CA", "CANCELLED"),
        ("TO", "TIMEOUT"),
        ("F", "FAILED"),
        ("NF", "NODE_FAIL"),
        ("OOM", "OUT_OF_MEMORY"),
        ("PENDING", "PENDING"),
        ("RUNNING", "RUNNING"),
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED+", "CANCELLED"),
        ("running", "RUNNING"),
        ("REQUEUE_HOLD", "REQUEUE_HOLD"),
    ],
)
def test_parse_state(text: str, state: str) -> None:
    assert parse_state(text) == state


@pytest.mark.parametrize("text", ["", "BOGUS", "slurm_load_jobs error"])
def test_parse_state_rejects_unknown(text: str) -> None:
    with pytest.raises(ValueError):
        parse_state(text)


@pytest.mark.parametrize(
    ("text", "gpus"),
    [
        ("gres:gpu:2", 2),
        ("gres/gpu:2", 2),
        ("gres/gpu=2", 2),
        ("gpu:a100:2", 2),
        ("gres:gpu:a100:4", 4),
        ("gpu:2(IDX:0-1)", 2),
        ("gres:gpu:2(IDX:0,2),gres:gpu:1(IDX:3)", 3),
        ("gpu", 1),
        ("gpu:a100", 1),
        ("gres:gpu:1,gres:shard:2", 1),
        ("gres:shard:2", 0),
        ("N/A", 0),
        ("", 0),
        ("(null)", 0),
    ],
)
def test_parse_gpus(text: str, gpus: int) -> None:
    assert parse_gpus(text) == gpus


def test_parse_gpus_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_gpus("gpu:a100:x2")


@pytest.mark.parametrize(
    ("text", "job_id"), [("123\n", 123), ("77;saiadev\n", 77), ("warning text\n42\n", 42)]
)
def test_parse_sbatch(text: str, job_id: int) -> None:
    assert parse_sbatch(text) == job_id


@pytest.mark.parametrize("text", ["", "\n", "Submitted batch job 5\n", "abc;x"])
def test_parse_sbatch_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sbatch(text)


def test_captured_output_matches_the_format_used() -> None:
    # Every captured squeue file was made with SQUEUE_FORMAT; a change of format must re-capture.
    # tests/data/slurm/capture-squeue.sh makes them.
    assert SQUEUE_FORMAT == "%A|%T|%B|%N|%M|%l|%b|%r|%S|%e|%j"


def test_squeue_running_and_pending() -> None:
    jobs = {j.job_id: j for j in parse_squeue(read("squeue_running_pending.txt"), "cap-")}
    assert sorted(jobs) == [1, 2, 3, 4, 5, 6, 7, 8]
    gpu = jobs[5]
    assert (gpu.name, gpu.state, gpu.node, gpu.gpus, gpu.elapsed, gpu.time_limit, gpu.reason) == (
        "cap-gpu4",
        "RUNNING",
        "vm",
        4,
        8,
        300,
        None,
    )
    # Slurm's StartTime (epoch seconds); %e of a running job is its time limit's end: not an end.
    assert (gpu.start_time, gpu.end_time) == (1796204569, None)
    assert gpu.is_running
    pend = jobs[6]
    assert (pend.state, pend.node, pend.gpus, pend.reason, pend.elapsed, pend.start_time, pend.end_time) == (
        "PENDING",
        None,
        1,
        "Resources",
        None,
        None,  # %S of a pending job is Slurm's estimate, not a start
        None,
    )
    assert pend.is_pending
    assert jobs[7].time_limit == 60 and jobs[7].state == "RUNNING"  # backfilled: its limit ends first
    assert jobs[8].time_limit == 300 and jobs[8].reason == "Priority"
    # A name holding the separator and spaces survives intact.
    assert jobs[8].name == "cap-weird|name with spaces"


def test_squeue_prefix_filter() -> None:
    text = read("squeue_running_pending.txt")
    assert [j.job_id for j in parse_squeue(text, "cap-run")] == [1, 2, 3, 4]
    assert parse_squeue(text, "other-") == []


def test_squeue_completing_cancelled_timeout() -> None:
    completing = {j.job_id: j for j in parse_squeue(read("squeue_completing.txt"), "cap-")}
    assert completing[1].state == "COMPLETING" and completing[1].is_running
    cancelled = {j.job_id: j for j in parse_squeue(read("squeue_cancelled.txt"), "cap-")}
    assert cancelled[1].state == "CANCELLED" and cancelled[1].is_finished and cancelled[1].node == "vm"
    assert (cancelled[1].start_time, cancelled[1].end_time) == (1796204569, 1796204577)
    assert completing[1].end_time is None  # still completing: not ended yet
    to_cg = {j.job_id: j for j in parse_squeue(read("squeue_timeout_completing.txt"), "cap-timeout")}
    assert to_cg[7].state == "COMPLETING" and to_cg[7].reason == "TimeLimit"
    timeout = {j.job_id: j for j in parse_squeue(read("squeue_timeout.txt"), "cap-timeout")}
    assert timeout[7].state == "TIMEOUT" and timeout[7].is_finished
    assert timeout[7].elapsed == 88 and timeout[7].time_limit == 60  # ran past its limit, as Slurm does
    assert timeout[7].end_time is not None and timeout[7].start_time is not None
    assert timeout[7].end_time - timeout[7].start_time == 88


@pytest.mark.parametrize(
    "garbage",
    [
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
        "1|RUNNING|vm\n",
        "x|RUNNING|vm|vm|0:01|5:00|N/A|None|1796204569|1796204869|cap-a\n",
        "JOBID PARTITION NAME\n",
    ],
)
def test_squeue_garbage_raises_not_empty(garbage: str) -> None:
    good = "1|RUNNING|vm|vm|0:01|5:00|N/A|None|1796204569|1796204869|cap-a\n"
    with pytest.raises(ValueError):
        parse_squeue(good + garbage, "cap-")


def test_squeue_bad_fields_of_our_job_raise() -> None:
    with pytest.raises(ValueError):
        parse_squeue("1|WEIRD|vm|vm|0:01|5:00|N/A|None|1796204569|1796204869|cap-a\n", "cap-")
    with pytest.raises(DurationError):
        parse_squeue("1|RUNNING|vm|vm|later|5:00|N/A|None|1796204569|1796204869|cap-a\n", "cap-")
    with pytest.raises(ValueError):
        parse_squeue("1|RUNNING|vm|vm|0:01|5:00|N/A|None|soon|1796204869|cap-a\n", "cap-")


def test_squeue_controller_down_capture() -> None:
    # squeue with the controller unreachable: rc=1 after ~9 s, nothing on stdout, this on stderr.
    assert read("squeue_controller_down.stdout") == ""
    assert "Unable to contact slurm controller" in read("squeue_controller_down.stderr")


def test_scontrol_running_gpu() -> None:
    job = parse_scontrol_job(read("scontrol_running_gpu.txt"), 5)
    assert (job.name, job.state, job.node, job.gpus, job.elapsed, job.time_limit, job.reason) == (
        "cap-gpu4",
        "RUNNING",
        "vm",
        4,
        10,
        300,
        None,
    )


def test_scontrol_pending_cancelled_timeout() -> None:
    pend = parse_scontrol_job(read("scontrol_pending.txt"), 6)
    assert (pend.state, pend.node, pend.gpus, pend.reason) == ("PENDING", None, 1, "Resources")
    cancelled = parse_scontrol_job(read("scontrol_cancelled.txt"), 1)
    assert cancelled.state == "CANCELLED" and cancelled.is_finished and cancelled.gpus == 0
    timeout = parse_scontrol_job(read("scontrol_timeout.txt"), 7)
    assert (timeout.state, timeout.reason, timeout.elapsed, timeout.time_limit) == (
        "TIMEOUT",
        "TimeLimit",
        88,
        60,
    )
    # StartTime/EndTime as scontrol prints them without SLURM_TIME_FORMAT (local time).
    assert timeout.end_time is not None and timeout.start_time is not None
    assert timeout.end_time - timeout.start_time == 88
    assert (
        pend.start_time is None and parse_scontrol_job(read("scontrol_running_gpu.txt"), 5).end_time is None
    )


def test_scontrol_weird_name_and_fields() -> None:
    text = read("scontrol_weird_name.txt")
    assert parse_scontrol_job(text, 8).name == "cap-weird|name with spaces"
    fields = parse_scontrol_fields(text.strip())
    assert fields["Command"] == "/tmp/capwork/sleep.sbatch 9"
    assert fields["AllocNode:Sid"] == "localhost:3728"
    assert fields["Power"] == ""


def test_scontrol_wrong_id_or_garbage_raises() -> None:
    with pytest.raises(ValueError):
        parse_scontrol_job(read("scontrol_running_gpu.txt"), 6)
    with pytest.raises(ValueError):
        parse_scontrol_job("JobId=5 JobName=x\n", 5)  # no JobState


def test_scontrol_invalid_id_capture() -> None:
    assert read("scontrol_invalid.stdout") == ""
    assert read("scontrol_invalid.stderr").strip() == "slurm_load_jobs error: Invalid job id specified"
