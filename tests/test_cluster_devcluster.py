"""scripts/dev-cluster.sh itself: a private cluster on free ports, next to the shared one.

up (cold, then again: idempotent), status, GPUs and CPUs as configured, a job
that is running at `down` is cancelled, and `down` leaves no daemon behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, start_cluster
from tests.support.paths import DEV_CLUSTER

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def pid_running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.fixture
def private(cluster: Cluster) -> Iterator[tuple[Cluster, float]]:
    directory = Path(tempfile.mkdtemp(prefix="saia-dc-"))
    t0 = time.monotonic()
    try:
        c = start_cluster(directory)
        yield c, time.monotonic() - t0
    finally:
        subprocess.run([str(DEV_CLUSTER), "down", str(directory)], capture_output=True, timeout=180)
        shutil.rmtree(directory, ignore_errors=True)


def slurm(c: Cluster, *argv: str) -> str:
    env = {**os.environ, "SLURM_CONF": c.slurm_conf}
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def test_up_status_down(private: tuple[Cluster, float], cluster: Cluster) -> None:
    c, took = private
    assert c.owned and c.node == cluster.node
    print(f"cold up: {took:.2f} s")
    # 16 CPUs declared on a smaller machine (config_overrides) and 4 GPUs, node idle.
    assert slurm(c, "sinfo", "-h", "-n", c.node, "-o", "%t %c %G").split() == ["idle", "16", "gpu:4"]
    conf = Path(c.slurm_conf).read_text()
    assert "SlurmdParameters=config_overrides" in conf and "GresTypes=gpu" in conf
    # Slurm accounting when slurmdbd and MariaDB are installed, none (as before) otherwise.
    accounting = (c.dir / "accounting").read_text().strip()
    assert accounting == ("slurmdbd" if shutil.which("slurmdbd") and shutil.which("mariadbd") else "none")
    assert f"export DEV_ACCOUNTING={accounting}\n" in (c.dir / "env.sh").read_text()
    if accounting == "slurmdbd":
        assert "AccountingStorageType=accounting_storage/slurmdbd" in conf
        assert "AccountingStorageTRES=gres/gpu" in conf
        assocs = slurm(c, "sacctmgr", "-n", "-P", "show", "assoc", "format=account,user").split()
        assert {"saia_a|root", "saia_b|root"} <= set(assocs), assocs
    for i in range(4):
        assert (c.dir / f"fakegpu{i}").is_char_device()
    # env.sh carries everything a client needs.
    assert set(c.env) >= {"SLURM_CONF", "NODE", "SSH_PORT", "SSH_USER", "SSH_KEY", "SSH_TARGET", "SSH_OPTS"}
    ssh = subprocess.run(
        ["bash", "-c", f'source {c.dir}/env.sh && ssh $SSH_OPTS "$SSH_TARGET" "hello there"'],
        capture_output=True,
        timeout=30,
    )
    assert ssh.stdout == b"SSH_ORIGINAL_COMMAND=[hello there]\n", ssh.stderr

    pids = {
        p: int((c.dir / p).read_text())
        for p in ("slurmctld.pid", "slurmd.pid", "munge/munged.pid", "ssh/sshd.pid")
    }
    status = subprocess.run(
        [str(DEV_CLUSTER), "status", str(c.dir)], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and "gres=gpu:4" in status.stdout

    # A second up restarts nothing.
    env = {**os.environ, "SLURMCTLD_PORT": "1", "SSH_PORT": "1"}  # ignored: the conf exists
    again = subprocess.run(
        [str(DEV_CLUSTER), "up", str(c.dir)], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert {p: int((c.dir / p).read_text()) for p in pids} == pids

    # More than 2 jobs at once on this 2-core machine, one with all 4 GPUs.
    marker = f"sleep 300.{os.getpid()}"  # unique command line, to find leftovers
    ids = [
        slurm(
            c, "sbatch", "--parsable", f"--chdir={c.dir}", "--output=/dev/null", *extra, "--wrap", marker
        ).strip()
        for extra in ([], [], [], ["--gres=gpu:4"])
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = slurm(c, "squeue", "-h", "-o", "%A %T %b").split("\n")
        if sum(" RUNNING " in s for s in states) == 4:
            break
        time.sleep(0.3)
    assert sum(" RUNNING " in s for s in states) == 4, states
    assert any(s.endswith("gres:gpu:4") for s in states)
    assert len(ids) == 4

    # down cancels the jobs first (slurmstepd would outlive slurmd), then stops every daemon.
    t0 = time.monotonic()
    down = subprocess.run([str(DEV_CLUSTER), "down", str(c.dir)], capture_output=True, text=True, timeout=180)
    print(f"down with 4 running jobs: {time.monotonic() - t0:.2f} s")
    assert down.returncode == 0, down.stderr
    assert not any(pid_running(pid) for pid in pids.values())
    assert not (c.dir / "env.sh").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert marker not in ps.splitlines()
    status = subprocess.run(
        [str(DEV_CLUSTER), "status", str(c.dir)], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 3
    # down is idempotent.
    assert (
        subprocess.run([str(DEV_CLUSTER), "down", str(c.dir)], capture_output=True, timeout=60).returncode
        == 0
    )
    # The shared cluster is untouched.
    assert subprocess.run([str(DEV_CLUSTER), "status", str(cluster.dir)], capture_output=True).returncode == 0


def test_usage_errors() -> None:
    for argv in ([], ["up"], ["bogus", "/tmp/x"]):
        r = subprocess.run([str(DEV_CLUSTER), *argv], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "usage" in r.stderr


def _up(directory: Path, **ports: str) -> subprocess.CompletedProcess[str]:
    # These tests are about slurmctld's and sshd's ports: no slurmdbd (its own test is above).
    env = {**os.environ, "DEV_SLURMDBD": "0", **ports}
    return subprocess.run(
        [str(DEV_CLUSTER), "up", str(directory)], env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture
def folder() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="saia-dc-"))
    try:
        yield directory
    finally:
        subprocess.run([str(DEV_CLUSTER), "down", str(directory)], capture_output=True, timeout=180)
        shutil.rmtree(directory, ignore_errors=True)


def test_taken_ports_are_moved_out_of_the_ephemeral_range(folder: Path, cluster: Cluster) -> None:
    """slurmctld's and sshd's ports are taken before they start: both move, and the cluster works."""
    taken = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("0.0.0.0", 0))  # a port from the ephemeral range, as a free-port helper hands out
        s.listen(1)
        taken.append(s)
    ctld, ssh_port = (int(s.getsockname()[1]) for s in taken)
    try:
        r = _up(folder, SLURMCTLD_PORT=str(ctld), SLURMD_PORT="auto", SSH_PORT=str(ssh_port))
    finally:
        for s in taken:
            s.close()
    assert r.returncode == 0, r.stderr
    assert f"Slurm's ports {ctld}/" in r.stderr and f"sshd's port {ssh_port} was taken" in r.stderr
    # DEV_SLURMDBD=0 (set by _up): no Slurm accounting, and `up` says so.
    assert "dev-cluster: Slurm accounting off (DEV_SLURMDBD=0)" in r.stderr
    assert (folder / "accounting").read_text() == "none\n"
    assert "AccountingStorageType=accounting_storage/none\n" in (folder / "slurm.conf").read_text()
    ports = dict(line.split("=", 1) for line in (folder / "ports").read_text().split())
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for name in ("CTLD_PORT", "SLURMD_PORT", "SSH_PORT"):
        assert not low <= int(ports[name]) <= high, ports
    assert int(ports["CTLD_PORT"]) != ctld and int(ports["SSH_PORT"]) != ssh_port
    assert f"SlurmctldPort={ports['CTLD_PORT']}\n" in (folder / "slurm.conf").read_text()
    ssh = subprocess.run(
        ["bash", "-c", f'source {folder}/env.sh && ssh $SSH_OPTS "$SSH_TARGET" hello'],
        capture_output=True,
        timeout=30,
    )
    assert ssh.stdout == b"SSH_ORIGINAL_COMMAND=[hello]\n", ssh.stderr


def test_a_failed_start_shows_the_daemons_log(folder: Path, cluster: Cluster) -> None:
    """sshd refuses the user: the message carries sshd.log's last lines (the folder may be gone next)."""
    env = {"SLURMCTLD_PORT": "auto", "SLURMD_PORT": "auto", "SSH_PORT": "auto"}
    r = _up(folder, **env, SSH_USER="daemon", DEV_WAIT="3")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("dev-cluster: sshd did not answer on port"), r.stderr
    assert f"dev-cluster: last lines of {folder}/ssh/sshd.log:" in lines
    assert any(line.startswith("  | ") and "daemon" in line for line in lines[-5:]), r.stderr
