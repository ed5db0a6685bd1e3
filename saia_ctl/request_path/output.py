"""The client's side of a request: its answer goes out on ``stdout`` (the SSH
channel, or the forwarder client's socket), unbuffered, and ends by pointing
``stdout`` at /dev/null; one line for the operator on stderr."""

from __future__ import annotations

import os


class ClientGone(Exception):
    """The client (the SSH session) went away: stdout is closed."""


def write_all(fd: int, data: bytes) -> None:
    """Write everything to ``fd`` (unbuffered: every write reaches the client at once)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except (BrokenPipeError, ConnectionResetError):
            raise ClientGone() from None
        except OSError as e:
            raise ClientGone() from e
        view = view[n:]


def release_stdout(stdout: int) -> None:
    """End the answer: point ``stdout`` at /dev/null, so the client sees EOF while
    the descriptor stays taken (closing it would let the next open(), e.g.
    SQLite's journal, become fd 1)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(null, stdout)
    except OSError:
        pass
    finally:
        os.close(null)


def say_stderr(message: str) -> None:
    """One line on stderr (sshd passes it to the client's SSH session, not to stdout)."""
    try:
        os.write(2, f"saia-ctl: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass
