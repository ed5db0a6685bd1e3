"""The ``tunnel`` control word (``docs/wire-protocol.md`` section 8): one process
per SSH session serving many requests at once, framed by ``tunnel_frames``.

One implementation, two transports: every stream runs the per-request
handler (``handler.handle_request``, passed in: validation, routing, forwarding,
recording) in a thread of its own, with a pipe as its stdin (fed by BODY
frames, closed by END) and one end of a socketpair as its stdout (read by
the pump thread, which turns it into DATA frames). What the handler answers
is therefore byte for byte what a per-request session would print.

The rows are written by ``Batcher``: the start rows of requests that arrive
while a transaction is running are written together in the next one (group
commit), still before anything is forwarded; ends likewise. A row that cannot
be written is the same 503 as on the per-request path.

When the session ends (stdin reaches end of file, the SSH channel breaks, a
malformed frame, a signal) every stream still running sees its client go
away (its socketpair is closed): it is recorded ``aborted`` by its own
handler, and the process exits once they are all closed.
"""

from __future__ import annotations

import _socket
import os
import select
import threading
import time
from _queue import Empty, SimpleQueue

from .. import rawdb
from . import records, store, wire
from . import tunnel_frames as tf
from .forward import Backends, ClientGone, write_all
from .log import Log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable
    from typing import Any

    from ..settings import Settings
    from .admission import Decision

    # handler.handle_request, passed in (the handler imports this module)
    Handle = Callable[[wire.ParsedRequest, Settings, int, int, Log, records.Records, Backends], int]

_signal = __import__("_signal")
if not TYPE_CHECKING:
    from _collections import deque  # `collections` itself imports a dozen modules

MAX_STREAMS = 4096  # streams open at once in one session
_RECV = 65536
HOLD_CACHE = 1.0  # seconds a service's hold time (and whether it is enabled) is reused
SHUTDOWN_WAIT = 30.0  # seconds the handlers get to close their rows when the session ends
IDLE_WORKER = 30.0  # seconds a handler thread waits for the next stream before it ends
# Request body the reader holds for handlers that have not read it yet (their backend is
# slow or stuck): the reader never waits for a handler, so one stream's backend cannot
# stall the others. Per stream: the proxy's largest JSON body (its --max-body default), so
# a body read whole by the proxy always fits; per session: a bound on the process's memory.
# A stream that would go over either ends with X (its request recorded aborted).
BODY_BUFFER = 64 * 1024 * 1024
SESSION_BODY_BUFFER = 256 * 1024 * 1024


class Batcher(records.Records):
    """Writes the rows of concurrent requests in shared transactions (group commit).

    Whoever finds no transaction running writes everything queued in one
    ``BEGIN IMMEDIATE`` itself (a start row: the stream's own thread, so an
    uncontended request waits for no other thread); what is queued meanwhile
    goes into the next transaction, written by one of the callers waiting for
    it, or by the writer thread when only ends (which nobody waits for) are
    left. Should a group fail, each item is retried in a transaction of its
    own, so one bad row never costs the others theirs.
    """

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._writing = False  # a transaction is being written (by a caller or the writer thread)
        self._stopping = False
        self._conn: rawdb.Connection | None = None
        self.transactions = 0  # how many were written (tests see the grouping)
        self._gates: dict[str, tuple[tuple[float, str] | None, float]] = {}
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def open(self, settings: Settings) -> rawdb.Connection | None:
        return None  # streams need no connection of their own: fewer readers, fewer lock waits

    def gate(self, conn: rawdb.Connection | None, service_id: str) -> tuple[float, str] | None:
        """Read by the writer thread, kept for ``HOLD_CACHE`` seconds (a service
        enabled, disabled or drained is seen that much later)."""
        now = time.monotonic()
        cached = self._gates.get(service_id)
        if cached is not None and now - cached[1] < HOLD_CACHE:
            return cached[0]
        value: tuple[float, str] | None = self._submit(_Item("gate", (service_id,)))  # type: ignore[assignment]
        self._gates[service_id] = (value, now)
        return value

    def start(
        self, conn: rawdb.Connection | None, req: wire.ParsedRequest, bytes_in: int, now: float, tz: str
    ) -> records.Start:
        return self._submit(_Item("start", (req, bytes_in, now, tz)))  # type: ignore[return-value]

    def end(
        self, conn: rawdb.Connection | None, row: int, record: dict[str, Any], admission: Decision | None
    ) -> None:
        """Queued, not waited for: the answer is complete, and its stream's end need not
        wait for a commit. A row that cannot be closed is logged with its record, as
        the per-request path does, and ``stop`` writes what is queued before exit."""
        self._submit(_Item("end", (row, record, admission)), wait=False)

    def _submit(self, item: _Item, wait: bool = True) -> object:
        with self._cond:
            if self._stopping and wait:
                raise rawdb.Error("the tunnel is shutting down")
            self._queue.append(item)
            if not wait:
                if not self._writing:
                    self._cond.notify_all()  # the writer thread takes it
                return None
            while not item.finished:
                if not self._writing:  # nobody is writing: this caller writes what is queued
                    self._writing = True
                    items, self._queue = self._queue, []
                    break
                self._cond.wait()
            else:
                items = []
        if items:
            self._group(items)
        if item.error is not None:
            raise item.error
        return item.result

    def _connection(self) -> rawdb.Connection:
        if self._conn is None:
            s = self.settings
            self._conn = rawdb.connect(s.db_path, journal_mode=s.journal_mode, busy_timeout=s.busy_timeout)
        return self._conn

    def _write(self, items: list[_Item]) -> None:
        conn = self._connection()
        with rawdb.immediate(conn, poll=self.settings.busy_timeout):
            results = [_apply(conn, item) for item in items]
        self.transactions += 1
        for item, result in zip(items, results, strict=True):
            item.result = result

    def _run(self) -> None:
        """The writer thread: writes what is queued when no caller does (ends), and at stop."""
        while True:
            with self._cond:
                while (self._writing or not self._queue) and not (self._stopping and not self._writing):
                    self._cond.wait()
                if not self._queue:
                    break
                self._writing = True
                items, self._queue = self._queue, []
            self._group(items)
        if self._conn is not None:
            self._conn.close()

    def _group(self, items: list[_Item]) -> None:
        """Write ``items`` in one transaction (the caller set ``_writing``), then let the
        next writer take what was queued meanwhile."""
        try:
            self._write(items)
        except Exception:
            if len(items) > 1:
                for item in items:
                    self._write_alone(item)
            else:
                self._write_alone(items[0])
        for item in items:
            if item.kind == "end" and item.error is not None:
                import json

                row, record, _admission = item.args
                self.log(f"cannot close request row {row}: {item.error}; record: {json.dumps(record)}")
        with self._cond:
            for item in items:
                item.finished = True
            self._writing = False
            self._cond.notify_all()

    def _write_alone(self, item: _Item) -> None:
        try:
            self._write([item])
            item.error = None
        except rawdb.DatabaseUnavailable as e:
            self._conn = None
            item.error = rawdb.Error(str(e))
        except rawdb.Error as e:
            item.error = e
        except Exception as e:  # a bug: the caller treats it as one
            item.error = e

    def stop(self) -> None:
        """Write what is queued, then end the writer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()


class _Item:
    __slots__ = ("args", "error", "finished", "kind", "result")

    def __init__(self, kind: str, args: tuple[object, ...]) -> None:
        self.kind = kind
        self.args = args
        self.finished = False  # written (or failed), under the batcher's condition
        self.result: object = None
        self.error: BaseException | None = None


def _apply(conn: rawdb.Connection, item: _Item) -> object:
    if item.kind == "gate":
        (service_id,) = item.args
        return store.service_gate(conn, service_id)  # type: ignore[arg-type]
    if item.kind == "start":
        req, bytes_in, now, tz = item.args
        return records.start_row(conn, req, bytes_in, now, tz)  # type: ignore[arg-type]
    row, record, admission = item.args
    records.end_row(conn, row, record, admission)  # type: ignore[arg-type]
    return None


class Workers:
    """The threads that run the streams' handlers, each kept for the next stream
    (starting a thread per stream cost a clone and a handshake with it every time);
    one idle for ``IDLE_WORKER`` seconds ends."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job; each job put is taken by one of them
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.started = 0  # threads started (tests see the reuse)

    def run(self, fn: Callable[..., None], *args: object) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put((fn, args))
                return
            self.started += 1
            thread = threading.Thread(target=self._main, args=((fn, args),), name="stream", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _main(self, job: tuple[Callable[..., None], tuple[object, ...]] | None) -> None:
        while job is not None:
            fn, args = job
            fn(*args)  # never raises: _stream_main catches what the handler did not
            del fn, args
            with self._lock:
                if self._stopping:
                    return
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_WORKER)
            except Empty:
                with self._lock:  # a job put meanwhile was counted for a waiting thread: take it
                    try:
                        job = self._jobs.get_nowait()
                    except Empty:
                        self._idle -= 1
                        return

    def stop(self, timeout: float) -> None:
        """End the idle threads (the session is over) and wait up to ``timeout`` for them."""
        with self._lock:
            self._stopping = True
            for _ in range(self._idle):
                self._jobs.put(None)
            self._idle = 0
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


class Stream:
    """One request of the session: the handler's thread and its two descriptors."""

    __slots__ = (
        "body_end",
        "body_polled",
        "body_w",
        "cancelled",
        "credit",
        "handler_rc",
        "id",
        "lock",
        "out_done",
        "out_r",
        "paused",
        "pending",
        "pending_bytes",
        "refused",
    )

    def __init__(self, stream_id: int, credit: int | None) -> None:
        self.id = stream_id
        # Bytes of DATA the proxy still takes (None: no flow control). At 0 the pump stops
        # reading the handler's stdout: its writes block, and it stops reading the backend.
        self.credit = credit
        self.paused = False  # the pump does not read out_r until the proxy grants more
        self.body_w: int | None = None  # write end of the handler's stdin (non-blocking)
        # Body the pipe did not take yet, written by the pump as the handler reads (under lock).
        self.pending: deque[memoryview] = deque()
        self.pending_bytes = 0
        self.body_polled = False  # body_w is in the pump's poller, waiting to take more
        self.body_end = False  # END came: body_w is closed once pending is written
        self.refused = False  # ended with X: no F follows
        self.out_r: _socket.socket | None = None  # the tunnel's end of the handler's stdout
        self.handler_rc: int | None = None
        self.out_done = False
        self.cancelled = False
        self.lock = threading.Lock()


class Tunnel:
    """One session: reads frames from ``stdin``, runs streams, writes frames to ``stdout``.

    ``serve`` runs a validated request (tests replace it); by default it is the
    per-request handler with this session's ``Batcher``.
    """

    def __init__(
        self,
        settings: Settings | None,
        log: Log,
        stdin: int,
        stdout: int,
        serve: object = None,
        handle: Handle | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.stdin = stdin
        self.stdout = stdout
        self.streams: dict[int, Stream] = {}
        self.last_opened = 0
        self.dead = False
        self.window: int | None = None  # each stream's first window, once the proxy offered flow control
        self._broken: bytes | None = None  # why the session must end (a malformed frame of stream 0)
        self._out_lock = threading.Lock()
        self._out: list[bytes] = []  # frames waiting to be written
        self._writing = False  # a thread is writing them
        self._streams_lock = threading.Lock()
        self.handle = handle
        self.batcher = Batcher(settings, log) if settings is not None and serve is None else None
        self._serve = serve if serve is not None else self._handle
        self._poller = select.epoll()
        self._by_fd: dict[int, Stream] = {}  # out_r's descriptor -> its stream
        self._body_by_fd: dict[int, Stream] = {}  # body_w's, while the pump writes its pending body
        self._buffer_lock = threading.Lock()
        self.buffered = 0  # bytes of request bodies held for handlers (all streams)
        self._wake_r, self._wake_w = os.pipe()
        self._poller.register(self._wake_r, select.EPOLLIN)
        self._pump = threading.Thread(target=self._pump_main, name="pump", daemon=True)
        self._pump.start()
        self._keepalive: threading.Thread | None = None
        self.workers = Workers()
        self.backends = Backends()  # kept-alive connections, shared by the streams

    # -- sending -----------------------------------------------------------------
    def send(self, kind: int, stream: int, payload: bytes = b"") -> None:
        """Queue a frame; the first sender writes what is queued, so frames sent
        meanwhile by other threads go out together in one write (fewer SSH packets)."""
        if self.dead:
            return
        with self._out_lock:
            self._out.append(tf.encode(kind, stream, payload))
            if self._writing:
                return
            self._writing = True
        while True:
            with self._out_lock:
                if not self._out or self.dead:
                    self._out.clear()
                    self._writing = False
                    return
                data = b"".join(self._out)
                self._out.clear()
            try:
                write_all(self.stdout, data)
            except ClientGone:
                self.dead = True

    # -- the reader (main thread) --------------------------------------------------
    def run(self) -> int:
        """Serve the session until it ends; returns the exit status."""
        decoder = tf.Decoder(tf.TO_LOGIN)
        self.send(tf.HELLO, 0, tf.GREETING)
        rc = 0
        try:
            while not self.dead:
                try:
                    data = os.read(self.stdin, _RECV)
                except OSError:
                    break
                if not data:
                    break
                try:
                    frames = decoder.feed(data)
                except tf.FrameError as e:
                    self.send(tf.ERROR, 0, str(e).encode("ascii", "replace"))
                    rc = 1
                    break
                for kind, sid, payload in frames:
                    self.dispatch(kind, sid, payload)
                    if self._broken is not None:
                        break
                if self._broken is not None:
                    self.send(tf.ERROR, 0, self._broken)
                    rc = 1
                    break
        finally:
            global _session_ending
            _session_ending = True  # a signal now must not interrupt the shutdown (see _on_signal)
            self.shutdown()
        return rc

    def dispatch(self, kind: int, sid: int, payload: bytes) -> None:
        """One frame from the proxy. Never raises: a bad frame ends its stream with ERROR."""
        if kind == tf.PING:
            self.send(tf.PONG, sid)
            self._keep_alive()
            return
        if kind == tf.OPEN:
            self._open(sid, payload)
            return
        if kind == tf.WINDOW and sid == 0:
            self._offer(payload)
            return
        st = self.streams.get(sid)
        if st is None:
            # A stream that already ended may still get body or a cancel: ignore them.
            # A stream never opened is an error of the proxy's.
            if sid == 0 or sid > self.last_opened:
                self.send(tf.ERROR, sid, b"no such stream")
            return
        if kind == tf.BODY:
            if st.body_end:
                self.send(tf.ERROR, sid, b"body after the end of the body")
                self._cancel(st)
                return
            self._feed(st, payload)  # (dropped when the handler no longer reads it)
        elif kind == tf.END:
            self._end_body(st)
        elif kind == tf.CANCEL:
            self._cancel(st)
        elif kind == tf.WINDOW:
            self._grant(st, payload)

    def _offer(self, payload: bytes) -> None:
        """The proxy does flow control: streams opened from now on start with this window."""
        size = tf.window_size(payload)
        if size is None:
            self._broken = b"malformed window frame"
            return
        self.window = size
        self.send(tf.WINDOW, 0, payload)  # the answer: this login node keeps to windows

    def _grant(self, st: Stream, payload: bytes) -> None:
        size = tf.window_size(payload)
        if size is None:
            self.send(tf.ERROR, st.id, b"malformed window frame")
            self._cancel(st)
            return
        with st.lock:
            if st.credit is None:
                return  # opened before the offer: not flow controlled
            st.credit = min(st.credit + size, tf.MAX_WINDOW)
            self._resume(st)

    def _resume(self, st: Stream) -> None:
        """(Under ``st.lock``.) The pump reads the stream's output again."""
        if st.paused and st.out_r is not None:
            st.paused = False
            self._poller.register(st.out_r.fileno(), select.EPOLLIN)

    def _open(self, sid: int, command: bytes) -> None:
        if sid == 0 or sid <= self.last_opened:
            self.send(tf.ERROR, sid, b"stream id not above the last one opened")
            return
        self.last_opened = sid
        if len(self.streams) >= MAX_STREAMS:
            self.send(tf.ERROR, sid, b"too many streams open in this session")
            return
        try:
            parsed = wire.parse_command(command)
            if not isinstance(parsed, wire.ParsedRequest):
                raise wire.WireError(400, "a tunnel stream carries a request, not a control word")
        except wire.WireError as e:
            self.send(tf.DATA, sid, wire.error_response(e.status, e.message))
            self.send(tf.DONE, sid, b"error")
            return
        st = Stream(sid, self.window)
        body_r, st.body_w = os.pipe()
        os.set_blocking(st.body_w, False)  # the reader never waits for a handler (see _feed)
        out_r, out_w = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        out_r.setblocking(False)  # an event for a descriptor number since reused must not block the pump
        st.out_r = out_r
        out_fd = out_w.detach()
        with self._streams_lock:
            self.streams[sid] = st
            self._by_fd[out_r.fileno()] = st
        self._poller.register(out_r.fileno(), select.EPOLLIN)
        self.workers.run(self._stream_main, st, parsed, body_r, out_fd)

    def _feed(self, st: Stream, data: bytes) -> None:
        """(The reader.) A piece of the body into the handler's stdin without waiting: what
        the pipe does not take now is kept, and the pump writes it as the handler reads. A
        stream whose kept body would go over ``BODY_BUFFER`` (or the session's over
        ``SESSION_BODY_BUFFER``) ends with X: its backend is not taking its request."""
        with st.lock:
            fd = st.body_w
            if fd is None:
                return  # the handler ended or stopped reading (answered early): drop it
            if not st.pending:
                try:
                    n = os.write(fd, data) if data else 0
                except BlockingIOError:
                    n = 0
                except OSError:  # the handler closed its stdin: drop the rest
                    n = len(data)
                if n == len(data):
                    return
                data = data[n:]
            size = len(data)
            fits = st.pending_bytes + size <= BODY_BUFFER
            if fits:
                with self._buffer_lock:
                    fits = self.buffered + size <= SESSION_BODY_BUFFER
                    if fits:
                        self.buffered += size
            if fits:
                st.pending.append(memoryview(data))
                st.pending_bytes += size
                if not st.body_polled:
                    st.body_polled = True
                    with self._streams_lock:
                        self._body_by_fd[fd] = st
                    self._poller.register(fd, select.EPOLLOUT)
                return
            st.refused = True
        self.send(tf.ERROR, st.id, b"request body not taken by the backend: too much of it waiting")
        self._cancel(st)

    def _drain(self, st: Stream, fd: int) -> None:
        """(The pump.) The handler's stdin takes more: write what is kept for it."""
        with st.lock:
            if st.body_w != fd:
                return  # closed meanwhile (its number may be another stream's now)
            written = 0
            broken = False
            pending = st.pending
            try:
                while pending:
                    piece = pending[0]
                    n = os.write(fd, piece)
                    written += n
                    if n < len(piece):
                        pending[0] = piece[n:]
                        break
                    pending.popleft()
            except BlockingIOError:
                pass
            except OSError:
                broken = True  # the handler closed its stdin
            st.pending_bytes -= written
            self._release(written)
            if pending and not broken:
                return
            self._unpoll_body(st, fd)
            if not broken and not st.body_end:
                return
        self._close_body(st)

    def _release(self, n: int) -> None:
        if n:
            with self._buffer_lock:
                self.buffered -= n

    def _unpoll_body(self, st: Stream, fd: int) -> None:
        """(Under ``st.lock``.) The pump stops writing ``fd``."""
        if st.body_polled:
            st.body_polled = False
            with self._streams_lock:
                self._body_by_fd.pop(fd, None)
            self._poller.unregister(fd)

    def _end_body(self, st: Stream) -> None:
        """END: the handler's stdin reaches end of file once what is kept is written."""
        with st.lock:
            st.body_end = True
            if st.pending:
                return  # the pump closes it when it has written the rest
        self._close_body(st)

    def _close_body(self, st: Stream) -> None:
        """Close the handler's stdin now; what is kept for it is dropped."""
        with st.lock:
            fd, st.body_w = st.body_w, None
            if fd is None:
                return
            self._unpoll_body(st, fd)
            dropped, st.pending_bytes = st.pending_bytes, 0
            st.pending.clear()
            self._release(dropped)
            os.close(fd)

    def _cancel(self, st: Stream) -> None:
        """The client went away: the handler sees its stdout closed and its stdin end."""
        st.cancelled = True
        self._close_body(st)
        with st.lock:
            sock = st.out_r
            self._resume(st)  # what is left is read and dropped, so the stream can end
        if sock is not None:
            try:
                sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the handler side ------------------------------------------------------------
    def _handle(self, req: wire.ParsedRequest, stdin: int, stdout: int) -> int:
        assert self.settings is not None and self.batcher is not None and self.handle is not None
        return self.handle(req, self.settings, stdin, stdout, Log(self.log_home), self.batcher, self.backends)

    @property
    def log_home(self) -> str | None:
        path = self.log.path
        return None if path is None else path.rsplit("/", 2)[0]

    def _stream_main(self, st: Stream, req: wire.ParsedRequest, stdin: int, stdout: int) -> None:
        rc = 1
        try:
            rc = self._serve(req, stdin, stdout)  # type: ignore[operator]
        except Exception as e:  # a bug: the handler catches its own; this is the tunnel's
            self.log.bug(f"tunnel stream {st.id}: {type(e).__name__}: {e}", e)
        finally:
            for fd in (stdin, stdout):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._close_body(st)
            st.handler_rc = rc
            self._maybe_done(st)

    # -- the pump: answers to DATA frames ------------------------------------------------
    def _pump_main(self) -> None:
        while True:
            events = self._poller.poll()
            for fd, _ev in events:
                if fd == self._wake_r:
                    return
                with self._streams_lock:
                    st = self._by_fd.get(fd)
                    body_st = self._body_by_fd.get(fd) if st is None else None
                if body_st is not None:
                    self._drain(body_st, fd)
                    continue
                if st is None or st.out_r is None:
                    continue
                credit = st.credit
                try:
                    data = st.out_r.recv(
                        _RECV if credit is None or st.cancelled else max(1, min(credit, _RECV))
                    )
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    if not st.cancelled:
                        if credit is not None:
                            self._spend(st, len(data))
                        self.send(tf.DATA, st.id, data)
                    continue
                with self._streams_lock:
                    self._by_fd.pop(fd, None)
                self._poller.unregister(fd)
                with st.lock:
                    st.out_r.close()
                    st.out_r = None
                st.out_done = True
                self._maybe_done(st)

    def _spend(self, st: Stream, n: int) -> None:
        """(The pump.) ``n`` bytes of the stream's window used; at 0, stop reading it."""
        with st.lock:
            assert st.credit is not None
            st.credit -= n
            if st.credit <= 0 and not st.cancelled and st.out_r is not None and not st.paused:
                st.paused = True
                self._poller.unregister(st.out_r.fileno())

    def _maybe_done(self, st: Stream) -> None:
        with st.lock:
            if not st.out_done or st.handler_rc is None or st.id not in self.streams:
                return
            with self._streams_lock:
                del self.streams[st.id]
        if st.refused:
            return  # its X went out already
        outcome = b"aborted" if st.cancelled else (b"ok" if st.handler_rc == 0 else b"error")
        self.send(tf.DONE, st.id, outcome)

    # -- keep-alive -----------------------------------------------------------------------
    def _keep_alive(self) -> None:
        """A throttled tick, as the ``keep-alive`` word starts one (never two at once)."""
        if self.settings is None or (self._keepalive is not None and self._keepalive.is_alive()):
            return
        settings = self.settings

        def run() -> None:
            from . import control

            null = os.open(os.devnull, os.O_WRONLY)
            try:
                control.keep_alive(settings, null, self.log)
            except Exception as e:
                self.log.bug(f"tunnel keep-alive: {type(e).__name__}: {e}", e)
            finally:
                os.close(null)

        self._keepalive = threading.Thread(target=run, name="keep-alive", daemon=True)
        self._keepalive.start()

    # -- the end ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Every stream still running loses its client; wait for their rows; stop the threads."""
        for st in list(self.streams.values()):
            self._cancel(st)
        deadline = time.monotonic() + SHUTDOWN_WAIT
        while (
            self.streams and time.monotonic() < deadline
        ):  # their handlers end, the pump reads their last bytes
            time.sleep(0.002)
        self.workers.stop(max(0.0, deadline - time.monotonic()))
        os.write(self._wake_w, b"x")
        self._pump.join(5.0)
        for st in list(self.streams.values()):  # only after SHUTDOWN_WAIT: handlers that hang
            if st.out_r is not None:
                st.out_r.close()
        self._poller.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.backends.close()
        if self.batcher is not None:
            self.batcher.stop()
        if self._keepalive is not None:
            self._keepalive.join(max(0.0, deadline - time.monotonic()))


class _Stop(Exception):
    pass


_session_ending = False


def _on_signal(signum: int, _frame: object) -> None:
    """The first signal ends the session; later ones must not interrupt its shutdown."""
    global _session_ending
    if not _session_ending:
        _session_ending = True
        raise _Stop(signum)


def confine_to_one_cpu() -> None:
    """Keep this process (and the threads it starts from now on) on one of the CPUs it
    may use, chosen by its PID. Its threads take turns at one interpreter lock; spread
    over several cores they pass it from core to core, and that hand-over (futex calls,
    cache misses) cost the session ~30-40 % more CPU per request than the work itself."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) > 1:
            os.sched_setaffinity(0, {allowed[os.getpid() % len(allowed)]})
    except (AttributeError, OSError):  # not Linux, or not allowed: run where the system says
        pass


def serve(settings: Settings, stdin: int, stdout: int, log: Log, handle: Handle) -> int:
    """The ``tunnel`` control word: serve frames until the session ends; ``handle``
    is the per-request handler (``handler.handle_request``)."""
    global _session_ending
    _session_ending = False
    if settings.tunnel_cpus == "one":
        confine_to_one_cpu()  # first: every thread of the session inherits it
    for name in ("SIGHUP", "SIGINT", "SIGTERM"):
        _signal.signal(getattr(_signal, name), _on_signal)
    log.tag = "tunnel"
    tunnel = Tunnel(settings, log, stdin, stdout, handle=handle)
    try:
        return tunnel.run()
    except _Stop:
        return 1
    finally:
        _session_ending = True  # a signal during what follows (closing stdout) changes nothing
