"""Tunnel mode (``--tunnel-sessions N``): a few long-lived SSH sessions running the
``tunnel`` control word carry every request as a stream of frames
(``docs/wire-protocol.md`` section 8, codec in ``request_path.tunnel_frames``).

A ``TunnelStream`` looks like an ``ssh.Session`` to the server (``stdout.read``,
``stdin.write/drain/close``, ``kill``, ``close``), so the exchange code is the
same for both transports. Sessions are opened on demand through the pool's
masters, replaced after ``tunnel_max_age`` seconds (the new one first; the old
one takes no new streams and ends when its last stream does), and reopened
when they die (their streams end as an SSH failure would end them). A login
node that answers the word with anything but the greeting (an older
installation: a 400) puts the proxy back on one session per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..request_path import tunnel_frames as tf
from .config import ProxyConfig
from .ssh import SSH_FAILED, Session, SSHError, SSHPool

log = logging.getLogger("saia_ctl.proxy")

UNSUPPORTED_RETRY = 300.0  # seconds before asking a login node that did not know `tunnel` again
# Flow control: bytes of a stream's answer the login node may send ahead of what its client
# took, so a slow client holds at most this much here (and stalls its backend, not the session).
WINDOW = 256 * 1024
# Streams go to the oldest live session until it carries this many, and only then to the
# next: one login-node process groups more rows per transaction, and the sessions' processes
# do not contend for the database's write lock (spread evenly, two sessions made the chain
# ~30 % slower on a 2-core machine). The other sessions stand by, open, for the overflow
# and for when the first one dies or is replaced.
FILL = 32
_RECV = 256 * 1024


class TunnelUnsupported(Exception):
    """The login node does not know the ``tunnel`` word."""


class WindowsUnsupported(Exception):
    """The login node knows ``tunnel`` but not its flow control (an earlier version)."""


class _Writer:
    """The stream's request body, as BODY frames and an END."""

    def __init__(self, stream: TunnelStream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        if self.stream.ended:
            raise BrokenPipeError()
        for frame in tf.pieces(tf.BODY, self.stream.id, data):
            self.stream.conn.send(frame)

    async def drain(self) -> None:
        await self.stream.conn.drain()

    def close(self) -> None:
        if not self.stream.ended:
            self.stream.conn.send(tf.encode(tf.END, self.stream.id))


class TunnelStream:
    """One request over a tunnel session (the interface of ``ssh.Session`` the server uses)."""

    slot = None

    def __init__(self, conn: TunnelConn, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.got_output = False
        self.ended = False
        self.outcome: str | None = None  # DONE's payload; None while running or when the session died
        self.error = ""
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._rest = b""
        self.stdin = _Writer(self)
        self.left = conn.window  # bytes the login node may still send (None: no flow control)
        self.buffered = 0  # bytes of the answer received and not yet read
        self._taken = 0  # bytes read since the last grant

    @property
    def stdout(self) -> TunnelStream:
        return self

    async def read(self, n: int = -1) -> bytes:
        """The next piece of the answer; b"" once the stream ended."""
        if not self._rest:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)
                return b""
            self._rest = item
            self.buffered -= len(item)
        if n < 0 or n >= len(self._rest):
            data, self._rest = self._rest, b""
        else:
            data, self._rest = self._rest[:n], self._rest[n:]
        window = self.conn.window
        if window is not None and self.left is not None and not self.ended:
            self._taken += len(data)
            if self._taken >= window // 2:  # half the window taken: grant it again
                self.conn.send(tf.window(self.id, self._taken))
                self.left += self._taken
                self._taken = 0
        return data

    def _data(self, payload: bytes) -> None:
        if self.left is not None:
            self.left -= len(payload)
            if self.left < 0:
                log.error("tunnel stream %d: the login node sent past its window; stream cancelled", self.id)
                self.conn.send(tf.encode(tf.CANCEL, self.id))
                self._end(None, "the login node sent past the stream's window")
                return
        if payload:
            self.buffered += len(payload)
            self._queue.put_nowait(payload)

    def _end(self, outcome: str | None, error: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        self.outcome = outcome
        self.error = error
        self._queue.put_nowait(None)
        self.conn.streams.pop(self.id, None)
        self.conn.stream_ended()

    def kill(self) -> None:
        """The client went away: CANCEL the stream (the login node records it aborted)."""
        if not self.ended:
            self.conn.send(tf.encode(tf.CANCEL, self.id))
            self._end("aborted")

    async def wait(self, timeout: float = 5.0) -> int | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.ended:
                    await self.read()
        return self.returncode()

    def returncode(self) -> int | None:
        if not self.ended:
            return None
        if self.outcome is None:
            return SSH_FAILED  # the session died under it
        return 0 if self.outcome == "ok" else 1

    async def close(self) -> int | None:
        return self.returncode()

    def stderr_text(self) -> str:
        return self.error


class TunnelConn:
    """One SSH session running ``tunnel``."""

    def __init__(self, pool: SSHPool, cfg: ProxyConfig) -> None:
        self.pool = pool
        self.cfg = cfg
        self.sess: Session | None = None
        self.streams: dict[int, TunnelStream] = {}
        self.started = time.monotonic()
        self.dead = False
        self.draining = False
        self._next_id = 0
        self._out: list[bytes] = []  # frames of this turn of the event loop
        self._reader: asyncio.Task[None] | None = None
        self.window: int | None = None  # each stream's window, once the login node took the offer

    async def open(self, windows: bool = True) -> None:
        """Start the session and read its greeting; with ``windows``, offer flow control
        and read its answer. TunnelUnsupported, WindowsUnsupported or SSHError if not."""
        self.sess = await self.pool.start("tunnel", stdin=True)
        decoder = tf.Decoder(tf.TO_PROXY)
        hello = tf.encode(tf.HELLO, 0, tf.GREETING)
        data = b""
        frames: list[tuple[int, int, bytes]] = []
        try:
            async with asyncio.timeout(self.cfg.connect_timeout + self.cfg.control_timeout):
                while len(data) < len(hello):
                    chunk = await self.sess.stdout.read(_RECV)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(hello):
                    frames = decoder.feed(data)[1:]
                    if windows:
                        frames = await self._offer(decoder, frames)
        except TimeoutError:
            self._kill()
            raise SSHError("the tunnel session sent no greeting in time") from None
        except tf.FrameError as e:
            self._kill()
            raise SSHError(f"the tunnel session sent a broken frame: {e}") from None
        if not data.startswith(hello):
            if data:  # an answer, but no greeting: a login node without the word
                self._kill()
            # At the end of its output the session is ending by itself: its own exit status
            # (not a kill's) tells a failed connection (255) from a login node without the word.
            rc = await self.sess.close()
            if rc == SSH_FAILED and not data:
                raise SSHError(f"the tunnel session failed: {self.sess.stderr_text() or 'no output'}")
            raise TunnelUnsupported(data[:80].decode("utf-8", "replace").split("\r\n")[0])
        if windows and self.window is None:
            self._kill()
            await self.sess.close()
            raise WindowsUnsupported()
        self.sess.got_output = True
        self.started = time.monotonic()
        self._reader = asyncio.create_task(self._read_main(decoder, frames))

    async def _offer(
        self, decoder: tf.Decoder, frames: list[tuple[int, int, bytes]]
    ) -> list[tuple[int, int, bytes]]:
        """Offer flow control; the frames after the answer. A login node that knows it
        echoes the WINDOW frame; an earlier one ends the session with an error frame."""
        assert self.sess is not None and self.sess.stdin is not None
        self.sess.stdin.write(tf.window(0, WINDOW))
        while True:
            for i, (kind, sid, payload) in enumerate(frames):
                if sid == 0 and kind == tf.WINDOW:
                    self.window = WINDOW if tf.window_size(payload) == WINDOW else None
                    return frames[i + 1 :]
                if sid == 0 and kind == tf.ERROR:
                    return []
            chunk = await self.sess.stdout.read(_RECV)
            if not chunk:
                return []
            frames = decoder.feed(chunk)

    def _kill(self) -> None:
        if self.sess is not None:
            self.sess.kill()

    @property
    def age(self) -> float:
        return time.monotonic() - self.started

    @property
    def opened_streams(self) -> int:
        """Streams opened over this session so far."""
        return self._next_id

    def open_stream(self, command: bytes) -> TunnelStream:
        self._next_id += 1
        stream = TunnelStream(self, self._next_id)
        self.streams[stream.id] = stream
        self.send(tf.encode(tf.OPEN, stream.id, command))
        return stream

    def send(self, frame: bytes) -> None:
        """Queue a frame; the frames of one turn of the event loop go out in one write."""
        if self.dead or self.sess is None or self.sess.stdin is None:
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        if self.dead or self.sess is None or self.sess.stdin is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            self.sess.stdin.write(data)

    async def drain(self) -> None:
        if self.dead or self.sess is None or self.sess.stdin is None:
            raise BrokenPipeError()
        if self._out:
            self._flush()
        await self.sess.stdin.drain()

    async def _read_main(self, decoder: tf.Decoder, frames: list[tuple[int, int, bytes]]) -> None:
        assert self.sess is not None
        why = "the tunnel session ended"
        try:
            while True:
                for kind, sid, payload in frames:
                    stream = self.streams.get(sid)
                    if kind == tf.DATA:
                        if stream is not None:
                            stream.got_output = True
                            stream._data(payload)
                    elif kind == tf.DONE:
                        if stream is not None:
                            stream._end(payload.decode("ascii", "replace"))
                    elif kind == tf.WINDOW:
                        pass  # (stream 0: the answer to the offer, read by open)
                    elif kind == tf.ERROR:
                        text = payload.decode("utf-8", "replace")
                        if sid == 0:
                            log.error("tunnel session broken by the login node: %s", text)
                            return
                        if stream is not None:
                            stream._end(None, f"tunnel stream refused: {text}")
                data = await self.sess.stdout.read(_RECV)
                if not data:
                    return
                frames = decoder.feed(data)
        except tf.FrameError as e:
            why = f"the tunnel session sent a broken frame: {e}"
            log.error("%s", why)
        finally:
            self.dead = True
            for stream in list(self.streams.values()):
                stream._end(None, why)
            self._kill()
            await self.sess.close()

    def stream_ended(self) -> None:
        if self.draining and not self.streams:
            self.retire()

    def retire(self) -> None:
        """No new streams; close the session once its last stream ended (EOF on its stdin)."""
        self.draining = True
        if not self.streams and self.sess is not None and self.sess.stdin is not None and not self.dead:
            self._flush()
            with contextlib.suppress(OSError, RuntimeError):
                self.sess.stdin.close()

    async def stop(self, grace: float = 5.0) -> None:
        """The proxy is exiting: end of file on the session's stdin, so the login node
        records the requests still running as aborted and exits; killed after ``grace``."""
        self.draining = True
        if self.sess is not None and self.sess.stdin is not None and not self.dead:
            self._flush()
            with contextlib.suppress(OSError, RuntimeError):
                self.sess.stdin.close()
        if self.sess is not None and await self.sess.wait(grace) is None:
            self._kill()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class Tunnels:
    """The proxy's tunnel sessions: choose one for a request, replace old and dead ones."""

    def __init__(self, pool: SSHPool, cfg: ProxyConfig) -> None:
        self.pool = pool
        self.cfg = cfg
        self.conns: list[TunnelConn] = []
        self.unsupported_until = 0.0
        self.windows = True  # offer flow control (False once a login node did not know it)
        self.opened = 0
        self._lock = asyncio.Lock()

    async def stream(self, command: str) -> TunnelStream | None:
        """A new stream for ``command``; None: use a per-request session instead."""
        if time.monotonic() < self.unsupported_until:
            return None
        conn = await self._choose()
        return None if conn is None else conn.open_stream(command.encode("utf-8"))

    async def _choose(self) -> TunnelConn | None:
        async with self._lock:
            self.conns = [c for c in self.conns if not (c.dead or (c.draining and not c.streams))]
            live = [c for c in self.conns if not c.draining]
            old = [c for c in live if c.age >= self.cfg.tunnel_max_age]
            live = [c for c in live if c.age < self.cfg.tunnel_max_age]
            while len(live) < self.cfg.tunnel_sessions:  # new sessions first, then retire the old
                conn = TunnelConn(self.pool, self.cfg)
                try:
                    try:
                        await conn.open(self.windows)
                    except WindowsUnsupported:
                        log.warning(
                            "the login node's tunnel has no flow control (an earlier version): "
                            "a slow client's answer is buffered here whole"
                        )
                        self.windows = False
                        conn = TunnelConn(self.pool, self.cfg)
                        await conn.open(False)
                except TunnelUnsupported as e:
                    log.warning("the login node does not know 'tunnel' (%s): one session per request", e)
                    self.unsupported_until = time.monotonic() + UNSUPPORTED_RETRY
                    return None
                except SSHError as e:
                    log.warning("cannot open a tunnel session: %s", e)
                    break
                self.opened += 1
                self.conns.append(conn)
                live.append(conn)
            if old and live:
                for conn in old:
                    conn.retire()
            elif old:
                live = old  # no replacement could be opened: keep using the old ones
            if not live:
                return None
            for conn in live:  # the oldest first, while it is not crowded
                if len(conn.streams) < FILL:
                    return conn
            return min(live, key=lambda c: len(c.streams))

    async def close(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.conns), return_exceptions=True)

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {"age": round(c.age, 1), "streams": len(c.streams), "draining": c.draining, "dead": c.dead}
            for c in self.conns
        ]
