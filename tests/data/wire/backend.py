"""A stdlib OpenAI-like backend for the request-path tests and bench.

Usage: ``python backend.py PORT [SECRET]`` (secret also from ``SAIA_API_KEY``);
prints ``ready`` once listening. ``GET /`` and ``GET /health`` need no secret;
everything else needs ``Authorization: Bearer SECRET`` (401 otherwise).

Routes:
- ``POST /v1/chat/completions`` — body fields: ``stream``, ``max_tokens`` (words
  to answer, default 5), ``token_delay`` (seconds between SSE chunks),
  ``stream_options.include_usage``; non-streaming answers carry ``usage``.
- ``/echo`` — answers the request line, headers and body it received, as JSON.
- ``/chunked-echo`` — the same, sent with ``Transfer-Encoding: chunked`` in pieces.
- ``/break?after=N`` — sends headers and N bytes of a longer body, then closes.
- ``/close`` — closes the connection without answering.
- ``/hang`` — never answers.
- ``/continue`` — a ``100 Continue`` interim answer, then 200.
- ``/noreason`` — a status line without reason phrase.
- ``/big?n=N`` — N bytes of body, with a usage object at the end.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SECRET = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("SAIA_API_KEY", "")
COUNTS: dict[str, int] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, doc: object, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        if not SECRET:
            return True
        if self.headers.get("Authorization") == f"Bearer {SECRET}":
            return True
        self._send(401, {"error": {"message": "bad or missing bearer token", "code": 401}})
        return False

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with LOCK:
            COUNTS[url.path] = COUNTS.get(url.path, 0) + 1
        if url.path in ("/", "/health"):
            self._send(200, {"status": "ok", "pid": os.getpid()})
            return
        if url.path == "/close":
            self.close_connection = True
            return
        if not self._authorized():
            return
        body = self._body()
        if url.path == "/echo":
            self._send(
                200,
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body": body.decode("utf-8", "replace"),
                    "port": self.server.server_address[1],
                },
            )
        elif url.path == "/chunked-echo":
            data = json.dumps({"method": self.command, "body": body.decode("utf-8", "replace")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 7):
                piece = data[i : i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/break":
            after = int(query.get("after", "10"))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(after * 10))
            self.end_headers()
            self.wfile.write(b"x" * after)
            self.wfile.flush()
            self.close_connection = True
        elif url.path == "/hang":
            time.sleep(float(query.get("seconds", "3600")))
            self._send(200, {"late": True})
        elif url.path == "/continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._send(200, {"after": "continue"})
        elif url.path == "/noreason":
            data = b'{"ok": true}'
            self.wfile.write(b"HTTP/1.1 200\r\nContent-Length: %d\r\nX-Raw:v\r\n\r\n%s" % (len(data), data))
        elif url.path == "/big":
            n = int(query.get("n", "1000000"))
            tail = b'], "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}}'
            data = b'{"pad": ["' + b"y" * max(0, n - len(tail) - 12) + b'"' + tail
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif url.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        elif url.path in ("/v1/chat/completions", "/v1/completions"):
            self._chat(body)
        else:
            self._send(404, {"error": {"message": f"no route {url.path}", "code": 404}})

    def _chat(self, body: bytes) -> None:
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            self._send(400, {"error": {"message": "body is not JSON", "code": 400}})
            return
        words = int(req.get("max_tokens") or 5)
        delay = float(req.get("token_delay") or 0)
        prompt = sum(len(str(m.get("content", "")).split()) for m in req.get("messages", [])) or 1
        usage = {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}
        created = int(time.time())
        if not req.get("stream"):
            if delay:
                time.sleep(delay * words)
            text = " ".join(f"word{i}" for i in range(words))
            self._send(
                200,
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": created,
                    "model": req.get("model", "test-model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(doc: object) -> None:
            data = b"data: " + (doc if isinstance(doc, bytes) else json.dumps(doc).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        for i in range(words):
            if delay:
                time.sleep(delay)
            event(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": req.get("model", "test-model"),
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": f"word{i} "}
                            if i
                            else {"role": "assistant", "content": "word0 "},
                            "finish_reason": None if i < words - 1 else "stop",
                        }
                    ],
                    **({"usage": None} if include_usage else {}),
                }
            )
        if include_usage:
            event(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": req.get("model", "test-model"),
                    "choices": [],
                    "usage": usage,
                }
            )
        event(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main() -> None:
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
