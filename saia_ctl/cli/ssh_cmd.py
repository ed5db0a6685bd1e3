"""`saia-ctl ssh authorized-key KEY.pub`: the cloud proxy's authorized_keys line.

The line forces this installation's ``cloud_interface.sh`` (by its absolute
path) with the current ``SAIA_HOME``, under ``restrict`` (no pty, no
forwarding, no agent, no X11): whatever the key's holder asks for, only the
request path runs.
"""

from __future__ import annotations

import base64
import binascii
import shlex
import sys
from typing import Annotated

import typer

from . import common

app = typer.Typer(help="The SSH side: the cloud proxy's key on the cluster.", no_args_is_help=True)

# The key types sshd accepts in authorized_keys without a certificate authority.
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def parse_public_key(text: str, source: str) -> str:
    """The one OpenSSH public key in ``text`` as ``TYPE BASE64 [COMMENT]``; CLIError otherwise."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise common.CLIError(f"{source}: empty, expected an OpenSSH public key (TYPE BASE64 [COMMENT])")
    if "PRIVATE KEY" in lines[0]:
        raise common.CLIError(f"{source}: this is a private key; give its public half (the .pub file)")
    if len(lines) > 1:
        raise common.CLIError(f"{source}: {len(lines)} lines, expected one OpenSSH public key")
    kind, _, rest = lines[0].partition(" ")
    blob, _, comment = rest.strip().partition(" ")
    if kind not in KEY_TYPES:
        raise common.CLIError(
            f"{source}: not an OpenSSH public key (TYPE BASE64 [COMMENT] with TYPE one of "
            f"{', '.join(sorted(KEY_TYPES))}), it starts with {kind[:40]!r}"
        )
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    # The blob starts with its own type as an SSH string (uint32 length, bytes).
    if raw[4 : 4 + len(kind)] != kind.encode() or int.from_bytes(raw[:4], "big") != len(kind):
        raise common.CLIError(f"{source}: the {kind} key's base64 part is damaged")
    return " ".join(part for part in (kind, blob, comment.strip()) if part)


def authorized_keys_line(key: str, home: str, forced_command: str) -> str:
    """``restrict,command="SAIA_HOME=HOME COMMAND" KEY``, quoted for the shell and for sshd.

    sshd runs the command through the account's shell; in the option it
    unescapes only ``\\"``.
    """
    command = f"SAIA_HOME={shlex.quote(home)} {shlex.quote(forced_command)}"
    escaped = command.replace('"', '\\"')
    return f'restrict,command="{escaped}" {key}'


@app.command("authorized-key")
@common.command
def authorized_key(
    key_file: Annotated[
        str, typer.Argument(metavar="KEY.pub", help="The cloud proxy's public key file, or - for stdin.")
    ],
) -> None:
    """Print the authorized_keys line for the cloud proxy's public key.

    Add it to the ~/.ssh/authorized_keys of the account that runs the services
    on the login node. The forced command is this installation's
    cloud_interface.sh; SAIA_HOME is the current one (--home or SAIA_HOME).
    """
    from ..install_paths import forced_command_path

    if key_file == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        with open(key_file, encoding="utf-8", errors="replace") as f:
            text, source = f.read(), key_file
    key = parse_public_key(text, source)
    command = forced_command_path()
    if not command.is_file():
        common.warn(f"{command} does not exist: is saia-ctl installed (pip install saia_ctl-*.whl)?")
    common.echo(authorized_keys_line(key, common.settings().home, str(command)))


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="ssh")
