"""Forward one request to a backend job over a raw socket and stream the answer
back to the client (``write_all``, ``release_stdout``) as ``curl -i -N``
prints it: the status line and headers as received (``Name: value`` lines),
an empty line, then the body de-chunked, written as it arrives. ``http.client`` is not used: importing it costs ~40 ms.

Uses ``_socket`` rather than ``socket`` (which imports ``enum`` and
``selectors``, ~10 ms) — the same C module underneath.
"""

from __future__ import annotations

import _socket
import os
import select
import time

from .wire import REASONS

MAX_HEAD = 65536  # bytes of status line + headers we accept from a backend
USAGE_TAIL = 65536  # bytes of the answer's end kept to find its `usage`
_RECV = 65536
_POLL_GONE = select.POLLERR | select.POLLHUP | select.POLLNVAL


# --- the client's side: the answer goes out on ``stdout`` (the SSH channel, or
# a tunnel stream's socket), unbuffered, and ends by pointing ``stdout``
# at /dev/null.


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


# --- the backend's side --------------------------------------------------------


class BackendError(Exception):
    """The backend could not be used before any byte reached the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BackendClosed(BackendError):
    """The backend closed (or reset) the connection before any byte of an answer:
    on a kept-alive connection, a request that can be sent again on a new one."""


class BrokenAnswer(Exception):
    """The backend broke off (closed, reset, timed out) after the answer began."""


def connect(host: str, port: int, timeout: float) -> _socket.socket:
    """A TCP connection to the backend; BackendError 502 (refused, unknown host) or 504 (timeout)."""
    try:
        # A bytes host: a str one goes through the idna codec, which imports re and enum (~8 ms).
        infos = _socket.getaddrinfo(host.encode("ascii", "replace"), port, 0, _socket.SOCK_STREAM)
    except OSError as e:
        raise BackendError(502, f"cannot resolve backend host {host}: {e}") from None
    failure = BackendError(502, f"cannot connect to backend {host}:{port}")
    for family, kind, proto, _, addr in infos:
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except TimeoutError:
            sock.close()
            failure = BackendError(
                504, f"backend {host}:{port} did not accept the connection in {timeout:g} s"
            )
            continue
        except OSError as e:
            sock.close()
            failure = BackendError(502, f"backend {host}:{port} refused the connection: {e.strerror or e}")
            continue
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock
    raise failure


class Backends:
    """Idle kept-alive connections to backends, for the next request to the same one
    (the tunnel's streams: one process serves many requests). A connection is only
    kept after an answer that ended cleanly, and one the backend has closed or
    written to meanwhile is dropped when taken."""

    MAX_IDLE = 64  # per backend

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int], list[_socket.socket]] = {}

    def take(self, host: str, port: int) -> _socket.socket | None:
        while True:
            with self._lock:
                idle = self._idle.get((host, port))
                if not idle:
                    return None
                sock = idle.pop()
            check = select.poll()
            check.register(sock.fileno(), select.POLLIN)
            if not check.poll(0):  # nothing to read: neither closed nor out of step
                return sock
            sock.close()

    def give(self, host: str, port: int, sock: _socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault((host, port), [])
            if len(idle) < self.MAX_IDLE:
                idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for sock in idle:
                    sock.close()
            self._idle.clear()


def request_head(
    method: str,
    path: str,
    host: str,
    port: int,
    headers: list[tuple[str, str]],
    secret: str,
    framing: tuple[str, str] | None,
    keep_alive: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.append(f"Authorization: Bearer {secret}")
    if not keep_alive:
        lines.append("Connection: close")
    if framing is not None:
        lines.append(f"{framing[0]}: {framing[1]}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class Answer:
    """The backend's answer head, normalised for the client."""

    __slots__ = ("chunked", "head", "keep_alive", "length", "rest", "status")

    def __init__(self, status: int, head: bytes, chunked: bool, length: int | None, rest: bytes) -> None:
        # HTTP/1.1 without `Connection: close`: the connection may carry the next request
        low = head.lower()
        self.keep_alive = low.startswith(b"http/1.1 ") and b"\r\nconnection: close" not in low
        self.status = status
        self.head = head  # status line + headers + blank line, ready to write
        self.chunked = chunked
        self.length = length  # Content-Length, None if absent
        self.rest = rest  # body bytes that came with the head


def _wait(poller: select.poll, sock_fd: int, out_fd: int, timeout: float) -> bool:
    """Wait for the backend to send; False on timeout. ClientGone if stdout closed."""
    events = poller.poll(timeout * 1000)
    if not events:
        return False
    for fd, ev in events:
        if fd == out_fd and ev & _POLL_GONE:
            raise ClientGone()
    return True


def send_watching(sock: _socket.socket, data: bytes, out_fd: int, timeout: float) -> None:
    """``sock.sendall(data)`` that also watches the client: ClientGone as soon as
    ``out_fd`` is closed (a cancelled tunnel stream, a broken SSH channel), even while
    a backend that stopped reading keeps the send waiting; TimeoutError after
    ``timeout`` seconds without progress, as ``sendall`` under the socket's timeout."""
    view = memoryview(data)
    fd = sock.fileno()  # non-blocking at the descriptor: the socket has a timeout
    poller: select.poll | None = None
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        if poller is None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            try:
                poller.register(out_fd, 0)  # reports only POLLERR/POLLHUP
            except (OSError, ValueError):
                pass
        events = poller.poll(timeout * 1000)
        if not events:
            raise TimeoutError("the backend took no more of the request in time")
        for efd, ev in events:
            if efd == out_fd and ev & _POLL_GONE:
                raise ClientGone()


def make_poller(sock_fd: int, out_fd: int) -> select.poll:
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    try:
        poller.register(out_fd, 0)  # reports only POLLERR/POLLHUP: the SSH channel went away
    except (OSError, ValueError):
        pass
    return poller


def parse_head(raw: bytes) -> tuple[int, bytes, bool, int | None]:
    """(status, normalised head, chunked?, content length) of one response head."""
    lines = raw.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise BackendError(502, "the backend's answer does not start with an HTTP status line")
    status = int(parts[1])
    reason = parts[2].strip() if len(parts) == 3 else b""
    if not reason:
        # The SAIA proxy splits the status line in three: give it a reason.
        reason = REASONS.get(status, "Unknown").encode("ascii")
    out = [parts[0] + b" " + parts[1] + b" " + reason]
    headers: list[list[bytes]] = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            headers[-1][1] += b" " + line.strip()
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BackendError(502, "the backend sent a malformed header line")
        headers.append([name, value.strip()])
    chunked = False
    length: int | None = None
    for name, value in headers:
        low = name.lower()
        if low == b"transfer-encoding" and value.lower().endswith(b"chunked"):
            chunked = True
        elif low == b"content-length":
            if not value.isdigit():
                raise BackendError(502, "the backend sent a bad Content-Length")
            length = int(value)
        # The SAIA proxy splits header lines on ': ', so always write one.
        out.append(name + b": " + value)
    return status, b"\r\n".join(out) + b"\r\n\r\n", chunked, (None if chunked else length)


def read_answer_head(
    sock: _socket.socket, out_fd: int, poller: select.poll, timeout: float, deadline: float
) -> tuple[Answer, float]:
    """Read the answer head (skipping interim 1xx answers); returns it and the first-byte time."""
    buf = b""
    first_byte_at = 0.0
    while True:
        end = buf.find(b"\r\n\r\n")
        sep = 4
        if end < 0:
            end = buf.find(b"\n\n")
            sep = 2
        if end >= 0:
            status, head, chunked, length = parse_head(buf[:end])
            rest = buf[end + sep :]
            if 100 <= status < 200 and status != 101:
                buf = rest  # `100 Continue` and friends: not part of the answer
                continue
            return Answer(status, head, chunked, length, rest), first_byte_at
        if len(buf) > MAX_HEAD:
            raise BackendError(502, f"the backend's answer head is longer than {MAX_HEAD} bytes")
        left = deadline - time.time()
        if left <= 0 or not _wait(poller, sock.fileno(), out_fd, left):
            raise BackendError(504, f"the backend sent no answer headers within {timeout:g} s")
        try:
            data = sock.recv(_RECV)
        except OSError as e:
            if not buf:
                raise BackendClosed(502, f"the backend closed the connection: {e.strerror or e}") from None
            raise BackendError(502, f"the backend closed the connection: {e.strerror or e}") from None
        if not data:
            if not buf:
                raise BackendClosed(502, "the backend closed the connection before answering")
            raise BackendError(502, "the backend closed the connection before answering")
        if not first_byte_at:
            first_byte_at = time.time()
        buf += data


class ChunkDecoder:
    """Incremental decoder of ``Transfer-Encoding: chunked`` (RFC 9112 7.1)."""

    __slots__ = ("buf", "done", "extra", "left", "state")

    def __init__(self) -> None:
        self.extra = False  # bytes came after the last chunk (the connection is out of step)
        self.buf = b""
        self.left = 0  # data bytes left in the current chunk
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers, 4 done
        self.done = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        while pos < n and not self.done:
            if self.state == 1:
                take = min(self.left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = 2
                continue
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if n - pos > 4096:
                    raise BrokenAnswer("chunk size line too long")
                break
            line = buf[pos:eol].rstrip(b"\r")
            pos = eol + 1
            if self.state == 0:
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BrokenAnswer("bad chunk size") from None
                if size == 0:
                    self.state = 3
                else:
                    self.left = size
                    self.state = 1
            elif self.state == 2:
                if line:
                    raise BrokenAnswer("missing CRLF after a chunk")
                self.state = 0
            elif self.state == 3 and not line:
                self.state = 4
                self.done = True
        if self.done and pos < n:
            self.extra = True
        self.buf = buf[pos:] if not self.done else b""
        return b"".join(out)


class Delivery:
    """What happened to the answer body."""

    __slots__ = ("bytes_out", "clean", "complete", "error", "tail")

    def __init__(self) -> None:
        self.bytes_out = 0
        self.complete = False
        self.clean = False  # complete, framed by its length or chunks, nothing after it
        self.error: str | None = None
        self.tail = b""  # the last USAGE_TAIL bytes of the body


def stream_body(
    sock: _socket.socket,
    answer: Answer,
    out_fd: int,
    poller: select.poll,
    timeout: float,
    no_body: bool,
    result: Delivery,
    head: bytes = b"",
) -> None:
    """Copy the body to ``out_fd`` as it arrives; fills ``result`` as it goes.

    ``head`` (the answer's head, not counted in ``bytes_out``) goes out with the
    first piece of the body that came with it, in one write (one SSH packet, one
    frame), or on its own before waiting for the backend.
    Raises ClientGone when the client went away; a backend that breaks off
    leaves ``result.complete`` False with ``result.error`` set.
    """
    tail: list[bytes] = []
    tail_len = 0
    pending = head

    def flush() -> None:
        nonlocal pending
        if pending:
            data, pending = pending, b""
            write_all(out_fd, data)

    def emit(data: bytes) -> None:
        nonlocal tail_len, pending
        if not data:
            return
        if pending:
            out, pending = pending + data, b""
            write_all(out_fd, out)
        else:
            write_all(out_fd, data)
        result.bytes_out += len(data)
        tail.append(data)
        tail_len += len(data)
        if tail_len > 2 * USAGE_TAIL:
            joined = b"".join(tail)[-USAGE_TAIL:]
            tail[:] = [joined]
            tail_len = len(joined)

    try:
        if no_body or (answer.length == 0 and not answer.chunked):
            flush()
            result.complete = True
            result.clean = not answer.rest
            return
        decoder = ChunkDecoder() if answer.chunked else None
        left = answer.length
        data = answer.rest
        while True:
            if data:
                if decoder is not None:
                    emit(decoder.feed(data))
                    if decoder.done:
                        flush()  # (an empty body)
                        result.complete = True
                        result.clean = not decoder.extra
                        return
                elif left is not None:
                    piece = data[:left]
                    left -= len(piece)
                    emit(piece)
                    if left == 0:
                        flush()
                        result.complete = True
                        result.clean = len(piece) == len(data)
                        return
                else:
                    emit(data)
            flush()  # the head, before waiting for the body
            if not _wait(poller, sock.fileno(), out_fd, timeout):
                result.error = f"the backend sent nothing for {timeout:g} s mid-answer"
                return
            try:
                data = sock.recv(_RECV)
            except OSError as e:
                result.error = f"the backend connection broke mid-answer: {e.strerror or e}"
                return
            if not data:
                if decoder is None and left is None:
                    result.complete = True  # the answer ends with the connection
                else:
                    result.error = "the backend closed the connection mid-answer"
                return
    except BrokenAnswer as e:
        result.error = f"the backend sent a malformed chunked body: {e}"
        flush()
    finally:
        result.tail = b"".join(tail)[-USAGE_TAIL:]


def _object_end(text: bytes, start: int) -> int:
    """Index just past the JSON object that begins at ``text[start] == '{'``; -1 if cut off."""
    depth = 0
    i = start
    n = len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            if c == 0x5C:  # backslash: skip the escaped byte
                i += 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _int_field(obj: bytes, *names: bytes) -> int | None:
    """The integer value of the first of ``names`` present as a key in a flat scan of ``obj``."""
    for name in names:
        key = b'"' + name + b'"'
        at = obj.find(key)
        if at < 0:
            continue
        i = at + len(key)
        while i < len(obj) and obj[i] in b" \t\r\n":
            i += 1
        if i >= len(obj) or obj[i] != 0x3A:  # ':'
            continue
        i += 1
        while i < len(obj) and obj[i] in b" \t\r\n":
            i += 1
        j = i
        while j < len(obj) and 0x30 <= obj[j] <= 0x39:
            j += 1
        if j > i and (j >= len(obj) or obj[j] in b" \t\r\n,}"):
            return int(obj[i:j])
    return None


def find_usage(tail: bytes) -> tuple[int | None, int | None]:
    """(input, output) tokens from the last ``"usage": {...}`` object in the answer's end.

    Works for a JSON answer and for server-sent events (the last event that
    carries a usage object; ``"usage": null`` ones are skipped). Inside JSON
    strings a quote is escaped, so the bytes ``"usage"`` only occur as a key.
    Hand-rolled on purpose: importing ``json`` and ``re`` costs ~6 ms per request.
    """
    end = len(tail)
    while True:
        at = tail.rfind(b'"usage"', 0, end)
        if at < 0:
            return None, None
        end = at
        i = at + 7
        while i < len(tail) and tail[i] in b" \t\r\n":
            i += 1
        if i >= len(tail) or tail[i] != 0x3A:
            continue
        i += 1
        while i < len(tail) and tail[i] in b" \t\r\n":
            i += 1
        if i >= len(tail) or tail[i] != 0x7B:  # null or not an object
            continue
        stop = _object_end(tail, i)
        if stop < 0:
            continue
        obj = tail[i:stop]
        prompt = _int_field(obj, b"prompt_tokens", b"input_tokens")
        completion = _int_field(obj, b"completion_tokens", b"output_tokens")
        if prompt is None and completion is None:
            continue
        if completion is None:
            completion = 0  # embeddings: usage has prompt (and total) tokens only
        return prompt, completion
