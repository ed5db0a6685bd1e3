"""The stand-in backend (sbatch/test_llm_server.py), run locally without Slurm."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.net import free_port

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "sbatch" / "test_llm_server.py"
SECRET = "s3cret-Key_for-tests"


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, "server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"server not listening on {port} after {timeout} s")


def start_server(port: int, **env: str) -> subprocess.Popen[bytes]:
    full = {**os.environ, "TEST_LLM_HOST": "127.0.0.1", "TEST_LLM_TOKEN_DELAY": "0", **env}
    return subprocess.Popen([sys.executable, str(SERVER), str(port)], env=full, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    proc = start_server(port, SAIA_API_KEY=SECRET)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def request(
    port: int, method: str, path: str, body: Any = None, key: str | None = SECRET, raw: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, out


def client(port: int, key: str = SECRET) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=10)


def test_probes_need_no_key(server: int) -> None:
    for path in ("/", "/health"):
        status, _, body = request(server, "GET", path, key=None)
        assert status == 200, path
        assert json.loads(body)["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/v1/completions", {"model": "m", "prompt": "hi"}),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong", SECRET + "x"])
def test_api_needs_the_secret(server: int, method: str, path: str, body: Any, key: str | None) -> None:
    status, headers, out = request(server, method, path, body, key=key)
    assert status == 401
    assert headers["content-type"] == "application/json"
    err = json.loads(out)["error"]
    assert err["code"] == "invalid_api_key" and err["message"]


def test_openai_client_chat_non_stream_usage(server: int) -> None:
    resp = client(server).chat.completions.create(
        model="my-model",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two  three"}],
        max_tokens=7,
    )
    assert resp.model == "my-model"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (5, 7, 12)
    content = resp.choices[0].message.content
    assert content is not None and len(content.split()) == 7
    assert resp.choices[0].finish_reason == "length"


def test_openai_client_chat_stream_with_usage(server: int) -> None:
    stream = client(server).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "alpha beta gamma"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["alpha", "beta", "gamma", "alpha", "beta"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 5, 8)
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_stream_without_include_usage_has_no_usage(server: int) -> None:
    stream = client(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_openai_client_completions(server: int) -> None:
    c = client(server)
    resp = c.completions.create(model="m", prompt="a b c d", max_tokens=4)
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 4)
    assert resp.choices[0].text == "a b c d"
    chunks = list(
        c.completions.create(
            model="m", prompt="a b", max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "a b a"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5


def test_models_list(server: int) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["test-llm"]


def test_stream_is_sse_chunked_and_flushed_per_token(server: int) -> None:
    """Tokens arrive as they are produced, not all at the end."""
    sock = socket.create_connection(("127.0.0.1", server), timeout=10)
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "w"}],
            "max_tokens": 4,
            "stream": True,
            "token_delay": 0.3,
        }
    ).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    arrivals: list[float] = []
    data = b""
    start = time.monotonic()
    while not data.endswith(b"0\r\n\r\n"):
        part = sock.recv(65536)
        if not part:
            break
        if b'"content": "' in part and b'"content": ""' not in part:
            arrivals.append(time.monotonic() - start)
        data += part
    sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"content-type: text/event-stream" in head.lower()
    assert rest.count(b"data: ") == 4 + 2 + 1  # role chunk, 4 tokens, finish chunk, [DONE]
    assert b"data: [DONE]\n\n" in rest
    assert len(arrivals) >= 3, arrivals
    assert arrivals[0] < 0.9 and arrivals[-1] - arrivals[0] >= 0.5, arrivals


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b"\xff\xfe", None),
    ],
)
def test_bad_input_gives_400_json(server: int, raw: bytes, param: str | None) -> None:
    status, _, out = request(server, "POST", "/v1/chat/completions", raw=raw)
    assert status == 400
    err = json.loads(out)["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_max_tokens_is_capped_and_default(server: int) -> None:
    c = client(server)
    default = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert default.usage is not None and default.usage.completion_tokens == 16
    big = c.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=100000,
        extra_body={"token_delay": 0},
    )
    assert big.usage is not None and big.usage.completion_tokens == 4096


def test_unknown_route_404(server: int) -> None:
    status, _, out = request(server, "GET", "/nope")
    assert status == 404 and "error" in json.loads(out)


def test_no_key_configured_means_open_and_env_model_and_start_delay() -> None:
    port = free_port()
    proc = start_server(port, SAIA_API_KEY="", TEST_LLM_MODEL="fixed-model", TEST_LLM_START_DELAY="0.6")
    try:
        took = wait_listening(port, proc)
        assert took >= 0.5
        resp = client(port, key="anything").chat.completions.create(
            model="asked", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
        assert resp.model == "fixed-model"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_client_going_away_mid_stream_does_not_kill_the_server(server: int) -> None:
    sock = socket.create_connection(("127.0.0.1", server), timeout=10)
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "w"}],
            "max_tokens": 50,
            "stream": True,
            "token_delay": 0.02,
        }
    ).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    sock.recv(100)
    sock.close()
    time.sleep(0.2)
    status, _, _ = request(server, "GET", "/health", key=None)
    assert status == 200


def _two_on_one_connection(port: int) -> list[tuple[int, str | None]]:
    """Two chat completions over one HTTP/1.1 connection: (status, Connection header) of each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 2})
    out = []
    for _ in range(2):
        conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {SECRET}"})
        resp = conn.getresponse()
        resp.read()
        out.append((resp.status, resp.getheader("Connection")))
    conn.close()
    return out


def test_keep_alive_on_request(server: int) -> None:
    assert _two_on_one_connection(server) == [(200, "close"), (200, "close")]  # by default: closed
    port = free_port()
    proc = start_server(port, SAIA_API_KEY=SECRET, TEST_LLM_KEEP_ALIVE="1")
    try:
        wait_listening(port, proc)
        assert _two_on_one_connection(port) == [(200, None), (200, None)]  # one connection for both
    finally:
        proc.terminate()
        proc.wait(timeout=10)
