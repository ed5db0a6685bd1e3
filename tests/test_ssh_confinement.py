"""The dev cluster's sshd with `restrict,command="..."` keys: one suite of
refusals run over two keys, and what a forced command receives.

sshd here leaves forwarding, agent, pty on and X11 switched on, so these tests
prove that the key options do the refusing, as they must on a centre's sshd.

Every refusal (a shell, a pty, port forwarding of every kind, agent and X11
forwarding, scp and sftp) runs with two keys:

- ``echo-stub`` — the dev cluster's default key, whose forced command prints
  what it received (``SSH_ORIGINAL_COMMAND=[...]``): the sshd mechanics, byte for byte;
- ``cloud_interface`` — the production line pointing at the REAL
  ``cloud_interface.sh`` (``docs/operations.md``): what the request path
  answers instead is an HTTP 400, never a shell's output.

The byte-for-byte checks of the forced command's input (command string,
stdin, quoting in the key line, exit status) use stub keys only.
"""

from __future__ import annotations

import os
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
from tests.support.paths import CLOUD_INTERFACE, REPO
from tests.support.wire import add_ready_job, assert_error_answer, parse_http, request_rows

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

SERVICE = "svc-confined"
SBATCH = str(REPO / "examples" / "saia" / "sbatch" / "example-service.sbatch")
NASTY = (
    "line one\nline two with \"double\" and 'single' quotes\n"
    "$(touch /tmp/saia-pwned) `id` $HOME ${PATH} ; && | > < * ? ~ \t tab \\ backslash \\\\ two\n"
    "ünïcödé ✓ and trailing spaces   "
)


def run(
    argv: list[str], stdin: bytes = b"", timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False, env=env)


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


def start_agent(tmp_path: Path, background: list[subprocess.Popen[bytes]]) -> dict[str, str]:
    """An ssh-agent and a DISPLAY for the client to forward: the environment to run ssh in."""
    sock = tmp_path / "agent.sock"
    background.append(subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {**os.environ, "SSH_AUTH_SOCK": str(sock), "DISPLAY": "127.0.0.1:0"}


class EchoStub:
    """The dev cluster's default key: its forced command echoes the command it was given."""

    marker = b"SSH_ORIGINAL_COMMAND"  # in everything the forced command prints

    def __init__(self, cluster: Cluster, env_key: Path) -> None:
        self.cluster = cluster
        self.key = cluster.ssh_key
        self.env_key = env_key

    def assert_forced_instead(self, r: subprocess.CompletedProcess[bytes], command: str | None) -> None:
        """The forced command ran in place of ``command``: it echoes it, exactly."""
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"SSH_ORIGINAL_COMMAND=[{command or ''}]\n".encode()

    def assert_no_agent_or_x11(self, tmp_path: Path, background: list[subprocess.Popen[bytes]]) -> None:
        r = run(
            [*self.cluster.ssh_argv(self.env_key, "-A", "-X"), "show"], env=start_agent(tmp_path, background)
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"AUTH_SOCK=[] DISPLAY=[] TTY=[] CMD=[show]\n"


class CloudInterface:
    """The production key line: the request path, with one service to ask for."""

    marker = b"HTTP/1.1"  # in everything the request path answers

    def __init__(self, cluster: Cluster, home: Path, import_services: Callable[..., None]) -> None:
        import_services(service_config(SERVICE, sbatch=SBATCH))
        self.cluster = cluster
        self.home = home
        self.key = cluster.add_forced_key(f"SAIA_HOME={home} {CLOUD_INTERFACE}")

    def assert_forced_instead(self, r: subprocess.CompletedProcess[bytes], command: str | None) -> None:
        """The request path ran in place of ``command`` and refused it with a 400."""
        ans = assert_error_answer(r.stdout)
        assert ans.status == 400 and r.returncode != 255

    def assert_no_agent_or_x11(self, tmp_path: Path, background: list[subprocess.Popen[bytes]]) -> None:
        """While a request runs, the handler's own environment has no agent socket and no DISPLAY."""
        with FakeBackend("stream", delay=0.4, events=8) as slow:
            add_ready_job(self.home, SERVICE, slow.port)
            env = start_agent(tmp_path, background)
            cmd = f"inf-fwd-1\njdoe@uni-x.de\n{SERVICE}\n/v1/chat/completions\n -X POST -d {{}}"
            p = subprocess.Popen(
                [*self.cluster.ssh_argv(self.key, "-A", "-X"), cmd],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            background.append(p)
            environ = b""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not environ:
                rows = request_rows(self.home)
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


Forced = EchoStub | CloudInterface


@pytest.fixture(params=["echo-stub", "cloud_interface"])
def forced(request: pytest.FixtureRequest, cluster: Cluster) -> Forced:
    """The key under test (see the module's docstring)."""
    if request.param == "echo-stub":
        return EchoStub(cluster, request.getfixturevalue("env_key"))
    return CloudInterface(
        cluster, request.getfixturevalue("home"), request.getfixturevalue("import_services")
    )


@pytest.fixture
def target() -> Iterator[FakeBackend]:
    """A backend that forwarding would reach: it counts connections and answers 200."""
    with FakeBackend("ok") as b:
        yield b


# --- the refusals, with both keys --------------------------------------------------------


@pytest.mark.parametrize(
    "command", [None, "bash -i", "sh -c id", "id; cat /etc/passwd", "exec /bin/sh", "$(id)"]
)
def test_a_shell_is_refused(cluster: Cluster, forced: Forced, command: str | None) -> None:
    """Asking for a shell (no command: a login shell) runs the forced command instead."""
    r = run([*cluster.ssh_argv(forced.key)] + ([command] if command is not None else []))
    forced.assert_forced_instead(r, command)
    assert b"uid=" not in r.stdout and b"root:" not in r.stdout


def test_a_pty_is_refused(cluster: Cluster, forced: Forced) -> None:
    r = run([*cluster.ssh_argv(forced.key, "-tt"), "status"])
    assert r.returncode == 255
    assert b"PTY allocation request failed" in r.stderr
    assert forced.marker not in r.stdout


def test_local_forwarding_is_refused(
    cluster: Cluster, forced: Forced, target: FakeBackend, background: list[subprocess.Popen[bytes]]
) -> None:
    lport = free_port()
    p = subprocess.Popen(
        cluster.ssh_argv(forced.key, "-N", "-L", f"127.0.0.1:{lport}:127.0.0.1:{target.port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    background.append(p)
    wait_port(lport)  # the client-side listener opens ...
    with socket.create_connection(("127.0.0.1", lport), timeout=5) as s:
        s.settimeout(5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b""  # ... but the channel is refused: EOF ...
        except ConnectionResetError:
            pass  # ... or a reset, never an answer
    # (ssh logs "open failed: administratively prohibited" at INFO, hidden by LogLevel=ERROR)
    assert target.connections == 0


def test_remote_forwarding_is_refused(cluster: Cluster, forced: Forced) -> None:
    rport = free_port()
    r = run(
        cluster.ssh_argv(
            forced.key, "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{rport}:127.0.0.1:9"
        )
    )
    assert r.returncode == 255
    assert b"remote port forwarding failed" in r.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", rport), timeout=1).close()


def test_dynamic_forwarding_is_refused(
    cluster: Cluster, forced: Forced, target: FakeBackend, background: list[subprocess.Popen[bytes]]
) -> None:
    dport = free_port()
    p = subprocess.Popen(
        cluster.ssh_argv(forced.key, "-N", "-D", f"127.0.0.1:{dport}"), stderr=subprocess.PIPE
    )
    background.append(p)
    wait_port(dport)
    with socket.create_connection(("127.0.0.1", dport), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b"\x05\x01\x00")  # SOCKS5, one method: no auth
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + target.port.to_bytes(2, "big"))
        reply = b""
        while part := s.recv(100):
            reply += part
    assert b"HTTP/1.1" not in reply
    assert reply == b"" or reply[1] != 0  # closed, or a SOCKS failure code
    assert target.connections == 0


def test_stdio_forwarding_is_refused(cluster: Cluster, forced: Forced, target: FakeBackend) -> None:
    r = run(cluster.ssh_argv(forced.key, "-W", f"127.0.0.1:{target.port}"))
    assert r.returncode == 255 and b"stdio forwarding failed" in r.stderr
    assert b"HTTP/1.1" not in r.stdout and target.connections == 0


def test_agent_and_x11_are_not_forwarded(
    forced: Forced, tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    forced.assert_no_agent_or_x11(tmp_path, background)


def test_scp_and_sftp_are_refused(cluster: Cluster, forced: Forced, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("secret\n")
    dest = tmp_path / "copied"
    common = [
        "-P",
        str(cluster.ssh_port),
        "-i",
        str(forced.key),
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
    # what the sftp subsystem request got instead: the forced command, given "internal-sftp"
    r = run([*cluster.ssh_argv(forced.key, "-s"), "sftp"])
    forced.assert_forced_instead(r, "internal-sftp")


# --- what a forced command receives (stub keys: byte for byte) ----------------------------


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


def test_the_subsystem_request_arrives_as_its_command(cluster: Cluster, raw_key: Path) -> None:
    r = run([*cluster.ssh_argv(raw_key, "-s"), "sftp"])
    assert r.stdout.startswith(b"internal-sftp\0")  # the forced command ran, not the sftp server


def test_forced_command_with_quotes_and_backslashes_is_kept(cluster: Cluster) -> None:
    key = cluster.add_forced_key('echo "back\\slash \\"quoted\\" \'single\'"')
    r = run([*cluster.ssh_argv(key), "ignored"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"back\\slash \"quoted\" 'single'\n"


def test_add_forced_key_refuses_what_sshd_cannot_express(cluster: Cluster) -> None:
    for bad in ("ends in \\", "two\nlines"):
        with pytest.raises(ValueError):
            cluster.add_forced_key(bad)


def test_exit_code_and_stderr_reach_the_client(cluster: Cluster) -> None:
    key = cluster.add_forced_key("echo oops >&2; exit 3")
    r = run([*cluster.ssh_argv(key), "x"])
    assert r.returncode == 3 and r.stderr == b"oops\n"


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


# --- the production key serves what it is for ---------------------------------------------


def test_the_production_key_serves_requests(
    cluster: Cluster, home: Path, import_services: Callable[..., None], target: FakeBackend
) -> None:
    forced = CloudInterface(cluster, home, import_services)
    add_ready_job(home, SERVICE, target.port)
    cmd = f'inf-ok-1\njdoe@uni-x.de\n{SERVICE}\n/v1/chat/completions\n -X POST -H "content-type: application/json" -d {{}}'
    r = run([*cluster.ssh_argv(forced.key), cmd])
    assert r.returncode == 0, r.stderr
    assert parse_http(r.stdout).status == 200
    assert run([*cluster.ssh_argv(forced.key), "keep-alive"]).stdout == b"OK\n"
