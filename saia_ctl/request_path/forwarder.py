"""The opt-in request forwarder (``SAIA_FORWARDER=on``): one long-lived process
per login node and state directory, so that a request costs no interpreter start.

``python -m saia_ctl.request_path.forwarder`` (started detached by
``keep-alive``, see ``forwarder_socket.ensure``) listens on a Unix socket in a
private local directory, ``${TMPDIR:-/tmp}/saia-UID/HASH.sock`` (HASH: FNV-1a
32 of the absolute ``SAIA_HOME``; the directory must be ours and mode 0700,
else nothing starts and every request takes the one-process path). It has
the handler and its modules imported; for each connection it forks a child
that reads the header, answers with its pid, takes the client's environment
and runs ``handler.run(command, stdin=conn, stdout=conn)``: the same code as
the one-process path, with its own pid as ``handler_pid``.

The client is ``saia_ctl/request_path/client.pl`` (perl, no modules), which
``cloud_interface.sh`` runs only when the private directory exists; whenever
the forwarder does not answer it execs the one-process path instead.

Wire (client -> forwarder): ``SAIAFWD1``, a 4-byte big-endian length, then the
client's environment as ``KEY=VALUE`` entries separated by NUL (it holds
``SSH_ORIGINAL_COMMAND`` and ``SAIA_HOME``). Forwarder -> client: the child's
pid (4 bytes, big-endian), then the answer exactly as the one-process path
writes it to stdout. After the pid the client relays its stdin to the socket
(``shutdown(SHUT_WR)`` at end of file) and the socket to its stdout, and sends
SIGHUP/SIGINT/SIGTERM it receives on to the child.

The forwarder exits after ``IDLE`` seconds without a connection, when a file of
its code or ``saia.conf`` changes (so upgrades and ``SAIA_FORWARDER=off`` take
effect), when its socket file is removed or replaced, and on SIGTERM. Children
in flight finish on their own. One instance per socket: an fcntl lock on
``HASH.lock`` beside it.
"""

from __future__ import annotations

import os
import sys

from .forwarder_socket import MAGIC, ForwarderError, private_dir, socket_path

IDLE = 600.0  # seconds without a connection before the forwarder exits
CHECK_EVERY = 1.0  # seconds between two looks at the code, saia.conf and the socket file
HEADER_TIMEOUT = 5.0
MAX_HEADER = 4 << 20
PACKAGE = os.path.dirname(os.path.abspath(__file__))

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


# --- the forwarder ---------------------------------------------------------


def _say(message: str) -> None:
    import time

    try:
        os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forwarder pid={os.getpid()} {message}\n".encode())
    except OSError:
        pass


def _watched(home: str) -> dict[str, float | None]:
    """mtimes of the code the children run and of saia.conf (None: missing)."""
    files = [os.path.join(home, "saia.conf")]
    for folder in (os.path.dirname(PACKAGE), PACKAGE):
        try:
            files += [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py")]
        except OSError:
            pass
    out: dict[str, float | None] = {}
    for f in files:
        try:
            out[f] = os.stat(f).st_mtime
        except OSError:
            out[f] = None
    return out


def _read_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        piece = conn.recv(n - len(buf))
        if not piece:
            break
        buf += piece
    return buf


def _child(conn: socket.socket) -> int:
    """One request, in a forked child: header, pid, handler.run. Returns the exit status."""
    import signal

    from . import handler

    conn.settimeout(HEADER_TIMEOUT)
    try:
        head = _read_exact(conn, len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
            return 0  # a probe (keep-alive) or not our client: nothing to do
        size = int.from_bytes(head[len(MAGIC) :], "big")
        if size > MAX_HEADER:
            return 1
        block = _read_exact(conn, size)
        if len(block) < size:
            return 1
        conn.settimeout(None)
        conn.sendall(os.getpid().to_bytes(4, "big"))
    except OSError:
        return 1  # the client gave up (and took the one-process path): nothing was recorded
    fd = conn.detach()
    env: dict[bytes, bytes] = {}
    for item in block.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key] = value
    os.environ.clear()
    os.environb.update(env)  # type: ignore[attr-defined]
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    handler.install_signal_handlers()
    return handler.run(env.get(b"SSH_ORIGINAL_COMMAND", b""), stdin=fd, stdout=fd)


def serve(home: str, idle: float = IDLE) -> int:
    import fcntl

    # What the children need, imported once here instead of once per request.
    import json  # noqa: F401
    import re  # noqa: F401
    import select
    import signal
    import socket
    import time

    from .. import rawdb  # noqa: F401
    from ..settings import Settings, SettingsError
    from . import control, forward, handler, store, wire  # noqa: F401

    try:
        settings = Settings(home=home)
        if not settings.forwarder:
            raise ForwarderError("SAIA_FORWARDER is not on")
        path = socket_path(settings.home)
        folder = os.path.dirname(path)
        private_dir(folder, create=True)
    except (SettingsError, ForwarderError, OSError) as e:
        _say(f"not started: {e}")
        return 1
    lock_fd = os.open(path[: -len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        _say(f"not started: another forwarder serves {path}")
        return 2
    watched = _watched(settings.home)
    tmp = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        listener.bind(tmp)
        listener.listen(256)
        os.rename(tmp, path)  # atomically replaces a stale socket of a dead forwarder
        ino = os.stat(path).st_ino
    except OSError as e:
        _say(f"not started: cannot listen on {path}: {e}")
        listener.close()
        os.close(lock_fd)
        return 1
    listener.setblocking(False)

    def reap(_signum: int = 0, _frame: object = None) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _say(f"serving {path} for {settings.home}")
    last_use = last_check = time.monotonic()
    why = "stopped"
    try:
        while True:
            try:
                ready, _, _ = select.select([listener], [], [], CHECK_EVERY)
            except InterruptedError:
                ready = []
            if ready:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    conn = None
                if conn is not None:
                    last_use = time.monotonic()
                    try:
                        pid = os.fork()
                    except OSError as e:
                        _say(f"cannot fork: {e}")
                        conn.close()  # the client falls back to the one-process path
                        continue
                    if pid == 0:
                        rc = 1
                        try:
                            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                            listener.close()
                            os.close(lock_fd)
                            rc = _child(conn)
                        except Exception:  # a bug: its traceback goes to logs/forwarder.log
                            import traceback

                            traceback.print_exc()
                        finally:
                            os._exit(rc)
                    conn.close()
            now = time.monotonic()
            if now - last_check < CHECK_EVERY:
                continue
            last_check = now
            if now - last_use >= idle:
                why = f"idle for {idle:g} s"
                break
            if _watched(settings.home) != watched:
                why = "its code or saia.conf changed"
                break
            try:
                if os.stat(path).st_ino != ino:
                    why = "its socket was replaced"
                    break
            except OSError:
                why = "its socket was removed"
                break
    except SystemExit:
        why = "terminated"
    finally:
        try:
            if os.stat(path).st_ino == ino:
                os.unlink(path)
        except OSError:
            pass
        listener.close()
        if _turned_off(settings.home):
            # Off for good: no forwarder may start now, so the lock file can go, and
            # the directory with it when it is empty (cloud_interface.sh then skips perl).
            for leftover in (path[: -len(".sock")] + ".lock",):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
            try:
                os.rmdir(folder)
            except OSError:
                pass
        os.close(lock_fd)
    _say(f"exits: {why}")
    return 0


def _turned_off(home: str) -> bool:
    from ..settings import Settings, SettingsError

    try:
        return not Settings(home=home).forwarder
    except SettingsError:
        return False


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m saia_ctl.request_path.forwarder", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--home", default=os.environ.get("SAIA_HOME", ""), help="state directory (SAIA_HOME)")
    ap.add_argument("--idle", type=float, default=IDLE, help="seconds without a connection before exiting")
    args = ap.parse_args(argv)
    if not args.home:
        _say("not started: no SAIA_HOME")
        return 1
    return serve(args.home, args.idle)


if __name__ == "__main__":
    sys.exit(main())
