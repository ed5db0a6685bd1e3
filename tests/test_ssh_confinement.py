"""SSH confinement with the production key line pointing at the REAL cloud_interface.sh.

``tests/test_sshd_forced.py`` proves the sshd mechanics with an echo stub;
here the forced command is the request path itself, as an operator installs it
(``docs/operations.md``): every attempt to get more than one request out of
the key (a shell, a pty, port forwarding of every kind, agent and X11
forwarding, scp and sftp) is refused, and what the handler answers instead is
an HTTP 400, never a shell's output.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.backend import FakeBackend
from tests.support.cluster import Cluster
from tests.support.fixtures import service_config
from tests.support.net import free_port, wait_port
from tests.support.paths import REPO
from tests.support.wire import add_ready_job, assert_error_answer, parse_http, request_rows

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

SERVICE = "svc-confined"
SBATCH = str(REPO / "examples" / "saia" / "sbatch" / "example-service.sbatch")


def run(argv: list[str], stdin: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def key(cluster: Cluster, home: Path, import_services: Callable[..., None]) -> Path:
    """The production line: restrict,command="SAIA_HOME=... .../cloud_interface.sh"."""
    import_services(service_config(SERVICE, sbatch=SBATCH))
    return cluster.add_forced_key(f"SAIA_HOME={home} {REPO / 'cloud_interface.sh'}")


@pytest.fixture
def target() -> Iterator[FakeBackend]:
    with FakeBackend("ok") as b:
        yield b


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_the_key_serves_requests(cluster: Cluster, key: Path, home: Path, target: FakeBackend) -> None:
    add_ready_job(home, SERVICE, target.port)
    cmd = f'inf-ok-1\njdoe@uni-x.de\n{SERVICE}\n/v1/chat/completions\n -X POST -H "content-type: application/json" -d {{}}'
    r = run([*cluster.ssh_argv(key), cmd])
    assert r.returncode == 0, r.stderr
    assert parse_http(r.stdout).status == 200
    assert run([*cluster.ssh_argv(key), "keep-alive"]).stdout == b"OK\n"


@pytest.mark.parametrize(
    "command", [None, "bash -i", "sh -c id", "id; cat /etc/passwd", "exec /bin/sh", "$(id)"]
)
def test_a_shell_is_refused_with_a_400(cluster: Cluster, key: Path, command: str | None) -> None:
    r = run([*cluster.ssh_argv(key)] + ([command] if command is not None else []))
    ans = assert_error_answer(r.stdout)  # the handler answered, nothing else ran
    assert b"uid=" not in r.stdout and b"root:" not in r.stdout
    assert ans.status == 400 and r.returncode != 255


def test_a_pty_is_refused(cluster: Cluster, key: Path) -> None:
    r = run([*cluster.ssh_argv(key, "-tt"), "status"])
    assert r.returncode == 255
    assert b"PTY allocation request failed" in r.stderr
    assert b"services" not in r.stdout


def test_local_forwarding_is_refused(
    cluster: Cluster, key: Path, target: FakeBackend, background: list[subprocess.Popen[bytes]]
) -> None:
    lport = free_port()
    p = subprocess.Popen(
        cluster.ssh_argv(key, "-N", "-L", f"127.0.0.1:{lport}:127.0.0.1:{target.port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    background.append(p)
    wait_port(lport)
    with socket.create_connection(("127.0.0.1", lport), timeout=5) as s:
        s.settimeout(5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b""  # the channel is refused: EOF ...
        except ConnectionResetError:
            pass  # ... or a reset, never an answer
    assert target.connections == 0


def test_remote_forwarding_is_refused(cluster: Cluster, key: Path) -> None:
    rport = free_port()
    r = run(
        cluster.ssh_argv(key, "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{rport}:127.0.0.1:9")
    )
    assert r.returncode == 255
    assert b"remote port forwarding failed" in r.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", rport), timeout=1).close()


def test_dynamic_forwarding_is_refused(
    cluster: Cluster, key: Path, target: FakeBackend, background: list[subprocess.Popen[bytes]]
) -> None:
    dport = free_port()
    p = subprocess.Popen(cluster.ssh_argv(key, "-N", "-D", f"127.0.0.1:{dport}"), stderr=subprocess.PIPE)
    background.append(p)
    wait_port(dport)
    with socket.create_connection(("127.0.0.1", dport), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + target.port.to_bytes(2, "big"))
        reply = b""
        while part := s.recv(100):
            reply += part
    assert reply == b"" or reply[1] != 0
    assert target.connections == 0


def test_stdio_forwarding_is_refused(cluster: Cluster, key: Path, target: FakeBackend) -> None:
    r = run(cluster.ssh_argv(key, "-W", f"127.0.0.1:{target.port}"))
    assert r.returncode == 255 and b"stdio forwarding failed" in r.stderr
    assert target.connections == 0


def test_agent_and_x11_are_not_forwarded_to_the_handler(
    cluster: Cluster, key: Path, home: Path, tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    """While a request runs, the handler's own environment has no agent socket and no DISPLAY."""
    import os

    with FakeBackend("stream", delay=0.4, events=8) as slow:
        add_ready_job(home, SERVICE, slow.port)
        sock = tmp_path / "agent.sock"
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
        background.append(agent)
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock), "DISPLAY": "127.0.0.1:0"}
        cmd = f"inf-fwd-1\njdoe@uni-x.de\n{SERVICE}\n/v1/chat/completions\n -X POST -d {{}}"
        p = subprocess.Popen(
            [*cluster.ssh_argv(key, "-A", "-X"), cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        background.append(p)
        environ = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not environ:
            rows = request_rows(home)
            if rows:
                try:
                    environ = Path(f"/proc/{rows[0]['handler_pid']}/environ").read_bytes()
                except OSError:
                    break
            time.sleep(0.05)
        out, _ = p.communicate(timeout=30)
    assert environ, "the handler's environment could not be read while it ran"
    names = {item.split(b"=", 1)[0] for item in environ.split(b"\0") if item}
    assert b"SSH_AUTH_SOCK" not in names and b"DISPLAY" not in names and b"SSH_TTY" not in names
    assert b"SSH_ORIGINAL_COMMAND" in names
    assert parse_http(out, complete=False).status == 200


def test_scp_and_sftp_are_refused(cluster: Cluster, key: Path, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("secret\n")
    dest = tmp_path / "copied"
    common = [
        "-P",
        str(cluster.ssh_port),
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={cluster.dir / 'ssh' / 'known_hosts'}",
    ]
    target = f"{cluster.ssh_user}@127.0.0.1"
    r = run(["scp", "-O", *common, str(src), f"{target}:{dest}"])  # legacy scp: runs "scp -t ..."
    assert r.returncode != 0 and not dest.exists()
    r = run(["scp", "-O", *common, f"{target}:/etc/hostname", str(dest)])  # download: "scp -f ..."
    assert r.returncode != 0 and not dest.exists()
    r = run(["scp", *common, str(src), f"{target}:{dest}"])  # scp over the sftp subsystem
    assert r.returncode != 0 and not dest.exists()
    r = run(
        ["sftp", "-b", "-", *common, target], stdin=f"put {src} {dest}\nget /etc/hostname {dest}\n".encode()
    )
    assert r.returncode != 0 and not dest.exists()
    # what the sftp subsystem request got instead: the handler's 400 answer
    r = run([*cluster.ssh_argv(key, "-s"), "sftp"])
    assert_error_answer(r.stdout)
