"""The dev cluster's sshd with `restrict,command="..."` keys: what a forced command
receives, and everything else a client may ask for is refused.

sshd here leaves forwarding, agent, pty on and X11 switched on, so these tests
prove that the key options do the refusing, as they must on a centre's sshd.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.net import free_port, wait_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

NASTY = (
    "line one\nline two with \"double\" and 'single' quotes\n"
    "$(touch /tmp/saia-pwned) `id` $HOME ${PATH} ; && | > < * ? ~ \t tab \\ backslash \\\\ two\n"
    "ünïcödé ✓ and trailing spaces   "
)


def run(argv: list[str], stdin: bytes = b"", timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def raw_key(cluster: Cluster) -> Path:
    """A key whose forced command prints SSH_ORIGINAL_COMMAND exactly, a NUL, then stdin exactly."""
    return cluster.add_forced_key("printf '%s' \"$SSH_ORIGINAL_COMMAND\"; printf '\\0'; cat")


@pytest.fixture(scope="module")
def env_key(cluster: Cluster) -> Path:
    """A key whose forced command shows what the session was given."""
    return cluster.add_forced_key(
        'echo "AUTH_SOCK=[$SSH_AUTH_SOCK] DISPLAY=[$DISPLAY] TTY=[$SSH_TTY] CMD=[$SSH_ORIGINAL_COMMAND]"'
    )


class Target:
    """A TCP server on 127.0.0.1 that greets every connection with HELLO; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                conn.sendall(b"HELLO\n")
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.close()


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_default_key_runs_the_echo_stub(cluster: Cluster) -> None:
    r = run([*cluster.ssh_argv(cluster.ssh_key), "keep-alive"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"SSH_ORIGINAL_COMMAND=[keep-alive]\n"


def test_any_command_string_arrives_byte_for_byte(cluster: Cluster, raw_key: Path) -> None:
    r = run([*cluster.ssh_argv(raw_key), NASTY])
    assert r.returncode == 0, r.stderr
    cmd, _, stdin = r.stdout.partition(b"\0")
    assert cmd == NASTY.encode()
    assert stdin == b""
    assert not Path("/tmp/saia-pwned").exists()


def test_stdin_arrives_byte_for_byte(cluster: Cluster, raw_key: Path) -> None:
    data = b'hello\nworld "q" $x\n\x00\xff binary\r\n' + os.urandom(4096) + b"\n\n"
    r = run([*cluster.ssh_argv(raw_key), "read-stdin"], stdin=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"read-stdin\0" + data


def test_stub_echoes_stdin(cluster: Cluster) -> None:
    r = run([*cluster.ssh_argv(cluster.ssh_key), "read-stdin"], stdin=b'hello\nworld "q" $x\n')
    assert r.stdout == b'SSH_ORIGINAL_COMMAND=[read-stdin]\nSTDIN=[hello\nworld "q" $x]\n'


def test_forced_command_with_quotes_and_backslashes_is_kept(cluster: Cluster) -> None:
    key = cluster.add_forced_key('echo "back\\slash \\"quoted\\" \'single\'"')
    r = run([*cluster.ssh_argv(key), "ignored"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"back\\slash \"quoted\" 'single'\n"


def test_add_forced_key_refuses_what_sshd_cannot_express(cluster: Cluster) -> None:
    for bad in ("ends in \\", "two\nlines"):
        with pytest.raises(ValueError):
            cluster.add_forced_key(bad)


def test_asking_for_a_shell_runs_the_forced_command(cluster: Cluster) -> None:
    r = run([*cluster.ssh_argv(cluster.ssh_key), "bash -i"])
    assert r.stdout == b"SSH_ORIGINAL_COMMAND=[bash -i]\n"
    r = run(cluster.ssh_argv(cluster.ssh_key))  # no command: a login shell is asked for
    assert r.returncode == 0
    assert r.stdout == b"SSH_ORIGINAL_COMMAND=[]\n"


def test_exit_code_and_stderr_reach_the_client(cluster: Cluster) -> None:
    key = cluster.add_forced_key("echo oops >&2; exit 3")
    r = run([*cluster.ssh_argv(key), "x"])
    assert r.returncode == 3 and r.stderr == b"oops\n"


def test_pty_is_refused(cluster: Cluster) -> None:
    r = run([*cluster.ssh_argv(cluster.ssh_key, "-tt"), "x"])
    assert r.returncode == 255
    assert b"PTY allocation request failed" in r.stderr
    assert b"SSH_ORIGINAL_COMMAND" not in r.stdout


def test_local_forwarding_is_refused(
    cluster: Cluster, raw_key: Path, target: Target, background: list[subprocess.Popen[bytes]]
) -> None:
    lport = free_port()
    p = subprocess.Popen(
        cluster.ssh_argv(raw_key, "-N", "-L", f"127.0.0.1:{lport}:127.0.0.1:{target.port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    background.append(p)
    wait_port(lport)  # the client-side listener opens ...
    with socket.create_connection(("127.0.0.1", lport), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(100) == b""  # ... but the channel is refused: EOF, never HELLO
    # (ssh logs "open failed: administratively prohibited" at INFO, hidden by LogLevel=ERROR)
    assert target.accepted == 0


def test_remote_forwarding_is_refused(cluster: Cluster, raw_key: Path) -> None:
    rport = free_port()
    r = run(
        cluster.ssh_argv(
            raw_key, "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{rport}:127.0.0.1:9"
        )
    )
    assert r.returncode == 255
    assert b"remote port forwarding failed" in r.stderr


def test_dynamic_forwarding_is_refused(
    cluster: Cluster, raw_key: Path, target: Target, background: list[subprocess.Popen[bytes]]
) -> None:
    dport = free_port()
    p = subprocess.Popen(cluster.ssh_argv(raw_key, "-N", "-D", f"127.0.0.1:{dport}"), stderr=subprocess.PIPE)
    background.append(p)
    wait_port(dport)
    with socket.create_connection(("127.0.0.1", dport), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b"\x05\x01\x00")  # SOCKS5, one method: no auth
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + target.port.to_bytes(2, "big"))
        reply = b""
        while True:
            part = s.recv(100)
            if not part:
                break
            reply += part
    assert b"HELLO" not in reply
    assert reply == b"" or reply[1] != 0  # closed, or a SOCKS failure code
    assert target.accepted == 0


def test_stdio_forwarding_is_refused(cluster: Cluster, raw_key: Path, target: Target) -> None:
    r = run(cluster.ssh_argv(raw_key, "-W", f"127.0.0.1:{target.port}"))
    assert r.returncode == 255
    assert b"stdio forwarding failed" in r.stderr
    assert b"HELLO" not in r.stdout and target.accepted == 0


def test_agent_and_x11_forwarding_are_refused(
    cluster: Cluster, env_key: Path, tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    background.append(agent)
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    env = {**os.environ, "SSH_AUTH_SOCK": str(sock), "DISPLAY": "127.0.0.1:0"}
    r = subprocess.run(
        [*cluster.ssh_argv(env_key, "-A", "-X"), "show"],
        env=env,
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"AUTH_SOCK=[] DISPLAY=[] TTY=[] CMD=[show]\n"


def test_sftp_subsystem_runs_the_forced_command(cluster: Cluster, raw_key: Path, tmp_path: Path) -> None:
    r = run([*cluster.ssh_argv(raw_key, "-s"), "sftp"])
    assert r.stdout.startswith(b"internal-sftp\0")  # the forced command ran, not the sftp server
    sftp = [
        "sftp",
        "-b",
        "-",
        "-P",
        str(cluster.ssh_port),
        "-i",
        str(raw_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={cluster.dir / 'ssh' / 'known_hosts'}",
        f"{cluster.ssh_user}@127.0.0.1",
    ]
    r = run(sftp, stdin=f"put {__file__} {tmp_path}/copied\n".encode())
    assert r.returncode != 0
    assert not (tmp_path / "copied").exists()


def test_many_parallel_sessions(cluster: Cluster) -> None:
    """MaxStartups/MaxSessions leave room for a burst of new connections."""
    procs = [
        subprocess.Popen(
            [*cluster.ssh_argv(cluster.ssh_key), f"n{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i in range(20)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [e for _, e in outs]
    assert sorted(o for o, _ in outs) == sorted(f"SSH_ORIGINAL_COMMAND=[n{i}]\n".encode() for i in range(20))
