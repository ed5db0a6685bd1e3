"""The real single-node cluster (munge + Slurm with 4 stand-in GPUs + sshd) for tests.

``cluster`` is session-scoped. If ``SAIA_TEST_CLUSTER`` names a directory where
``scripts/dev-cluster.sh`` has a cluster running, it is reused and never
stopped; otherwise a fresh one is started in a temp dir (on free ports) and
stopped at the end of the session. If it cannot start, tests that need it ERROR
with the reason: they are never skipped silently.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.paths import DEV_CLUSTER

_ENV_KEYS = ("SLURM_CONF", "NODE", "SSH_PORT", "SSH_USER", "SSH_KEY", "SSH_TARGET", "SSH_OPTS")

__all__ = ["Cluster", "cluster", "cluster_at", "cluster_running", "log_tails", "start_cluster"]


@dataclass
class Cluster:
    """A running dev cluster: where it lives and how to reach its Slurm and sshd."""

    dir: Path
    node: str
    env: dict[str, str]  # SLURM_CONF, NODE, SSH_* as in DIR/env.sh
    ssh_port: int
    ssh_user: str
    ssh_key: Path  # the default key, whose forced command is the echo stub DIR/ssh/forced.sh
    owned: bool = False  # started by this session (and stopped at its end)
    _keys: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def slurm_conf(self) -> str:
        return self.env["SLURM_CONF"]

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "ssh" / "authorized_keys"

    def ssh_argv(self, key: Path | str, *extra_ssh_options: str) -> list[str]:
        """ssh argv up to and including the target; append the command as ONE argument."""
        return [
            "ssh",
            "-p",
            str(self.ssh_port),
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.dir / 'ssh' / 'known_hosts'}",
            "-o",
            "LogLevel=ERROR",
            *extra_ssh_options,
            f"{self.ssh_user}@127.0.0.1",
        ]

    def add_forced_key(self, command: str) -> Path:
        """A new client key whose authorized_keys line is ``restrict,command="<command>"``.

        Returns the private key's path. sshd unescapes only ``\\"`` inside the
        option, so a ``"`` is written as ``\\"`` and every other backslash as is
        (a trailing backslash or a newline cannot be expressed and is refused).
        """
        if "\n" in command or "\r" in command or command.endswith("\\"):
            raise ValueError(f"a forced command cannot end in a backslash or span lines: {command!r}")
        keydir = self.dir / "ssh" / "testkeys"
        keydir.mkdir(parents=True, exist_ok=True)
        key = keydir / f"key-{uuid.uuid4().hex[:12]}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
            check=True,
            capture_output=True,
        )
        escaped = command.replace('"', '\\"')
        line = f'restrict,command="{escaped}" {key.with_suffix(".pub").read_text().strip()}'
        self._edit_authorized_keys(lambda lines: [*lines, line])
        self._keys.append((key, line))
        return key

    def remove_test_keys(self) -> None:
        """Take this session's keys out of authorized_keys and delete them."""
        mine = {line for _, line in self._keys}
        if mine:
            self._edit_authorized_keys(lambda lines: [x for x in lines if x not in mine])
        for key, _ in self._keys:
            for p in (key, key.with_suffix(".pub")):
                p.unlink(missing_ok=True)
        self._keys.clear()

    def _edit_authorized_keys(self, change: Callable[[list[str]], list[str]]) -> None:
        # Several pytest processes may share one cluster: edit under an exclusive lock,
        # and replace the file atomically so sshd never reads half of it.
        lock = self.dir / "ssh" / "authorized_keys.lock"
        with open(lock, "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            old = self.authorized_keys.read_text().splitlines() if self.authorized_keys.exists() else []
            new = change(old)
            tmp = self.authorized_keys.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text("".join(f"{x}\n" for x in new))
            tmp.chmod(0o600)
            tmp.replace(self.authorized_keys)


def _read_env(directory: Path) -> dict[str, str]:
    """The variables DIR/env.sh exports (sourced by bash: it is a shell file)."""
    script = 'source "$1" && for k in "${@:2}"; do printf "%s=%s\\0" "$k" "${!k-}"; done'
    out = subprocess.run(
        ["bash", "-c", script, "bash", str(directory / "env.sh"), *_ENV_KEYS],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    env = dict(item.split("=", 1) for item in out.split("\0") if item)
    missing = [k for k in _ENV_KEYS if not env.get(k)]
    if missing:
        raise RuntimeError(f"{directory}/env.sh lacks {', '.join(missing)}")
    return env


def cluster_running(directory: Path) -> bool:
    """Whether ``dev-cluster.sh status DIR`` finds the cluster of DIR up."""
    if not (directory / "env.sh").is_file():
        return False
    proc = subprocess.run(
        [str(DEV_CLUSTER), "status", str(directory)], capture_output=True, text=True, timeout=60
    )
    return proc.returncode == 0


def cluster_at(directory: Path, owned: bool) -> Cluster:
    """The cluster that ``dev-cluster.sh`` runs in DIR (read from DIR/env.sh)."""
    env = _read_env(directory)
    return Cluster(
        dir=directory,
        node=env["NODE"],
        env=env,
        ssh_port=int(env["SSH_PORT"]),
        ssh_user=env["SSH_USER"],
        ssh_key=Path(env["SSH_KEY"]),
        owned=owned,
    )


def log_tails(directory: Path, message: str = "", lines: int = 12) -> str:
    """The last ``lines`` lines of the daemon logs of a cluster folder, to put in an error.

    The logs the script's ``message`` names (``(see DIR/ssh/sshd.log)``) come
    first; without one, every ``*.log`` of the folder, newest first. Read them
    before the folder is deleted: the error must carry them.
    """
    named = [Path(p) for p in re.findall(r"\(see (\S+?)\)", message)]
    logs = [p for p in named if p.is_file()]
    if not logs and directory.is_dir():
        found = [p for p in directory.rglob("*.log") if p.is_file()]
        logs = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    parts = []
    for log in logs:
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as e:
            tail = [f"(unreadable: {e})"]
        rel = log.relative_to(directory) if log.is_relative_to(directory) else log
        parts.append(f"--- {rel} (last {len(tail)} lines) ---\n" + "\n".join(tail or ["(empty)"]))
    return "\n".join(parts)


def start_cluster(directory: Path, script: Path = DEV_CLUSTER) -> Cluster:
    """``dev-cluster.sh up DIR`` on free ports.

    On failure it stops what was started and raises RuntimeError with the
    script's last lines and the tail of the daemon logs (read before anything
    is deleted).
    """
    ports = {
        "SLURMCTLD_PORT": free_port(),
        "SLURMD_PORT": free_port(),
        "SSH_PORT": free_port(),
        "SLURMDBD_PORT": free_port(),
        "DEV_MYSQL_PORT": free_port(),
    }
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    proc = subprocess.run(
        [str(script), "up", str(directory)], env=env, capture_output=True, text=True, timeout=180
    )
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        logs = log_tails(directory, output)
        subprocess.run([str(script), "down", str(directory)], capture_output=True, timeout=180)
        tail = output.splitlines()[-5:]
        raise RuntimeError(
            f"dev-cluster.sh up failed (rc={proc.returncode}): {' | '.join(tail)}"
            + (f"\n{logs}" if logs else "\n(no daemon log in the folder)")
        )
    return cluster_at(directory, owned=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The real cluster; SLURM_CONF is set in os.environ for the session."""
    shared = os.environ.get("SAIA_TEST_CLUSTER")
    tmpdir: str | None = None
    try:
        if shared and cluster_running(Path(shared)):
            c = cluster_at(Path(shared).resolve(), owned=False)
        else:
            if shared:
                warnings.warn(
                    f"SAIA_TEST_CLUSTER={shared} is not running; starting a private cluster", stacklevel=1
                )
            # Short path: the munge socket path must fit in a sockaddr_un.
            tmpdir = tempfile.mkdtemp(prefix="saia-cluster-")
            c = start_cluster(Path(tmpdir))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        pytest.fail(f"the test cluster could not start: {e}", pytrace=False)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = c.slurm_conf
    try:
        yield c
    finally:
        c.remove_test_keys()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if c.owned:
            subprocess.run([str(DEV_CLUSTER), "down", str(c.dir)], capture_output=True, timeout=180)
            shutil.rmtree(c.dir, ignore_errors=True)
