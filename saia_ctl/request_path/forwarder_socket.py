"""Where the opt-in forwarder listens and how keep-alive starts it: the socket
path (``${TMPDIR:-/tmp}/saia-UID/HASH.sock``, which ``client.pl`` computes
too), the private directory it must sit in, and ``ensure``. Kept apart from
the forwarder itself (``forwarder.py``), which imports the handler: keep-alive
needs only this, and nothing imports in a cycle."""

from __future__ import annotations

import os

from .log import Log
from .spawn import spawn_detached

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..settings import Settings

MAGIC = b"SAIAFWD1"  # the client's header starts with it


class ForwarderError(Exception):
    """The forwarder cannot (or must not) run."""


def fnv32(data: bytes) -> str:
    h = 2166136261
    for c in data:
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return f"{h:08x}"


def base_dir(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return f"{env.get('TMPDIR') or '/tmp'}/saia-{os.getuid()}"


def socket_path(home: str, environ: dict[str, str] | None = None) -> str:
    """Where the forwarder of ``home`` listens (``client.pl`` computes the same)."""
    return f"{base_dir(environ)}/{fnv32(os.fsencode(os.path.abspath(home)))}.sock"


def private_dir(path: str, create: bool) -> None:
    """Make sure ``path`` is a directory of ours that nobody else may enter."""
    import stat

    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ForwarderError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise ForwarderError(f"{path} is owned by uid {st.st_uid}, not by us ({os.getuid()})")
    if st.st_mode & 0o077:
        raise ForwarderError(f"{path} is accessible to others (mode {stat.S_IMODE(st.st_mode):o}); not used")


def answers(path: str) -> bool:
    """Does a forwarder accept connections on ``path``?"""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def ensure(settings: Settings, log: Log) -> None:
    """Start the forwarder, detached, unless its socket answers (keep-alive, when on)."""
    path = socket_path(settings.home)
    if answers(path):
        return
    spawn_detached(settings, ["saia_ctl.request_path.forwarder"], "forwarder.log", log, "the forwarder")
