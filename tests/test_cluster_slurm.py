"""RealSlurm against the real dev cluster, with the real test backend (sbatch/test-llm.sbatch)."""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path

import pytest

from saia_ctl.settings import Settings
from saia_ctl.slurm import RealSlurm, SlurmError, SlurmJob
from tests.support.cluster import Cluster

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "sbatch" / "test-llm.sbatch")

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def wait_job(slurm: RealSlurm, prefix: str, job_id: int, want: str, timeout: float) -> SlurmJob:
    """Poll queue() until the job reaches ``want`` (bounded)."""
    deadline = time.monotonic() + timeout
    last: SlurmJob | None = None
    while time.monotonic() < deadline:
        jobs = {j.job_id: j for j in slurm.queue(prefix)}
        last = jobs.get(job_id)
        if last is not None and last.state == want:
            return last
        time.sleep(0.3)
    holders = [j for j in slurm.queue("") if j.gpus and j.is_running]
    raise AssertionError(f"job {job_id} not {want} after {timeout} s: {last}; GPUs held by: {holders}")


def get(host: str, port: int, path: str, key: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def wait_http(host: str, port: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if get(host, port, "/")[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no HTTP answer on {host}:{port} after {timeout} s")


def test_submit_run_answer_cancel(cluster: Cluster, settings: Settings) -> None:
    slurm = RealSlurm(settings)
    prefix = settings.job_prefix
    port = settings.port_range[0]
    secret = "real-cluster-secret-" + os.urandom(8).hex()
    jobs_dir = Path(settings.jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}_1_test-llm"
    t0 = time.monotonic()
    job_id = slurm.submit(
        SCRIPT,
        name=name,
        port=port,
        env={"SAIA_API_KEY": secret, "TEST_LLM_TOKEN_DELAY": "0"},
        workdir=str(jobs_dir),
        output=str(jobs_dir / "%j.out"),
        extra_args=["--gres=gpu:4", "--time=5:00"],
    )
    try:
        # The secret never appears on the job's command line.
        info = slurm.job_info(job_id)
        assert info is not None and info.name == name and info.gpus == 4
        # Up to 90 s: another test may hold the node's GPUs for a while.
        job = wait_job(slurm, prefix, job_id, "RUNNING", timeout=90)
        to_running = time.monotonic() - t0
        assert (job.name, job.node, job.gpus) == (name, cluster.node, 4)
        assert job.time_limit == 300 and job.elapsed is not None
        assert job.reason is None
        wait_http(cluster.node, port, timeout=30)
        to_http = time.monotonic() - t0
        status, body = get(cluster.node, port, "/v1/models", key=secret)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "test-llm"
        assert get(cluster.node, port, "/v1/models")[0] == 401
        assert get(cluster.node, port, "/v1/models", key="wrong")[0] == 401
        assert get(cluster.node, port, "/health")[0] == 200
        # The job saw 4 GPUs and its port in the environment.
        out = (jobs_dir / f"{job_id}.out").read_text()
        assert f"port {port} GPUs=0,1,2,3" in out
        info = slurm.job_info(job_id)
        assert info is not None and info.state == "RUNNING" and info.gpus == 4 and info.node == cluster.node
        print(f"sbatch->RUNNING {to_running:.2f} s, sbatch->HTTP 200 {to_http:.2f} s")
    finally:
        slurm.cancel(job_id)
    # Gone from the live queue (CANCELLED while Slurm still shows it, or forgotten).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = {j.job_id: j for j in slurm.queue(prefix)}
        if job_id not in jobs or jobs[job_id].state == "CANCELLED":
            break
        time.sleep(0.2)
    assert job_id not in jobs or jobs[job_id].state == "CANCELLED", jobs.get(job_id)
    info = slurm.job_info(job_id)
    assert info is None or info.state == "CANCELLED"
    with pytest.raises(OSError):
        get(cluster.node, port, "/")
    # Cancelling again (or an unknown id) is not an error.
    slurm.cancel(job_id)
    slurm.cancel(99_999_999)


def test_job_info_unknown_is_none(cluster: Cluster, settings: Settings) -> None:
    assert RealSlurm(settings).job_info(99_999_999) is None


def test_queue_of_unused_prefix_is_empty_not_error(cluster: Cluster, settings: Settings) -> None:
    assert RealSlurm(settings).queue(settings.job_prefix + "-none") == []


def test_submit_error_is_reported_with_stderr(cluster: Cluster, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(
        SlurmError,
        match=r"sbatch failed \(rc=1\): sbatch: error: Batch job submission failed: Requested node configuration",
    ):
        RealSlurm(settings).submit(
            SCRIPT,
            name=f"{settings.job_prefix}_2_x",
            port=settings.port_range[0],
            env={},
            workdir=str(tmp_path),
            output=str(tmp_path / "%j.out"),
            extra_args=["--gres=gpu:99"],
        )


def test_controller_unreachable_raises_never_empty(cluster: Cluster, tmp_path: Path) -> None:
    # A copy of slurm.conf that points at a port nobody listens on: the controller is "down"
    # for this client only (the shared controller keeps running).
    conf = Path(cluster.slurm_conf).read_text()
    lines = ["SlurmctldPort=1" if line.startswith("SlurmctldPort=") else line for line in conf.splitlines()]
    down = tmp_path / "slurm.conf"
    down.write_text("\n".join(lines) + "\n")
    home = tmp_path / "h"
    home.mkdir()
    s = Settings(home=str(home), environ={"SAIA_SLURM_CONF": str(down), "SAIA_SLURM_TIMEOUT": "20"})
    with pytest.raises(SlurmError, match="Unable to contact slurm controller"):  # not our timeout
        RealSlurm(s).queue("anything")
