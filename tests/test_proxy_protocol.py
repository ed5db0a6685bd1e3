"""The proxy's pure parts: command building, validation, answer heads, usage stripping, models, keys."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saia_ctl.proxy import protocol
from saia_ctl.proxy.apikeys import ApiKeys, KeyFileError, parse_keys
from saia_ctl.proxy.config import ProxyConfig
from saia_ctl.proxy.model_list import StatusError, models_from_status
from saia_ctl.proxy.sse import UsageStripper, is_usage_only


def saia_hub_command(
    iid: str, uid: str, service: str, path: str, method: str, headers: dict[str, str]
) -> str:
    """saia-hub proxy-hpc's construction (stdin variant), transcribed for comparison."""
    headers_str = " ".join(
        f'-H "{k}: {v}"'
        for k, v in headers.items()
        if k.lower() != "content-length"
        and (k.lower() == "inference-service" or not k.lower().startswith("inference-"))
        and not k.lower().startswith("x-")
    )
    return iid + "\n" + uid + "\n" + service + "\n" + "/" + path + f"\n -X {method} {headers_str}"


def test_command_is_byte_identical_to_saia_hub() -> None:
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "x-consumer-custom-id": "jdoe",
        "inference-service": "llama",
        "inference-portal": "chat-ai",
        "content-length": "12",
    }
    ours = protocol.build_command(
        "3f1c",
        "jdoe@uni-x.de",
        "llama",
        "/v1/chat/completions",
        "POST",
        protocol.forwarded_headers(headers.items()),
    )
    assert ours == saia_hub_command("3f1c", "jdoe@uni-x.de", "llama", "v1/chat/completions", "POST", headers)


def test_forwarded_headers_drop_what_the_cluster_must_not_see() -> None:
    got = protocol.forwarded_headers(
        [
            ("Host", "proxy"),
            ("Authorization", "Bearer sk-user"),
            ("Connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("Accept-Encoding", "gzip"),
            ("X-Stainless-Lang", "python"),
            ("Inference-Id", "abc"),
            ("Inference-Service", "m"),
            ("User-Agent", "OpenAI/Python 1.0"),
            ("X-Note", "-H x"),
            ("Evil", 'a -H "host: b"'),  # would start a new header on the cluster side
            ("Evil2", "x -d body"),
            ("Latin", "caf\u00e9"),
            ("Content-Type", "application/json"),
        ]
    )
    assert got == [
        ("inference-service", "m"),
        ("user-agent", "OpenAI/Python 1.0"),
        ("content-type", "application/json"),
    ]


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("user", "jdoe@uni-x.de", True),
        ("user", "a" * 256, True),
        ("user", "a" * 257, False),
        ("user", "", False),
        ("user", "a b", False),
        ("user", "a\nb", False),
        ("user", "$(id)", False),
        ("service", "meta-llama-3.1-8b+x", True),
        ("service", "a@b", False),
        ("service", "../x", False),
        ("path", "/v1/chat/completions", True),
        ("path", "/v1/x?a=1&b=2", True),
        ("path", "/v1/../etc", False),
        ("path", "v1/x", False),
        ("path", "/v1/%2e", False),
        ("path", "/" + "a" * 255, True),
        ("path", "/" + "a" * 256, False),
    ],
)
def test_field_validation(field: str, value: str, ok: bool) -> None:
    check = {"user": protocol.check_user, "service": protocol.check_service, "path": protocol.check_path}[
        field
    ]
    if ok:
        assert check(value) == value
    else:
        with pytest.raises(protocol.ProtocolError):
            check(value)


def test_inference_id_kept_when_valid_else_new_uuid() -> None:
    assert protocol.inference_id("abc-1.2_3+4") == "abc-1.2_3+4"
    for bad in (None, "", "a b", "x" * 257, "a;b"):
        new = protocol.inference_id(bad)
        assert new != bad and uuid.UUID(new).version == 4


def test_method_must_be_a_word() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.build_command("i", "u", "s", "/v1/x", "GET -H", [])


def test_parse_head_waits_for_the_blank_line_and_skips_100_continue() -> None:
    assert protocol.parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: a") is None
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nX-A:  b \r\n\r\n{}"
    )
    parsed = protocol.parse_head(answer)
    assert parsed is not None
    head, rest = parsed
    assert (head.status, head.reason, rest) == (201, "Created", b"{}")
    assert head.headers == [("Content-Type", "application/json"), ("X-A", "b")]
    assert head.header("content-type") == "application/json"


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 999 X\r\n\r\n",
        b"<html>",
    ],
)
def test_parse_head_refuses_non_http(answer: bytes) -> None:
    with pytest.raises(protocol.BadAnswer):
        protocol.parse_head(answer)


def test_usage_injection_only_for_streams_that_did_not_ask() -> None:
    doc, asked = protocol.prepare_body(
        b'{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}'
    )
    assert doc is not None and not asked
    body = json.loads(protocol.inject_usage(doc))
    assert body["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    assert protocol.prepare_body(b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}')[1]
    assert protocol.prepare_body(b'{"model":"m"}')[1]
    assert protocol.prepare_body(b"not json") == (None, True)
    assert protocol.prepare_body(b"[1]") == (None, True)


def _sse(*docs: object) -> bytes:
    return b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs) + b"data: [DONE]\n\n"


USAGE = {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
CHUNKS = [{"id": "c", "choices": [{"index": 0, "delta": {"content": w}}], "usage": None} for w in ("a", "b")]


@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12), crlf=st.booleans())
@settings(max_examples=200, deadline=None)
def test_usage_stripper_removes_only_the_usage_event_whatever_the_chunking(
    cuts: list[int], crlf: bool
) -> None:
    stream = _sse(*CHUNKS, USAGE)
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    expected = _sse(*CHUNKS)
    if crlf:
        expected = expected.replace(b"\n", b"\r\n")
    s, out, prev = UsageStripper(), b"", 0
    for cut in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
        out += s.feed(stream[prev:cut])
        prev = cut
    out += s.flush()
    assert out == expected


def test_usage_stripper_passes_complete_events_at_once() -> None:
    s = UsageStripper()
    assert s.feed(b'data: {"choices": [{}]}\n\ndata: {"cho') == b'data: {"choices": [{}]}\n\n'
    assert s.flush() == b'data: {"cho'
    assert not is_usage_only(b'data: {"choices": [{"x": 1}], "usage": {"a": 1}}\n\n')
    assert is_usage_only(b'data: {"choices": [], "usage": {"a": 1}}\n\n')


STATUS = {
    "services": [
        {
            "id": "a",
            "name": "A",
            "owned_by": "o",
            "input": ["text"],
            "output": ["text"],
            "state": "ready",
            "ready": 2,
            "starting": 0,
            "target": 2,
        },
        {"id": "b", "name": "B", "owned_by": "o", "ready": 0, "starting": 1, "target": 1},
        {"id": "c", "ready": 0, "starting": 0, "target": 0},
    ]
}


def test_models_from_status_shape() -> None:
    models = models_from_status(json.dumps(STATUS).encode(), 123)
    assert [(m["id"], m["status"]) for m in models] == [("a", "ready"), ("b", "starting"), ("c", "offline")]
    a = models[0]
    assert a["object"] == "model" and a["created"] == 123 and a["owned_by"] == "o" and a["name"] == "A"
    assert a["input"] == ["text"] and a["instances"] == {"ready": 2, "starting": 0, "target": 2}
    assert models[2]["name"] == "c" and models[2]["owned_by"] == "saia"
    # a bare list, and counts nested under "instances", are read too
    nested = models_from_status(b'[{"id": "x", "instances": {"ready_instances": 0, "pending": 2}}]', 1)
    assert nested[0]["status"] == "starting"
    with pytest.raises(StatusError):
        models_from_status(b"<html>", 1)
    with pytest.raises(StatusError):
        models_from_status(b'"text"', 1)


def test_api_keys_parse_and_errors(tmp_path: Path) -> None:
    keys = parse_keys("# c\n\nsk-00000001 alice  # trailing\n  sk-00000002\tbob@x.de\n", "f")
    assert sorted(keys.values()) == ["alice", "bob@x.de"]
    for bad in ("onlyone\n", "sk-00000001 a b\n", "sk-00000001 bad$user\n", "short u\n"):
        with pytest.raises(KeyFileError):
            parse_keys(bad, "f")
    path = tmp_path / "keys"
    with pytest.raises(KeyFileError):
        ApiKeys(str(path))  # missing at start-up: an error
    path.write_text("sk-00000001 alice\n")
    ak = ApiKeys(str(path))
    assert ak.user_for("Bearer sk-00000001") == "alice"
    assert ak.user_for("bearer  sk-00000001 ") == "alice"
    assert ak.user_for("Basic sk-00000001") is None and ak.user_for(None) is None
    assert ak.user_for("Bearer sk-00000002") is None
    path.write_text("garbage line here\n")  # a broken reload keeps the old keys
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert ak.user_for("Bearer sk-00000001") == "alice"
    path.write_text("sk-00000002 bob\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert ak.user_for("Bearer sk-00000001") is None and ak.user_for("Bearer sk-00000002") == "bob"


@pytest.mark.parametrize(
    "kw",
    [
        {"ssh_host": ""},
        {"ssh_host": "-oProxyCommand=x"},
        {"ssh_host": "h", "ssh_user": "a b"},
        {"ssh_host": "h", "pool_size": 0},
        {"ssh_host": "h", "timeout": 0},
        {"ssh_host": "h", "ssh_options": ("-oX",)},
        {"ssh_host": "h", "port": 70000},
    ],
)
def test_config_refuses_unusable_values(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ProxyConfig(**kw).check()  # type: ignore[arg-type]
