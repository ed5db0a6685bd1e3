"""SSH to the login node: the system ``ssh`` client over a small pool of multiplexed masters.

Every request is one ``ssh`` process (argv list, never a shell; the command is
ONE argument, because ssh joins several with spaces). Slot ``n`` of the pool
uses ``ControlPath=<control-dir>/cm-%C-<n>`` with ``ControlMaster=auto`` and
``ControlPersist``: the first session through a slot becomes its master, the
rest reuse it and cost no handshake. A request goes to the live slot with the
fewest sessions; when every slot carries ``max_sessions`` (sshd's
``MaxSessions``, 10 by default) it gets a connection of its own instead of a
refusal.

A master that died leaves a stale socket, which ssh itself removes; a master
whose link hangs is caught by ``ServerAliveInterval`` or by the keep-alive
timeout, and then :meth:`SSHPool.reset` sends ``-O stop`` and removes the socket,
so the next session starts a new master.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

from .config import ProxyConfig

log = logging.getLogger("saia_ctl.proxy")

SSH_FAILED = 255  # ssh's own exit status for connection and protocol failures
_STDERR_KEEP = 4096


class SSHError(RuntimeError):
    """The SSH link failed (no answer from the forced command)."""


@dataclass
class Slot:
    index: int
    control_path: str
    in_flight: int = 0
    # None: not tried yet; True: the last session got through; False: it failed.
    alive: bool | None = None
    failures: int = 0


def exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it: asyncio's child watcher
    must be the one to reap it. (``Popen.send_signal`` reaps an exited child itself, and
    then asyncio logs "Unknown child process" and reports 255: seen in the tunnel soak
    whenever a session ended on the login node's side.)"""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


@dataclass
class Session:
    """One running ``ssh`` process and the slot it uses (None: a connection of its own)."""

    pool: SSHPool
    proc: asyncio.subprocess.Process
    slot: Slot | None
    started: float
    got_output: bool = False
    _stderr: bytearray = field(default_factory=bytearray)
    _stderr_task: asyncio.Task[None] | None = None
    _closed: bool = False

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        return self.proc.stdin

    def stderr_text(self) -> str:
        text = self._stderr.decode("utf-8", "replace").strip()
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-500:]

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self._stderr += chunk
            del self._stderr[:-_STDERR_KEEP]

    def kill(self) -> None:
        """Stop the ssh client (a client that went away, a timeout): the cluster side sees EOF/EPIPE."""
        if self.proc.returncode is None and not exited(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float = 5.0) -> int | None:
        try:
            async with asyncio.timeout(timeout):
                rc = await self.proc.wait()
                if self._stderr_task is not None:
                    await self._stderr_task
                return rc
        except TimeoutError:
            return None

    async def close(self) -> int | None:
        """Reap the process and account for the slot; returns the exit status (None: killed)."""
        if self._closed:
            return self.proc.returncode
        self._closed = True
        rc = await self.wait(2.0)
        if rc is None:
            self.kill()
            rc = await self.wait(2.0)
        if self._stderr_task is not None and not self._stderr_task.done():
            self._stderr_task.cancel()
        self.pool._release(self, rc)
        return rc


class SSHPool:
    """The ``ssh`` argv, the pool of control sockets, and the bookkeeping of their health."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self._own_dir = cfg.control_dir is None
        self.control_dir = cfg.control_dir or tempfile.mkdtemp(prefix="saia-proxy-")
        os.makedirs(self.control_dir, mode=0o700, exist_ok=True)
        self.slots = [Slot(n, os.path.join(self.control_dir, f"cm-%C-{n}")) for n in range(cfg.pool_size)]
        self._rr = itertools.count()
        self._resetting: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.direct_sessions = 0

    # -- argv -----------------------------------------------------------------
    def _target(self) -> list[str]:
        argv: list[str] = []
        if self.cfg.ssh_port is not None:
            argv += ["-p", str(self.cfg.ssh_port)]
        if self.cfg.ssh_key:
            argv += ["-i", self.cfg.ssh_key, "-o", "IdentitiesOnly=yes"]
        if self.cfg.ssh_user:
            argv += ["-l", self.cfg.ssh_user]
        return argv

    def argv(self, slot: Slot | None, command: str | None, *control: str) -> list[str]:
        """The full ssh argv; ``command`` is passed as one argument."""
        argv = [self.cfg.ssh_binary, "-T"]
        if slot is None:  # overflow: a connection of its own, no master
            argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        for opt in self.cfg.ssh_options:  # ssh keeps the first value given: the operator's win
            argv += ["-o", opt]
        argv += [
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ConnectTimeout={max(1, round(self.cfg.connect_timeout))}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
        ]
        if slot is not None:
            argv += [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={slot.control_path}",
                "-o",
                f"ControlPersist={self.cfg.control_persist}",
            ]
        argv += self._target()
        argv += list(control)
        argv.append(self.cfg.ssh_host)
        if command is not None:
            argv.append(command)
        return argv

    # -- choosing a slot ----------------------------------------------------------
    def choose(self) -> Slot | None:
        """The slot for a new session: live ones first, fewest sessions, round robin on ties."""
        start = next(self._rr) % len(self.slots)
        order = self.slots[start:] + self.slots[:start]
        usable = [s for s in order if s.in_flight < self.cfg.max_sessions and s.index not in self._resetting]
        if not usable:
            return None
        return min(usable, key=lambda s: (s.alive is False, s.alive is None, s.in_flight))

    async def start(self, command: str, *, stdin: bool, slot: Slot | bool | None = True) -> Session:
        """Start one ssh session (``slot=True``: the pool chooses)."""
        chosen = self.choose() if slot is True else (slot if isinstance(slot, Slot) else None)
        if chosen is None:
            self.direct_sessions += 1
        else:
            chosen.in_flight += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(chosen, command),
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            if chosen is not None:
                chosen.in_flight -= 1
            raise SSHError(f"cannot run {self.cfg.ssh_binary}: {e.strerror or e}") from None
        sess = Session(self, proc, chosen, time.monotonic())
        sess._stderr_task = asyncio.create_task(sess._drain_stderr())
        return sess

    def _release(self, sess: Session, rc: int | None) -> None:
        slot = sess.slot
        if slot is None:
            return
        slot.in_flight -= 1
        if rc == SSH_FAILED and not sess.got_output:
            slot.failures += 1
            if slot.alive is not False:
                log.warning("ssh slot %d failed (%s); resetting its master", slot.index, sess.stderr_text())
            slot.alive = False
            self.reset_later(slot)
        elif sess.got_output:
            slot.alive = True
            slot.failures = 0

    # -- control commands ---------------------------------------------------------
    async def run_control(
        self, word: str, timeout: float | None = None, slot: Slot | bool | None = True
    ) -> bytes:
        """Run a control command (``keep-alive``, ``status``); its stdout, or SSHError."""
        timeout = self.cfg.control_timeout if timeout is None else timeout
        sess = await self.start(word, stdin=False, slot=slot)
        try:
            async with asyncio.timeout(timeout):
                out = await sess.stdout.read()
                sess.got_output = bool(out)
                rc = await sess.proc.wait()
        except TimeoutError:
            sess.kill()
            await sess.close()
            where = f"slot {sess.slot.index}" if sess.slot else "a direct connection"
            if sess.slot is not None:
                sess.slot.alive = False
                self.reset_later(sess.slot)
            raise SSHError(f"'{word}' got no answer within {timeout:g} s over {where}") from None
        except BaseException:
            sess.kill()
            await sess.close()
            raise
        await sess.close()
        if rc != 0 or not out:
            detail = sess.stderr_text() or (
                out[:200].decode("utf-8", "replace").strip() if out else "no output"
            )
            raise SSHError(f"'{word}' failed (ssh exit status {rc}): {detail}")
        return out

    # -- repairing -------------------------------------------------------------------
    def resetting(self, slot: Slot) -> bool:
        return slot.index in self._resetting

    def reset_later(self, slot: Slot) -> None:
        if slot.index in self._resetting:
            return
        self._resetting.add(slot.index)
        task = asyncio.create_task(self.reset(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reset(self, slot: Slot) -> None:
        """Retire a slot's master and remove its socket; the next session starts a new one.

        ``-O stop`` lets the sessions still running on the old master finish;
        a master that does not answer it is left to ServerAliveInterval.
        """
        self._resetting.add(slot.index)
        try:
            # Only the socket seen now is removed: one a new master makes meanwhile stays.
            before = {}
            for path in glob.glob(os.path.join(glob.escape(self.control_dir), f"cm-*-{slot.index}")):
                with contextlib.suppress(OSError):
                    before[path] = os.stat(path).st_ino
            await self._control_op(slot, "stop")
            for path, inode in before.items():
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino == inode:
                        os.unlink(path)
        finally:
            self._resetting.discard(slot.index)

    async def _control_op(self, slot: Slot, op: str, timeout: float = 3.0) -> int | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(slot, None, "-O", op),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            return None
        try:
            async with asyncio.timeout(timeout):
                return await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return None

    async def close(self) -> None:
        """Stop every master (the proxy is exiting) and remove a control dir we made."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(self._control_op(s, "exit") for s in self.slots), return_exceptions=True)
        if self._own_dir:
            with contextlib.suppress(OSError):
                for name in os.listdir(self.control_dir):
                    os.unlink(os.path.join(self.control_dir, name))
                os.rmdir(self.control_dir)

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {"slot": s.index, "alive": s.alive, "in_flight": s.in_flight, "failures": s.failures}
            for s in self.slots
        ]
