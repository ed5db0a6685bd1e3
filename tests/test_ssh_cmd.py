"""`saia-ctl ssh authorized-key`: the cloud proxy's authorized_keys line.

The line is read back by ssh-keygen (it is a valid authorized_keys line) and,
on the real cluster, sshd runs exactly its forced command with its SAIA_HOME.
The installed wheel's line is tested in tests/test_wheel.py.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

SAIA = str(REPO / ".venv" / "bin" / "saia-ctl")


def saia(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAIA, *args], input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def pubkey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("key") / "proxy"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "proxy@cloud", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return key.with_suffix(".pub")


def forced_command(line: str) -> str:
    """The command="..." option of an authorized_keys line, unescaped as sshd does."""
    assert line.startswith('restrict,command="'), line
    body = line[len('restrict,command="') :]
    out, i = [], 0
    while body[i] != '"':
        if body.startswith('\\"', i):
            out.append('"')
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def test_line_for_a_checkout(pubkey: Path, tmp_path: Path) -> None:
    r = saia("--home", str(tmp_path), "ssh", "authorized-key", str(pubkey))
    assert r.returncode == 0, r.stderr
    line = r.stdout.rstrip("\n")
    assert "\n" not in line
    key = pubkey.read_text().strip()
    assert line.endswith(f'" {key}')
    assert shlex.split(forced_command(line)) == [f"SAIA_HOME={tmp_path}", str(REPO / "cloud_interface.sh")]
    # From stdin: the same line.
    assert saia("--home", str(tmp_path), "ssh", "authorized-key", "-", stdin=key + "\n").stdout == r.stdout
    # ssh-keygen reads it as an authorized_keys line (options, then the key).
    keys = tmp_path / "authorized_keys"
    keys.write_text(r.stdout)
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(keys)], capture_output=True, text=True)
    own = subprocess.run(["ssh-keygen", "-l", "-f", str(pubkey)], capture_output=True, text=True)
    assert fp.returncode == 0 and fp.stdout == own.stdout, fp.stderr


def test_home_with_spaces_and_quotes_survives_both_unquotings(pubkey: Path, tmp_path: Path) -> None:
    home = tmp_path / "state dir \"q\" 'x' $HOME"
    r = saia("--home", str(home), "ssh", "authorized-key", str(pubkey))
    assert r.returncode == 0, r.stderr
    words = shlex.split(forced_command(r.stdout.strip()))
    assert words == [f"SAIA_HOME={home}", str(REPO / "cloud_interface.sh")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "stdin: empty, expected an OpenSSH public key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n", "stdin: this is a private key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM7\nssh-rsa AAAA\n", "stdin: 2 lines, expected one"),
        ('from="10.0.0.1" ssh-ed25519 AAAAC3Nz', "stdin: not an OpenSSH public key"),
        ("hello world", "stdin: not an OpenSSH public key"),
        ("ssh-ed25519 not*base64", "stdin: the ssh-ed25519 key's base64 part is damaged"),
        # Valid base64 of an RSA key under an ed25519 label.
        (
            "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",
            "stdin: the ssh-ed25519 key's base64 part is damaged",
        ),
    ],
)
def test_bad_keys_are_one_line_errors(text: str, message: str, tmp_path: Path) -> None:
    r = saia("--home", str(tmp_path), "ssh", "authorized-key", "-", stdin=text)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"Error: {message}") and r.stderr.count("\n") == 1, r.stderr


def test_missing_file_and_missing_home(pubkey: Path, tmp_path: Path) -> None:
    r = saia("--home", str(tmp_path), "ssh", "authorized-key", str(tmp_path / "nope.pub"))
    assert r.returncode == 1 and r.stderr == f"Error: No such file or directory ({tmp_path / 'nope.pub'})\n"
    r = subprocess.run(
        [SAIA, "ssh", "authorized-key", str(pubkey)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr == "Error: no state directory: set SAIA_HOME or pass --home\n"


@pytest.mark.cluster
def test_sshd_runs_the_printed_command(cluster: Any, pubkey: Path, tmp_path: Path) -> None:
    """The printed line in the cluster's authorized_keys: sshd runs cloud_interface.sh with that home."""
    home = tmp_path / "home"
    home.mkdir()
    line = saia("--home", str(home), "ssh", "authorized-key", str(pubkey)).stdout.strip()
    # The fixture writes a fresh key's line with our forced command: same command, same sshd.
    key = cluster.add_forced_key(forced_command(line))
    r = subprocess.run([*cluster.ssh_argv(key), "keep-alive"], capture_output=True, text=True, timeout=60)
    assert r.stdout == "OK\n", r.stderr
    # Only the request path ran, with this home: it logged there.
    assert (home / "logs" / "route.log").is_file()
