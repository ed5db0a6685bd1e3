"""The proxy end to end against the stand-ins: real HTTP, the official openai client, fake ssh."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import openai
import pytest

from saia_ctl.proxy.config import ProxyConfig
from saia_ctl.proxy.server import Proxy, running_in_thread
from tests.support.proxy_fakes import Fakes

pytestmark = pytest.mark.timeout(120)


def http(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 request with urllib (no retries, raw bytes back)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def config(fakes: Fakes, **kw: Any) -> ProxyConfig:
    base = ProxyConfig(
        ssh_host="login.example",
        port=0,
        ssh_binary=str(fakes.ssh),
        ssh_user="saia",
        ssh_port=2222,
        ssh_key="/keys/id_ed25519",
        control_dir=str(fakes.root / "cm"),
        pool_size=2,
        keepalive_interval=60,
        timeout=20,
    )
    return replace(base, **kw)


@contextmanager
def proxy(fakes: Fakes, **kw: Any) -> Iterator[tuple[Proxy, str]]:
    with running_in_thread(config(fakes, **kw)) as (p, base):
        yield p, base


def client(base: str, user: str | None = "alice@uni.de", key: str = "unused") -> openai.OpenAI:
    headers = {"X-Consumer-Custom-ID": user} if user else {}
    return openai.OpenAI(
        base_url=base + "/v1", api_key=key, default_headers=headers, max_retries=0, timeout=30
    )


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def test_openai_client_non_streaming_and_the_command_sent(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        c = client(base)
        raw = c.chat.completions.with_raw_response.create(
            model="echo",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"inference-id": "req-1.a_b+c"},
        )
        done = raw.parse()
    assert done.choices[0].message.content == "Hello from echo"
    assert done.usage is not None and done.usage.total_tokens == 10
    assert raw.headers.get("x-backend") == "fake"  # the cluster's headers are copied
    rec = fakes.record("req-1.a_b+c")
    lines = rec["raw"].split("\n")
    assert lines[:4] == ["req-1.a_b+c", "alice@uni.de", "echo", "/v1/chat/completions"]
    assert len(lines) == 5 and lines[4].startswith(" -X POST -H ")
    names = [h.split(":", 1)[0] for h in rec["headers"]]
    # content-length, x-*, authorization, host, accept-encoding never reach the cluster
    assert "content-type" in names and "accept" in names
    assert not [n for n in names if n.startswith("x-") or n in ("authorization", "content-length", "host")]
    assert json.loads(rec["body"])["messages"] == [{"role": "user", "content": "hi"}]
    assert "-d" not in rec["raw"].split()  # the body went on stdin


def test_streaming_gets_usage_injected_and_the_extra_chunk_stripped(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        c = client(base)
        chunks = list(
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], stream=True)
        )
        asked = list(
            c.chat.completions.create(
                model="echo",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    # the client did not ask for usage: every chunk has a choice, none is usage-only
    assert all(ch.choices for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Hello from echo"
    # ... but the cluster was asked for it, so it can count tokens
    bodies = [json.loads(r["body"]) for r in fakes.all_records()]
    assert all(b["stream_options"]["include_usage"] is True for b in bodies)
    # the client that asked gets the usage chunk
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.completion_tokens == 3


def test_stream_chunks_arrive_as_produced(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHUNK_DELAY", "0.4")
    with proxy(fakes) as (_, base):
        c = client(base)
        t0 = time.monotonic()
        stream = c.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], stream=True
        )
        first = next(iter(stream))
        t_first = time.monotonic() - t0
        rest = list(stream)
        t_all = time.monotonic() - t0
    assert first.choices[0].delta.content == "Hello" and rest
    assert t_all >= 1.1  # three delays of 0.4 s
    assert t_first < t_all - 0.6, (t_first, t_all)


def test_models_list_and_get(fakes: Fakes) -> None:
    with proxy(fakes, models_ttl=0.5) as (_, base):
        c = client(base)
        models = {m.id: m for m in c.models.list()}
        assert set(models) == {"echo", "cold", "off"}
        states = {k: (m.model_extra or {})["status"] for k, m in models.items()}
        assert states == {"echo": "ready", "cold": "starting", "off": "offline"}
        echo = c.models.retrieve("echo")
        assert echo.owned_by == "tests" and echo.object == "model" and isinstance(echo.created, int)
        assert (echo.model_extra or {})["name"] == "Echo"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("nope")
        # cached for the TTL, then fetched again: the new state shows
        fakes.set_status({"services": [{"id": "cold", "name": "Cold", "owned_by": "t", "ready": 1}]})
        assert {m.id for m in c.models.list()} == {"echo", "cold", "off"}
        time.sleep(0.6)
        again = list(c.models.list())
        assert [(m.id, (m.model_extra or {})["status"]) for m in again] == [("cold", "ready")]


def test_embeddings_and_other_paths_pass_through(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        c = client(base)
        emb = c.embeddings.create(model="echo", input="abc")
        assert emb.data[0].embedding == [0.5, 0.25]
        status, _, _body = http(
            base,
            "GET",
            "/v1/files?limit=2&order=asc",
            headers={"X-Consumer-Custom-ID": "bob", "inference-service": "echo"},
        )
    assert status == 200
    recs = {r["path"]: r for r in fakes.all_records()}
    assert "/v1/embeddings" in recs
    assert recs["/v1/files?limit=2&order=asc"]["method"] == "GET"
    assert "inference-service: echo" in recs["/v1/files?limit=2&order=asc"]["headers"]


def test_identity_rules_without_keys(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        with pytest.raises(openai.AuthenticationError) as e:
            client(base, user=None).chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert "X-Consumer-Custom-ID" in str(e.value)
        with pytest.raises(openai.BadRequestError) as bad:
            client(base, user="eve; rm -rf /").chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert "invalid user id" in str(bad.value)
    assert fakes.all_records() == []  # none reached the cluster
    with proxy(fakes, default_user="anon") as (_, base):
        client(base, user=None).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert [r["user"] for r in fakes.all_records()] == ["anon"]


def test_api_keys_file_identity_and_reload(fakes: Fakes) -> None:
    keys = fakes.root / "keys"
    keys.write_text("# token user\nsk-alice-0001 alice@uni.de\nsk-bob-00002 bob  # a comment\n")
    with proxy(fakes, api_keys=str(keys)) as (_, base):
        r = client(base, user="mallory", key="sk-alice-0001").chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert r.choices
        with pytest.raises(openai.AuthenticationError):
            client(base, user="alice@uni.de", key="sk-wrong-0000").chat.completions.create(**CHAT)  # type: ignore[call-overload]
        with pytest.raises(openai.AuthenticationError):
            client(base, key="sk-carol-003").models.list()
        keys.write_text("sk-carol-003 carol\n")
        assert [m.id for m in client(base, key="sk-carol-003").models.list()]
        with pytest.raises(openai.AuthenticationError):
            client(base, key="sk-alice-0001").chat.completions.create(**CHAT)  # type: ignore[call-overload]
    # the header cannot override the key's user when keys are configured
    assert [r["user"] for r in fakes.all_records()] == ["alice@uni.de"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "expect"),
    [
        ("/v1/chat/completions", b'{"messages": []}', {}, "no model"),
        ("/v1/chat/completions", b'{"model": "a b"}', {}, "invalid model"),
        ("/v1/chat/completions", b'{"model": "m$(id)"}', {}, "invalid model"),
        ("/v1/chat/completions?x=%20", b'{"model": "echo"}', {}, "invalid request path"),
        ("/v1/a/../b", b'{"model": "echo"}', {}, "invalid request path"),
        ("/v1/x/" + "a" * 300, b'{"model": "echo"}', {}, "invalid request path"),
    ],
)
def test_bad_requests_are_400_here(
    fakes: Fakes, path: str, body: bytes, headers: dict[str, str], expect: str
) -> None:
    with proxy(fakes) as (_, base):
        status, hdrs, out = http(
            base,
            "POST",
            path,
            body,
            {"X-Consumer-Custom-ID": "u", "content-type": "application/json", **headers},
        )
    assert status == 400 and hdrs["Content-Type"].startswith("application/json")
    assert expect in json.loads(out)["error"]["message"]
    assert fakes.all_records() == []


def test_ssh_failure_is_502_with_a_log_line_then_recovers(
    fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    with proxy(fakes) as (_, base):
        c = client(base)
        fakes.down.touch()
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="saia_ctl.proxy"):
            with pytest.raises(openai.InternalServerError) as e:
                c.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert time.monotonic() - t0 < 5
        assert e.value.status_code == 502 and "Connection refused" in str(e.value)
        assert any("Connection refused" in r.getMessage() for r in caplog.records)
        _status, _, body = http(base, "GET", "/healthz")
        assert False in [slot["alive"] for slot in json.loads(body)["ssh"]["slots"]]  # the failed slot
        fakes.down.unlink()
        assert c.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]


def test_ssh_dies_after_start_is_502(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        with pytest.raises(openai.InternalServerError) as e:
            client(base).chat.completions.create(model="down", messages=[])
    assert e.value.status_code == 502 and "Connection closed" in str(e.value)


def test_garbage_answer_is_502_and_100_continue_is_skipped(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        with pytest.raises(openai.InternalServerError) as e:
            client(base).chat.completions.create(model="garbage", messages=[])
        assert e.value.status_code == 502
        ok = client(base).chat.completions.create(model="continue", messages=[])
    assert ok.choices[0].message.content == "Hello from continue"


def test_first_byte_timeout_is_504_and_kills_ssh(fakes: Fakes) -> None:
    with proxy(fakes, timeout=1.0) as (p, base):
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            client(base).chat.completions.create(model="hang", messages=[])
        assert e.value.status_code == 504 and time.monotonic() - t0 < 5
        assert all(s.in_flight == 0 for s in p.pool.slots)


def test_client_disconnect_kills_the_ssh_session(fakes: Fakes) -> None:
    with proxy(fakes) as (p, base):
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"model": "slowstream", "stream": True}).encode()
        s = socket.create_connection((host, int(port)))
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Consumer-Custom-ID: u\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        got = b""
        while b"data:" not in got:
            got += s.recv(4096)
        s.close()
        deadline = time.monotonic() + 10
        while any(sl.in_flight for sl in p.pool.slots) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(sl.in_flight == 0 for sl in p.pool.slots)

    def progress() -> int:
        files = list(fakes.records.glob("*.progress"))
        return int(files[0].read_text() or -1) if files else -1

    seen = progress()
    time.sleep(0.5)
    assert progress() == seen < 100  # the forced command stopped, did not run to the end


def test_hang_up_after_done_is_not_an_abort(fakes: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    """A client that closes right after [DONE] does not cut the cluster side short."""
    with proxy(fakes) as (p, base):
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"model": "linger", "stream": True}).encode()
        with caplog.at_level(logging.INFO, logger="saia_ctl.proxy"):
            s = socket.create_connection((host, int(port)))
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Consumer-Custom-ID: u\r\ninference-id: lg1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            got = b""
            while b"[DONE]" not in got:
                got += s.recv(4096)
            s.close()
            deadline = time.monotonic() + 10
            while any(sl.in_flight for sl in p.pool.slots) and time.monotonic() < deadline:
                time.sleep(0.05)
    assert (fakes.records / "lg1.finished").exists()
    line = next(r.getMessage() for r in caplog.records if "inference=lg1" in r.getMessage())
    assert "-> 200 ok" in line


def test_ssh_argv_is_a_list_with_one_command_argument(fakes: Fakes) -> None:
    with proxy(fakes, ssh_options=("StrictHostKeyChecking=no",)) as (_, base):
        client(base).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    argvs = [a for a in fakes.argvs() if "-O" not in a]
    req = next(a for a in argvs if a[-1].count("\n") >= 4)
    assert "-t" not in req and "-tt" not in req and "-T" in req
    opts = [req[i + 1] for i, w in enumerate(req) if w == "-o"]
    assert opts[0] == "StrictHostKeyChecking=no"  # the operator's options come first (ssh keeps the first)
    assert "BatchMode=yes" in opts and "ControlMaster=auto" in opts
    assert any(o.startswith("ControlPath=" + str(fakes.root / "cm") + "/cm-%C-") for o in opts)
    assert any(o.startswith("ControlPersist=") for o in opts) and any(
        o.startswith("ServerAliveInterval=") for o in opts
    )
    assert req[req.index("-p") + 1] == "2222" and req[req.index("-l") + 1] == "saia"
    assert req[req.index("-i") + 1] == "/keys/id_ed25519"
    assert req[-2] == "login.example"


def test_keepalive_loop_runs_and_healthz_reports_it(fakes: Fakes) -> None:
    with proxy(fakes, keepalive_interval=0.3, pool_size=2) as (_, base):
        time.sleep(1.5)
        status, _, body = http(base, "GET", "/healthz")
        n = fakes.keepalive_count()
        health = json.loads(body)
        assert status == 200 and health["ssh"]["ok"] is True and health["status"] == "ok"
        assert {s["alive"] for s in health["ssh"]["slots"]} == {True}  # warm-up opened every slot
        fakes.down.touch()
        time.sleep(1.0)
        health = json.loads(http(base, "GET", "/healthz")[2])
        assert health["ssh"]["ok"] is False and "Connection refused" in health["ssh"]["last_error"]
        assert health["status"] == "degraded"
    # warm-up (2) + about 1.5 / 0.3 rounds, bounded above by the interval
    assert 4 <= n <= 9, n


def test_pool_overflow_uses_a_connection_of_its_own(fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHUNK_DELAY", "0.3")
    import concurrent.futures

    with proxy(fakes, pool_size=1, max_sessions=2) as (p, base):
        c = client(base)

        def one(_: int) -> str:
            stream = c.chat.completions.create(model="echo", messages=[], stream=True)
            return "".join(ch.choices[0].delta.content or "" for ch in stream)

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            results = list(ex.map(one, range(4)))
        assert results == ["Hello from echo"] * 4
        assert p.pool.direct_sessions >= 1
    direct = [a for a in fakes.argvs() if "ControlPath=none" in a]
    assert direct and all("ControlMaster=no" in a for a in direct)


def test_large_body_streams_through_stdin(fakes: Fakes) -> None:
    big = b"x" * (3 * 1024 * 1024)
    with proxy(fakes) as (_, base):
        status, _, _ = http(
            base,
            "POST",
            "/v1/audio/raw",
            big,
            {
                "X-Consumer-Custom-ID": "u",
                "inference-service": "echo",
                "content-type": "application/octet-stream",
            },
        )
    assert status == 200
    rec = fakes.all_records()[0]
    assert rec["body_len"] == len(big) and rec["service"] == "echo"


def test_multipart_model_field_names_the_service(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        c = client(base)
        c.audio.transcriptions.create(model="echo", file=("a.wav", b"RIFF0000WAVE"))
    rec = fakes.all_records()[0]
    assert rec["service"] == "echo" and rec["path"] == "/v1/audio/transcriptions"


def test_unknown_route_is_openai_404(fakes: Fakes) -> None:
    with proxy(fakes) as (_, base):
        status, _, body = http(base, "GET", "/nope")
    assert status == 404 and "error" in json.loads(body)


def test_models_unavailable_is_502(fakes: Fakes) -> None:
    fakes.down.touch()
    with proxy(fakes) as (_, base):
        with pytest.raises(openai.InternalServerError) as e:
            client(base).models.list()
    assert e.value.status_code == 502


def test_binds_to_loopback_by_default(fakes: Fakes) -> None:
    assert ProxyConfig(ssh_host="h").host == "127.0.0.1"
    with proxy(fakes) as (_, base):
        assert base.startswith("http://127.0.0.1:")
