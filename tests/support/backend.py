"""The one fake backend of the tests and benches: an OpenAI-like HTTP server on
127.0.0.1 that can also misbehave on purpose.

Stdlib only, so it also runs as a process (and as a Slurm job, see
``tests/data/scheduler_backend.sbatch``): ``python backend.py PORT [SECRET]
[MODE]`` listens on every address and prints ``ready`` once listening (secret
also from ``SAIA_API_KEY``); it waits ``SAIA_TEST_START_DELAY`` seconds before
listening, and with ``SAIA_TEST_LISTEN_DIR`` writes there, in
``<SLURM_JOB_ID>.listen``, the time it started listening.
In a test, ``FakeBackend`` runs it in a thread and keeps every request it
received (raw head and body), ``BackendProcess`` runs it as a child process
(for benches, where the backend must not share the measured process's CPU).

Modes:

- ``routes`` (default) — the routes below. ``GET /`` and ``GET /health`` need
  no secret; everything else needs ``Authorization: Bearer SECRET`` when a
  secret is set (401 otherwise). Connections are kept alive.
- ``ok`` — every request: 200 JSON with a usage object (3 prompt, 5 completion tokens).
- ``stream`` — every request: SSE events (chunked) every ``delay`` s, then a
  usage event (2 prompt, 7 completion tokens) and ``[DONE]``.
- ``hang`` — accepts and never answers; ``close`` — accepts and closes at once;
  ``garbage`` — answers bytes that are not HTTP; ``die`` — sends the head and
  part of a stream, then resets the connection.

Routes:

- ``POST /v1/chat/completions`` (and ``/v1/completions``) — body fields:
  ``stream``, ``max_tokens`` (words to answer, default 5), ``token_delay``
  (seconds between SSE chunks), ``stream_options.include_usage``;
  non-streaming answers carry ``usage``.
- ``/v1/models`` — one model, ``test-model``.
- ``/echo`` — answers the request line, headers and body it received, as JSON.
- ``/chunked-echo`` — the same, sent with ``Transfer-Encoding: chunked`` in pieces.
- ``/break?after=N`` — sends headers and N bytes of a longer body, then closes.
- ``/close`` — closes the connection without answering.
- ``/hang?seconds=S`` — answers only after S seconds (default: an hour).
- ``/continue`` — a ``100 Continue`` interim answer, then 200.
- ``/noreason`` — a status line without reason phrase.
- ``/big?n=N`` — N bytes of body, with a usage object at the end.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODES = ("routes", "ok", "stream", "hang", "close", "garbage", "die")
OK_BODY = b'{"id":"x","object":"chat.completion","usage":{"prompt_tokens":3,"completion_tokens":5}}'
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


class Request:
    """One request as received: the raw head and body, and its parts."""

    def __init__(self, head: bytes, body: bytes) -> None:
        self.head = head
        self.body = body
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        self.method = parts[0]
        self.target = parts[1] if len(parts) > 1 else "/"
        self.headers: list[tuple[str, str]] = []
        for raw in lines[1:]:
            name, _, value = raw.decode("latin-1").partition(":")
            self.headers.append((name, value.strip()))

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def read_request(conn: socket.socket, buf: bytearray) -> Request | None:
    """The next request on ``conn`` (``buf`` holds bytes read past the previous one); None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end])
    del buf[: end + 4]
    low = head.lower()
    if b"transfer-encoding: chunked" in low:
        body = bytearray()
        pos = 0
        while True:
            while buf.find(b"\r\n", pos) < 0:
                data = conn.recv(1 << 20)
                if not data:
                    return Request(head, bytes(body))
                buf += data
            eol = buf.find(b"\r\n", pos)
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                # the trailer section ends with an empty line
                while buf.find(b"\r\n", pos) < 0:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buf += data
                while True:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    line_empty = eol == pos
                    pos = eol + 2
                    if line_empty:
                        break
                del buf[:pos]
                return Request(head, bytes(body))
            while len(buf) < pos + size + 2:
                data = conn.recv(1 << 20)
                if not data:
                    return Request(head, bytes(body))
                buf += data
            body += buf[pos : pos + size]
            pos += size + 2
            if pos > 1 << 22:  # keep the buffer small
                del buf[:pos]
                pos = 0
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buf) < length:
        data = conn.recv(1 << 20)
        if not data:
            break
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return Request(head, body)


def _json_answer(
    status: int, doc: object, extra: dict[str, str] | None = None, head_only: bool = False
) -> bytes:
    data = json.dumps(doc).encode()
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Content-Type: application/json"]
    lines.append(f"Content-Length: {len(data)}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else data)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeBackend:
    """The fake backend in a thread of this process, on a free port of 127.0.0.1.

    ``received`` keeps every request (head, body); ``connections`` counts accepted ones.
    """

    def __init__(
        self,
        mode: str = "routes",
        *,
        secret: str = "",
        delay: float = 0.05,
        events: int = 5,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self.mode = mode
        self.secret = secret
        self.delay = delay
        self.events = events
        self.received: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        with self._lock:
            conns = list(self._open)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    stop = close

    def __enter__(self) -> FakeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve_forever(self) -> None:
        """Block until ``close`` (the process form)."""
        self._thread.join()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.mode == "close":
                conn.close()
                return
            if self.mode == "hang":
                return  # kept open in self._open until close()
            buf = bytearray()
            while not self._stop.is_set():
                conn.settimeout(10 if self.mode != "routes" else 600)
                req = read_request(conn, buf)
                if req is None:
                    break
                with self._lock:
                    self.received.append((req.head, req.body))
                if self.mode != "routes":
                    self._fault(conn)
                    break
                if not self._route(conn, req):
                    break
            conn.close()
        except (OSError, ValueError):
            try:
                conn.close()
            except OSError:
                pass

    # --- the fault modes --------------------------------------------------------

    def _fault(self, conn: socket.socket) -> None:
        if self.mode == "garbage":
            conn.sendall(b"\x00\xffthis is not HTTP at all\r\n\r\n\x00garbage")
        elif self.mode == "ok":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
            )
        else:  # stream, die
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(self.events):
                conn.sendall(_chunk(b'data: {"n": %d}\n\n' % i))
                time.sleep(self.delay)
                if self.mode == "die" and i == 1:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
            last = b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 7}}\n\ndata: [DONE]\n\n'
            conn.sendall(_chunk(last) + b"0\r\n\r\n")

    # --- the routes -------------------------------------------------------------

    def _route(self, conn: socket.socket, req: Request) -> bool:
        """Answer one request; False when the connection is to be closed."""
        url = urlsplit(req.target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        keep = (req.header("connection") or "").lower() != "close"
        head_only = req.method == "HEAD"

        def send(status: int, doc: object) -> bool:
            conn.sendall(_json_answer(status, doc, head_only=head_only))
            return keep

        if url.path in ("/", "/health"):
            return send(200, {"status": "ok", "pid": os.getpid()})
        if url.path == "/close":
            return False
        if self.secret and req.header("authorization") != f"Bearer {self.secret}":
            return send(401, {"error": {"message": "bad or missing bearer token", "code": 401}})
        body = req.body
        if url.path == "/echo":
            return send(
                200,
                {
                    "method": req.method,
                    "path": req.target,
                    "headers": [[k, v] for k, v in req.headers],
                    "body": body.decode("utf-8", "replace"),
                    "port": self.port,
                },
            )
        if url.path == "/chunked-echo":
            data = json.dumps({"method": req.method, "body": body.decode("utf-8", "replace")}).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(0, len(data), 7):
                conn.sendall(_chunk(data[i : i + 7]))
            conn.sendall(b"0\r\n\r\n")
            return keep
        if url.path == "/break":
            after = int(query.get("after", "10"))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (after * 10)
                + b"x" * after
            )
            return False
        if url.path == "/hang":
            time.sleep(float(query.get("seconds", "3600")))
            return send(200, {"late": True})
        if url.path == "/continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            return send(200, {"after": "continue"})
        if url.path == "/noreason":
            data = b'{"ok": true}'
            conn.sendall(b"HTTP/1.1 200\r\nContent-Length: %d\r\nX-Raw:v\r\n\r\n%s" % (len(data), data))
            return keep
        if url.path == "/big":
            n = int(query.get("n", "1000000"))
            tail = b'], "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}}'
            data = b'{"pad": ["' + b"y" * max(0, n - len(tail) - 12) + b'"' + tail
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data)
                + data
            )
            return keep
        if url.path == "/v1/models":
            return send(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        if url.path in ("/v1/chat/completions", "/v1/completions"):
            return self._chat(conn, body, send) and keep
        return send(404, {"error": {"message": f"no route {url.path}", "code": 404}})

    def _chat(self, conn: socket.socket, body: bytes, send: Any) -> bool:
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return bool(send(400, {"error": {"message": "body is not JSON", "code": 400}}))
        words = int(req.get("max_tokens") or 5)
        delay = float(req.get("token_delay") or 0)
        prompt = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", [])) or 1
        usage = {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}
        created = int(time.time())
        model = req.get("model", "test-model")
        if not req.get("stream"):
            if delay:
                time.sleep(delay * words)
            text = " ".join(f"word{i}" for i in range(words))
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            doc = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            return bool(send(200, doc))
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )

        def event(doc: object) -> None:
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            conn.sendall(_chunk(b"data: " + data + b"\n\n"))

        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": created, "model": model}
        for i in range(words):
            if delay:
                time.sleep(delay)
            delta = {"content": f"word{i} "} if i else {"role": "assistant", "content": "word0 "}
            choice = {"index": 0, "delta": delta, "finish_reason": None if i < words - 1 else "stop"}
            event({**base, "choices": [choice], **({"usage": None} if include_usage else {})})
        if include_usage:
            event({**base, "choices": [], "usage": usage})
        event(b"[DONE]")
        conn.sendall(b"0\r\n\r\n")
        return True


class BackendProcess:
    """The fake backend as a child process (``python backend.py PORT SECRET MODE``) on a free port."""

    def __init__(self, secret: str = "s3cret", port: int | None = None, mode: str = "routes") -> None:
        from tests.support.net import free_port

        self.secret = secret
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(self.port), secret, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> BackendProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> None:
    port = int(argv[1])
    secret = argv[2] if len(argv) > 2 else os.environ.get("SAIA_API_KEY", "")
    mode = argv[3] if len(argv) > 3 else "routes"
    time.sleep(float(os.environ.get("SAIA_TEST_START_DELAY") or 0))
    server = FakeBackend(mode, secret=secret, port=port, host="0.0.0.0")
    listen_dir = os.environ.get("SAIA_TEST_LISTEN_DIR")
    if listen_dir:  # when it started answering, for detection-delay figures
        marker = Path(listen_dir) / (os.environ.get("SLURM_JOB_ID", "x") + ".listen")
        marker.write_text(repr(time.time()))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
