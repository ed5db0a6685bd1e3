"""RealSlurm against stub Slurm binaries (SAIA_SLURM_BIN): argv, environment,
timeouts and error handling, without a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saia_ctl.settings import Settings
from saia_ctl.slurm import RealSlurm, SlurmError

DATA = Path(__file__).parent / "data" / "slurm"

STUB = """#!/bin/bash
# Records argv (NUL-separated) and environment, then answers as configured.
n=$(basename "$0")
printf '%s\\0' "$@" > "$STUB_DIR/$n.argv"
env -0 > "$STUB_DIR/$n.env"
[[ -f $STUB_DIR/$n.sleep ]] && sleep "$(cat "$STUB_DIR/$n.sleep")"
[[ -f $STUB_DIR/$n.stdout ]] && cat "$STUB_DIR/$n.stdout"
[[ -f $STUB_DIR/$n.stderr ]] && cat "$STUB_DIR/$n.stderr" >&2
exit "$(cat "$STUB_DIR/$n.rc" 2>/dev/null || echo 0)"
"""


class Stubs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def answer(self, name: str, stdout: str = "", stderr: str = "", rc: int = 0, sleep: float = 0) -> None:
        (self.path / f"{name}.stdout").write_text(stdout)
        (self.path / f"{name}.stderr").write_text(stderr)
        (self.path / f"{name}.rc").write_text(str(rc))
        if sleep:
            (self.path / f"{name}.sleep").write_text(str(sleep))

    def argv(self, name: str) -> list[str]:
        return (self.path / f"{name}.argv").read_text().split("\0")[:-1]

    def env(self, name: str) -> dict[str, str]:
        items = (self.path / f"{name}.env").read_text().split("\0")
        return dict(i.split("=", 1) for i in items if "=" in i)


@pytest.fixture
def stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stubs:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("sbatch", "squeue", "scancel", "scontrol"):
        p = bindir / name
        p.write_text(STUB)
        p.chmod(0o755)
    monkeypatch.setenv("STUB_DIR", str(bindir))
    monkeypatch.setenv("SLURM_CONF", "/from/the/caller.conf")
    return Stubs(bindir)


@pytest.fixture
def slurm(stubs: Stubs, tmp_path: Path) -> RealSlurm:
    env = {
        "SAIA_SLURM_BIN": str(stubs.path),
        "SAIA_SLURM_CONF": "/etc/site/slurm.conf",
        "SAIA_SLURM_TIMEOUT": "1",
    }
    return RealSlurm(Settings(home=str(tmp_path), environ=env))


def test_submit_argv_env_and_id(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("sbatch", "4242\n")
    job_id = slurm.submit(
        "/srv/sbatch/test-llm.sbatch",
        name="saia_7_svc",
        port=61005,
        env={"SAIA_API_KEY": "top-secret"},
        workdir="/state/jobs",
        output="/state/jobs/%j.out",
        extra_args=["--gres=gpu:4", "--time=10:00"],
    )
    assert job_id == 4242
    assert stubs.argv("sbatch") == [
        "--parsable",
        "--job-name=saia_7_svc",
        "--chdir=/state/jobs",
        "--output=/state/jobs/%j.out",
        "--gres=gpu:4",
        "--time=10:00",
        "/srv/sbatch/test-llm.sbatch",
        "61005",
    ]
    env = stubs.env("sbatch")
    assert env["SAIA_API_KEY"] == "top-secret" and env["SAIA_PORT"] == "61005"
    assert env["SLURM_CONF"] == "/etc/site/slurm.conf"  # the setting wins over the caller's
    assert not any("top-secret" in a for a in stubs.argv("sbatch"))
    assert "SAIA_API_KEY" not in os.environ  # the caller's environment is untouched


def test_submit_cluster_suffix(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("sbatch", "99;saiadev\n")
    assert slurm.submit("s", name="n", port=1, env={}, workdir="/", output="o") == 99


def test_submit_failure_keeps_stderr(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer(
        "sbatch",
        stderr="sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n",
        rc=1,
    )
    with pytest.raises(SlurmError) as e:
        slurm.submit("s", name="n", port=1, env={}, workdir="/", output="o")
    assert str(e.value) == (
        "sbatch failed (rc=1): sbatch: error: Batch job submission failed: "
        "Unable to contact slurm controller (connect failure)"
    )


def test_submit_unparsable_output(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("sbatch", "Submitted batch job 5\n")
    with pytest.raises(SlurmError, match="no job id"):
        slurm.submit("s", name="n", port=1, env={}, workdir="/", output="o")


def test_queue_is_one_squeue_call_with_all_states(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("squeue", (DATA / "squeue_running_pending.txt").read_text())
    jobs = slurm.queue("cap-run")
    assert [j.job_id for j in jobs] == [1, 2, 3, 4]
    argv = stubs.argv("squeue")
    assert argv[:3] == ["-h", "-t", "all"] and argv[3] == "-o" and argv[4].endswith("%j")
    assert len(argv) == 5


def test_queue_controller_down_raises(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer(
        "squeue",
        stdout=(DATA / "squeue_controller_down.stdout").read_text(),
        stderr=(DATA / "squeue_controller_down.stderr").read_text(),
        rc=1,
    )
    with pytest.raises(SlurmError, match=r"squeue failed \(rc=1\): slurm_load_jobs error: Unable to contact"):
        slurm.queue("cap-")


def test_queue_garbage_with_rc0_raises(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("squeue", "something unexpected\n")
    with pytest.raises(SlurmError, match="not a squeue line"):
        slurm.queue("cap-")


def test_queue_empty_is_no_jobs(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("squeue", "")
    assert slurm.queue("cap-") == []


def test_timeout_on_every_call(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("squeue", "", sleep=5)
    with pytest.raises(SlurmError, match="squeue timed out after 1 s"):
        slurm.queue("x")


def test_cancel(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("scancel")
    slurm.cancel(17)
    assert stubs.argv("scancel") == ["17"]
    stubs.answer(
        "scancel",
        stderr="scancel: error: Kill job error on job id 17: Unable to contact slurm controller\n",
        rc=8,
    )
    with pytest.raises(SlurmError, match=r"rc=8"):
        slurm.cancel(17)


def test_job_info(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("scontrol", (DATA / "scontrol_running_gpu.txt").read_text())
    job = slurm.job_info(5)
    assert job is not None and job.gpus == 4 and job.state == "RUNNING"
    assert stubs.argv("scontrol") == ["show", "job", "-o", "5"]


def test_job_info_unknown_is_none(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer("scontrol", stderr=(DATA / "scontrol_invalid.stderr").read_text(), rc=1)
    assert slurm.job_info(9999) is None


def test_job_info_other_failure_raises(slurm: RealSlurm, stubs: Stubs) -> None:
    stubs.answer(
        "scontrol",
        stderr="slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
        rc=1,
    )
    with pytest.raises(SlurmError, match="scontrol failed"):
        slurm.job_info(5)


def test_missing_binary(tmp_path: Path) -> None:
    s = RealSlurm(Settings(home=str(tmp_path), environ={"SAIA_SLURM_BIN": str(tmp_path / "nowhere")}))
    with pytest.raises(SlurmError, match="squeue could not be run"):
        s.queue("x")


def test_without_settings_slurm_conf_the_callers_is_kept(stubs: Stubs, tmp_path: Path) -> None:
    s = RealSlurm(Settings(home=str(tmp_path), environ={"SAIA_SLURM_BIN": str(stubs.path)}))
    stubs.answer("squeue", "")
    s.queue("x")
    assert stubs.env("squeue")["SLURM_CONF"] == "/from/the/caller.conf"
