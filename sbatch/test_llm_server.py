"""A stand-in for vLLM: an OpenAI-compatible HTTP server, standard library only.

    python3 test_llm_server.py PORT

``GET /`` and ``GET /health`` answer 200 without auth (readiness/health
probes). ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST
/v1/completions`` need ``Authorization: Bearer $SAIA_API_KEY`` when
``SAIA_API_KEY`` is set. Answers are deterministic (the prompt's words,
repeated) and carry an OpenAI ``usage`` object: prompt_tokens = whitespace
words of the prompt/messages, completion_tokens = tokens produced =
``max_tokens`` (default 16, at most 4096). ``"stream": true`` sends one SSE
chunk per token, flushed as produced (chunked transfer encoding), then
``data: [DONE]``; ``stream_options.include_usage`` adds the final
``choices: []`` chunk with ``usage`` as OpenAI and vLLM do.

Environment: ``TEST_LLM_TOKEN_DELAY`` seconds per token (0.005; a request may
override it with the extra body field ``"token_delay"``), ``TEST_LLM_START_DELAY``
seconds before listening (simulates model load), ``TEST_LLM_MODEL`` the model
id (default: the request's ``model``, or ``test-llm``), ``TEST_LLM_HOST`` the
bind address (``0.0.0.0``), ``TEST_LLM_KEEP_ALIVE=1`` keeps a connection open
after a JSON answer (as vLLM does) unless the client asks to close it; by
default every answer closes its connection.
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_TOKENS_DEFAULT = 16
MAX_TOKENS_CAP = 4096
MAX_BODY = 16 * 1024 * 1024
MAX_TOKEN_DELAY = 60.0


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def _words_of_content(content: Any) -> list[str]:
    """Words of a chat message's content: a string or a list of parts with ``text``."""
    if content is None:
        return []
    if isinstance(content, str):
        return content.split()
    if isinstance(content, list):
        words: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                words.extend(part["text"].split())
            elif isinstance(part, str):
                words.extend(part.split())
        return words
    raise BadRequest("message content must be a string or a list of parts", param="messages")


def prompt_words(kind: str, body: dict[str, Any]) -> list[str]:
    """The prompt's whitespace words; their count is ``usage.prompt_tokens``."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        words: list[str] = []
        for m in messages:
            if not isinstance(m, dict):
                raise BadRequest("each message must be an object", param="messages")
            words.extend(_words_of_content(m.get("content")))
        return words
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt.split()
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return " ".join(prompt).split()
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        return [str(p) for p in prompt]  # token ids: one word each
    raise BadRequest("'prompt' must be a string or a list of strings", param="prompt")


def max_tokens_of(body: dict[str, Any]) -> int:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    if value is None:
        return MAX_TOKENS_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("'max_tokens' must be a positive integer", param="max_tokens")
    return min(value, MAX_TOKENS_CAP)


def token_delay_of(body: dict[str, Any]) -> float:
    value = body.get("token_delay")
    if value is None:
        return float(os.environ.get("TEST_LLM_TOKEN_DELAY", "0.005") or 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_TOKEN_DELAY:
        raise BadRequest(f"'token_delay' must be a number of seconds in 0..{MAX_TOKEN_DELAY:g}")
    return float(value)


def produce(words: list[str], n: int) -> list[str]:
    """n deterministic tokens: the prompt's words over and over, space-separated."""
    source = words or ["token"]
    return [(" " if i else "") + source[i % len(source)] for i in range(n)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test-llm/1.0"
    # The head and the body are two writes: on a kept-alive connection Nagle would hold
    # the body until the client's delayed ACK (40 ms). vLLM's server sets it too.
    disable_nagle_algorithm = True

    # --- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400 or os.environ.get("TEST_LLM_KEEP_ALIVE") != "1":
            # (an error's request body may be unread: that connection is done in any case)
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, message: str, etype: str, param: str | None = None, code: Any = None
    ) -> None:
        self._send_json(status, {"error": {"message": message, "type": etype, "param": param, "code": code}})

    def _authorized(self) -> bool:
        key = os.environ.get("SAIA_API_KEY", "")
        if not key:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        self._send_error(401, "Invalid or missing API key.", "invalid_request_error", code="invalid_api_key")
        return False

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_BODY:
                    raise BadRequest("request body too large", status=413)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise BadRequest("request body too large", status=413)
        return self.rfile.read(length)

    def _model(self, body: dict[str, Any] | None = None) -> str:
        env_model = os.environ.get("TEST_LLM_MODEL")
        if env_model:
            return env_model
        requested = (body or {}).get("model")
        return requested if isinstance(requested, str) and requested else "test-llm"

    # --- routes
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/health"):
            self._send_json(200, {"status": "ok"})
        elif path == "/v1/models":
            if self._authorized():
                model = self._model()
                created = int(time.time())
                self._send_json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {"id": model, "object": "model", "created": created, "owned_by": "test-llm"}
                        ],
                    },
                )
        else:
            self._send_error(404, f"no route {path}", "not_found_error")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        kinds = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
        kind = kinds.get(path)
        try:
            raw = self._read_body()
        except BadRequest as e:
            self._send_error(e.status, str(e), "invalid_request_error")
            return
        if kind is None:
            self._send_error(404, f"no route {path}", "not_found_error")
            return
        if not self._authorized():
            return
        try:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            words = prompt_words(kind, body)
            n = max_tokens_of(body)
            delay = token_delay_of(body)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("'stream' must be a boolean", param="stream")
            options = body.get("stream_options") or {}
            if not isinstance(options, dict):
                raise BadRequest("'stream_options' must be an object", param="stream_options")
        except BadRequest as e:
            self._send_error(e.status, str(e), "invalid_request_error", e.param)
            return
        tokens = produce(words, n)
        usage = {"prompt_tokens": len(words), "completion_tokens": n, "total_tokens": len(words) + n}
        model = self._model(body)
        if stream:
            self._stream(kind, model, tokens, usage, delay, bool(options.get("include_usage")))
        else:
            if delay:
                time.sleep(delay * n)
            self._send_json(200, self._whole(kind, model, "".join(tokens), usage))

    # --- answers
    @staticmethod
    def _whole(kind: str, model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
        created = int(time.time())
        if kind == "chat":
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                ],
                "usage": usage,
            }
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
            "usage": usage,
        }

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(
        self,
        kind: str,
        model: str,
        tokens: list[str],
        usage: dict[str, int],
        delay: float,
        include_usage: bool,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        created = int(time.time())
        cid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(choices: list[dict[str, Any]], last_usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:  # OpenAI sends "usage": null on every chunk but the last
                chunk["usage"] = last_usage
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if kind == "chat":
                delta: dict[str, Any] = {}
                if first:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        try:
            if kind == "chat":
                event([choice("", None, first=True)])
            for i, tok in enumerate(tokens):
                if delay:
                    time.sleep(delay)
                last = i == len(tokens) - 1
                if kind == "chat" or not last:
                    event([choice(tok, None)])
                else:
                    event([choice(tok, "length")])
            if kind == "chat":
                event([choice(None, "length")])
            if include_usage:
                event([], usage)
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.log_message("client went away during the stream")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv: list[str]) -> int:
    port_text = argv[1] if len(argv) > 1 else os.environ.get("SAIA_PORT", "")
    if not port_text.isdigit():
        print("usage: test_llm_server.py PORT (or SAIA_PORT)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start_delay = float(os.environ.get("TEST_LLM_START_DELAY", "0") or 0)
    if start_delay > 0:
        print(f"test-llm: loading the model for {start_delay:g} s", file=sys.stderr, flush=True)
        time.sleep(start_delay)
    host = os.environ.get("TEST_LLM_HOST", "0.0.0.0")
    server = Server((host, int(port_text)), Handler)
    print(f"test-llm: listening on {host}:{port_text}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
