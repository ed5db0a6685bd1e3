"""sacct's parsers, on output captured from the dev cluster's slurmdbd (slurm-wlm 22.05.8,
tests/data/slurm/sacct-*: jobs that completed, were cancelled, timed out, failed with
exit 3 on 2 GPUs, were killed above --mem, and lost their node), and RealSlurm.accounting
on a stand-in sacct."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from saia_ctl.sacct import (
    FIELDS,
    SacctError,
    accounting_disabled,
    parse_sacct,
    parse_time,
    sacct_argv,
    tres_gpus,
)
from saia_ctl.settings import Settings
from saia_ctl.slurm import RealSlurm, SlurmAccounting, SlurmError

DATA = Path(__file__).parent / "data" / "slurm"


def test_captured_end_states() -> None:
    recs = parse_sacct((DATA / "sacct-end-states.txt").read_text())
    assert sorted(recs) == [1, 2, 3, 5, 7, 9, 10]
    got = {i: (r.state, r.exit_code, r.elapsed, r.gpus, r.account) for i, r in recs.items()}
    assert got == {
        1: ("COMPLETED", "0:0", 2, 0, "saia_a"),
        2: ("CANCELLED", "0:0", 3, 0, "saia_a"),  # printed "CANCELLED by 0"
        3: ("TIMEOUT", "0:15", 85, 0, "saia_a"),
        5: ("FAILED", "3:0", 1, 2, "saia_b"),
        7: ("FAILED", "0:9", 2, 0, "saia_a"),  # above --mem: killed by OverMemoryKill
        9: ("NODE_FAIL", "0:0", 2, 1, "saia_b"),
        10: ("TIMEOUT", "0:0", 82, 0, "saia_a"),
    }
    one = recs[1]
    assert (one.start, one.end, one.name, one.partition, one.qos) == (
        1796192526.0,
        1796192528.0,
        "t-ok",
        "debug",
        "normal",
    )
    assert all(r.is_final for r in recs.values())
    assert recs[5].gpu_seconds == 2


def test_captured_iso_times_are_local_time() -> None:
    recs = parse_sacct((DATA / "sacct-iso-times.txt").read_text())
    # Captured on a UTC machine: the same instants as the epoch capture.
    expected = datetime(2026, 12, 2, 6, 22, 6).timestamp()
    assert recs[1].start == expected and recs[3].elapsed == 85


def test_running_job_is_not_final() -> None:
    line = "10|RUNNING|0:0|1796192656|Unknown|80|billing=1,cpu=1,node=1|saia_a|debug|normal|t\n"
    [rec] = parse_sacct(line).values()
    assert rec.end is None and not rec.is_final
    pending = "11|PENDING|0:0|Unknown|Unknown|0||saia_a|debug|normal|t\n"
    assert not parse_sacct(pending)[11].is_final


def test_name_with_the_delimiter_parses() -> None:
    line = "4|OUT_OF_MEMORY|0:125|1|2|1|gres/gpu=1|a|p|q|odd|name\n"
    rec = parse_sacct(line)[4]
    assert rec.name == "odd|name" and rec.state == "OUT_OF_MEMORY" and rec.gpus == 1


@pytest.mark.parametrize(
    ("tres", "gpus"),
    [
        ("", 0),
        ("billing=1,cpu=1,node=1", 0),
        ("billing=1,cpu=1,gres/gpu=2,node=1", 2),
        ("cpu=1,gres/gpu:a100=2,gres/gpu=2", 2),
        ("cpu=1,gres/gpu:a100=1,gres/gpu:v100=2", 3),
    ],
)
def test_tres_gpus(tres: str, gpus: int) -> None:
    assert tres_gpus(tres) == gpus


@pytest.mark.parametrize(
    "text",
    [
        "1|COMPLETED|0:0|1|2|2\n",  # fewer fields
        "x|COMPLETED|0:0|1|2|2|cpu=1|a|p|q|n\n",  # job id
        "1_2|COMPLETED|0:0|1|2|2|cpu=1|a|p|q|n\n",  # an array task id
        "1|completed|0:0|1|2|2|cpu=1|a|p|q|n\n",  # state
        "1|COMPLETED|zero|1|2|2|cpu=1|a|p|q|n\n",  # exit code
        "1|COMPLETED|0:0|yesterday|2|2|cpu=1|a|p|q|n\n",  # time
        "1|COMPLETED|0:0|1|2|00:00:02|cpu=1|a|p|q|n\n",  # Elapsed, not ElapsedRaw
        "1|COMPLETED|0:0|1|2|2|gres/gpu=two|a|p|q|n\n",  # GPU count
    ],
)
def test_unexpected_output_is_an_error(text: str) -> None:
    with pytest.raises(SacctError):
        parse_sacct(text)


def test_times() -> None:
    assert parse_time("Unknown") is None and parse_time("None") is None and parse_time("") is None
    assert parse_time("1796192526") == 1796192526.0


def test_argv_is_one_call_for_all_ids() -> None:
    argv = sacct_argv("sacct", [9, 3, 9, 5])
    assert argv == ["sacct", "-X", "-P", "-n", "--noconvert", "-j", "3,5,9", "-o", ",".join(FIELDS)]


def test_disabled_accounting_is_recognised() -> None:
    assert accounting_disabled((DATA / "sacct-disabled.stderr").read_text())
    assert not accounting_disabled("sacct: error: slurm_persist_conn_open_without_init: failed")


def _stub(tmp_path: Path, body: str) -> RealSlurm:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sacct"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    env = {"SAIA_SLURM_BIN": str(bin_dir), "SAIA_SLURM_TIMEOUT": "1"}
    return RealSlurm(Settings(home=str(tmp_path), environ=env))


def test_real_client_reads_sacct(tmp_path: Path) -> None:
    capture = DATA / "sacct-end-states.txt"
    slurm = _stub(tmp_path, f'echo "$SLURM_TIME_FORMAT $*" > {tmp_path}/argv\ncat {capture}\n')
    assert isinstance(slurm, SlurmAccounting)
    recs = slurm.accounting([1, 2])
    assert recs[2].state == "CANCELLED"
    assert (tmp_path / "argv").read_text().startswith("%s -X -P -n --noconvert -j 1,2 -o JobIDRaw,")
    assert slurm.accounting([]) == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("echo 'Slurm accounting storage is disabled' >&2; exit 1\n", "accounting storage is disabled"),
        ("echo 'JobID|State'\n", "sacct: expected 11 fields"),
        ("sleep 5\n", "timed out"),
    ],
)
def test_real_client_errors_are_slurm_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SlurmError, match=message):
        _stub(tmp_path, body).accounting([1])
