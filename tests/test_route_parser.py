"""The forced-command parser (wire-protocol.md sections 1, 2 and 4), table-driven,
plus a property test: random bytes in every field give 400/404, never a
backend call, never an exception."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saia_ctl.request_path import handler, wire
from saia_ctl.request_path.wire import ParsedRequest, WireError, parse_command
from tests.support.fixtures import service_config
from tests.support.wire import add_job, command, parse_as_proxy

HEAD = b"id-1\njdoe@uni-x.de\nsvc\n/v1/chat/completions\n"


def req(raw: bytes) -> ParsedRequest:
    parsed = parse_command(raw)
    assert isinstance(parsed, ParsedRequest)
    return parsed


# (name, lines 5+, method, headers, body)
GOOD: list[tuple[str, bytes, str, list[tuple[str, str]], bytes | None]] = [
    (
        "saia proxy format",
        b' -X POST -H "content-type: application/json" -H "accept: text/event-stream" -d {"a": 1}',
        "POST",
        [("content-type", "application/json"), ("accept", "text/event-stream")],
        b'{"a": 1}',
    ),
    ("empty inline body", b' -X GET -H "accept: */*" -d ', "GET", [("accept", "*/*")], b""),
    ("-d as last word, no blank", b" -X GET -d", "GET", [], b""),
    ("no -d: body on stdin", b' -X POST -H "a: b"', "POST", [("a", "b")], None),
    ("no -X, inline body: POST as curl", b" -d x", "POST", [], b"x"),
    ("no -X, no body: GET", b"", "GET", [], None),
    (
        "words of a header joined by single spaces",
        b' -X POST -H "user-agent:   curl/8   (x)"  -H  "b:c"',
        "POST",
        [("user-agent", "curl/8 (x)"), ("b", "c")],
        None,
    ),
    (
        "only one leading and one trailing quote removed",
        b' -X POST -H "x-q: "quoted"" -d ',
        "POST",
        [("x-q", '"quoted"')],
        b"",
    ),
    ("header without quotes", b" -X POST -H x-a: 1 -d ", "POST", [("x-a", "1")], b""),
    ("empty header value", b' -X POST -H "x-e: " -d ', "POST", [("x-e", "")], b""),
    (
        "body kept verbatim after one blank (inner runs of blanks, quotes, -H)",
        b' -X POST -d   {"t": "a  -H b\t\\"c\\""}  ',
        "POST",
        [],
        b'  {"t": "a  -H b\t\\"c\\""}  ',
    ),
    ("tab separates words", b"\t-X\tPUT\t-H\t'x:y'\t-d\tz", "PUT", [("'x", "y'")], b"z"),
    (
        "-d inside a header word does not end parsing",
        b' -X POST -H "x-data: a-d -db" -d q',
        "POST",
        [("x-data", "a-d -db")],
        b"q",
    ),
    (
        "dropped: hop-by-hop, authorization, host, accept-encoding, expect",
        b' -X POST -H "Authorization: Bearer user-key" -H "host: cloud" -H "connection: keep-alive"'
        b' -H "Transfer-Encoding: chunked" -H "accept-encoding: gzip" -H "Expect: 100-continue"'
        b' -H "TE: trailers" -H "upgrade: h2c" -H "keep-alive: 5" -H "inference-service: svc" -d ',
        "POST",
        [("inference-service", "svc")],
        b"",
    ),
    ("UTF-8 header value", ' -X POST -H "x-name: Jürgen" -d '.encode(), "POST", [("x-name", "Jürgen")], b""),
    ("all methods", b" -X OPTIONS", "OPTIONS", [], None),
]


@pytest.mark.parametrize(("name", "args", "method", "headers", "body"), GOOD, ids=[g[0] for g in GOOD])
def test_parse_good(
    name: str, args: bytes, method: str, headers: list[tuple[str, str]], body: bytes | None
) -> None:
    r = req(HEAD + args)
    assert (r.method, r.headers, r.body) == (method, headers, body)
    assert (r.inference_id, r.user_id, r.service_id, r.path) == (
        "id-1",
        "jdoe@uni-x.de",
        "svc",
        "/v1/chat/completions",
    )


def test_parse_lines_after_5_are_joined_without_separator() -> None:
    # proxy-hpc puts the raw body after "-d ": its newlines vanish, as in the original.
    r = req(HEAD + b' -X POST -H "content-type: application/json"\n -d {"a":\n1,\n"b": "x"}\n')
    assert r.body == b'{"a":1,"b": "x"}'
    r = req(HEAD + b' -X POST -H\n "a: b"\n -H c:d')
    assert r.headers == [("a", "b"), ("c", "d")]


def test_parse_as_the_wire_kit_builds_it() -> None:
    raw = command(
        "abc", "u@x", "svc", "/v1/models?x=1&y=2", method="GET", headers={"accept": "application/json"}
    )
    r = req(raw)
    assert (r.path, r.method, r.headers, r.body) == (
        "/v1/models?x=1&y=2",
        "GET",
        [("accept", "application/json")],
        b"",
    )


def test_content_length_kept_only_for_stdin_bodies() -> None:
    assert req(HEAD + b' -X POST -H "Content-Length: 12"').content_length == 12
    assert req(HEAD + b' -X POST -H "Content-Length: 12" -d abc').content_length is None


def test_control_words() -> None:
    assert parse_command(b"keep-alive") == "keep-alive"
    assert parse_command(b"status") == "status"
    assert parse_command(b"keep-alive \r") == "keep-alive"
    assert parse_command(b"status\n") == "status"
    with pytest.raises(WireError):
        parse_command(b"keep-alive\nstatus")


LONG = b"a" * 257
BAD: list[tuple[str, bytes]] = [
    ("empty command", b""),
    ("unknown control word", b"reboot"),
    ("shell metacharacters", b"keep-alive; rm -rf /"),
    ("three lines", b"id\nuser\nsvc"),
    ("empty inference id", b"\nuser\nsvc\n/p\n"),
    ("inference id charset", b"id/1\nuser\nsvc\n/p\n"),
    ("inference id with @", b"id@1\nuser\nsvc\n/p\n"),
    ("inference id too long", LONG + b"\nuser\nsvc\n/p\n"),
    ("user charset", b"id\nu ser\nsvc\n/p\n"),
    ("user with CR", b"id\nuser\r\nsvc\n/p\n"),
    ("user too long", b"id\n" + LONG + b"\nsvc\n/p\n"),
    ("service charset", b"id\nuser\ns$vc\n/p\n"),
    ("service too long", b"id\nuser\n" + LONG + b"\n/p\n"),
    ("empty service", b"id\nuser\n\n/p\n"),
    ("path without slash", b"id\nuser\nsvc\nv1/x\n"),
    ("path with ..", b"id\nuser\nsvc\n/v1/../etc\n"),
    ("path with ..  at end", b"id\nuser\nsvc\n/..\n"),
    ("path with percent", b"id\nuser\nsvc\n/v1/%2e\n"),
    ("path with space", b"id\nuser\nsvc\n/v1 x\n"),
    ("path with #", b"id\nuser\nsvc\n/v1#x\n"),
    ("path too long", b"id\nuser\nsvc\n/" + b"a" * 256 + b"\n"),
    ("non-UTF-8 in a field", b"id\nus\xe9r\nsvc\n/p\n"),
    ("unknown method", b"id\nuser\nsvc\n/p\n -X BREW -d "),
    ("lowercase method", b"id\nuser\nsvc\n/p\n -X post -d "),
    ("CONNECT", b"id\nuser\nsvc\n/p\n -X CONNECT -d "),
    ("-X without method", b"id\nuser\nsvc\n/p\n -H a:b -X"),
    ("-X twice", b"id\nuser\nsvc\n/p\n -X GET -X POST"),
    ("word before any option", b"id\nuser\nsvc\n/p\n hello -X GET"),
    ("header without colon", b'id\nuser\nsvc\n/p\n -X GET -H "nocolon" -d '),
    ("header name with space", b'id\nuser\nsvc\n/p\n -X GET -H "a b: c" -d '),
    ("header name empty", b'id\nuser\nsvc\n/p\n -X GET -H ": c" -d '),
    ("header name with non-token", b'id\nuser\nsvc\n/p\n -X GET -H "a(b): c" -d '),
    ("empty -H", b"id\nuser\nsvc\n/p\n -X GET -H -d "),
    ("CR in header value", b'id\nuser\nsvc\n/p\n -X GET -H "a: b\rInjected: 1" -d '),
    ("NUL in header value", b'id\nuser\nsvc\n/p\n -X GET -H "a: b\x00" -d '),
    ("DEL in header value", b'id\nuser\nsvc\n/p\n -X GET -H "a: b\x7f" -d '),
    ("non-UTF-8 header value", b'id\nuser\nsvc\n/p\n -X GET -H "a: \xff\xfe" -d '),
    ("header too long", b'id\nuser\nsvc\n/p\n -X GET -H "a: ' + b"v" * 9000 + b'" -d '),
    ("too many headers", b"id\nuser\nsvc\n/p\n -X GET" + b" -H a:b" * 101),
    ("content-length not a number", b'id\nuser\nsvc\n/p\n -X POST -H "content-length: -1"'),
]


@pytest.mark.parametrize(("name", "raw"), BAD, ids=[b[0] for b in BAD])
def test_parse_bad(name: str, raw: bytes) -> None:
    with pytest.raises(WireError) as e:
        parse_command(raw)
    assert e.value.status == 400
    assert e.value.message


def test_limits_are_inclusive() -> None:
    ok = b"a" * 256
    r = req(ok + b"\n" + ok + b"\n" + ok + b"\n/" + b"b" * 255 + b"\n")
    assert len(r.path) == 256
    assert req(b"id\nuser\nsvc\n/p\n" + b" -H a:b" * 100).headers[-1] == ("a", "b")


def test_error_response_is_complete_http() -> None:
    raw = wire.error_response(400, 'bad "thing"', (("Retry-After", "5"),), {"x": 1})
    status, headers, body = parse_as_proxy(raw)
    assert status == 400
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert dict(headers)["Content-Length"] == str(len(body))
    assert dict(headers)["Connection"] == "close"
    assert dict(headers)["Retry-After"] == "5"
    import json

    doc = json.loads(body)
    assert doc["error"]["message"] == 'bad "thing"' and doc["error"]["code"] == 400 and doc["x"] == 1


# --- the whole handler, in process -------------------------------------------


def run_inprocess(home: Path, raw: bytes, stdin: bytes = b"") -> tuple[int, bytes]:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    os.write(in_w, stdin)
    os.close(in_w)
    try:
        rc = handler.run(raw, stdin=in_r, stdout=out_w, environ={"SAIA_HOME": str(home)})
        with pytest.raises(OSError):  # run() closed its stdout
            os.close(out_w)
        chunks = []
        while data := os.read(out_r, 65536):
            chunks.append(data)
        return rc, b"".join(chunks)
    finally:
        os.close(out_r)
        os.close(in_r)


@pytest.fixture
def trap(home: Path, import_services: Any) -> Any:
    """A configured service whose ready job is a listening socket that must never be called."""
    import_services(service_config("svc", minimum_number_instances=0, maximum_number_instances=0))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    add_job(home / "saia.db", "svc", listener.getsockname()[1], "secret")
    # A request that is valid after all is forwarded to the trap: let it time out fast.
    (home / "saia.conf").write_text((home / "saia.conf").read_text() + "SAIA_BACKEND_TIMEOUT=0.2\n")
    yield listener
    listener.close()


def _calls(listener: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_inprocess_bad_request_answers_400_and_records_nothing(home: Path, trap: socket.socket) -> None:
    rc, out = run_inprocess(home, b"id\nuser\nsvc\n/../x\n -X GET -d ")
    status, _, body = parse_as_proxy(out)
    assert (rc, status) == (1, 400)
    assert b".." in body
    rc, out = run_inprocess(home, b"id\nuser\nnope\n/x\n -X GET -d ")
    assert parse_as_proxy(out)[0] == 404
    assert _calls(trap) == 0
    with sqlite3.connect(home / "saia.db") as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)


def test_inprocess_valid_request_reaches_the_trap(home: Path, trap: socket.socket) -> None:
    """The trap itself works: a valid request does call it (then times out quickly)."""
    _rc, out = run_inprocess(home, b"id\nuser\nsvc\n/x\n -X GET -d ")
    assert parse_as_proxy(out)[0] == 504
    assert _calls(trap) == 1


FIELD = st.binary(min_size=0, max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.lists(FIELD, min_size=1, max_size=8),
    joiner=st.sampled_from([b"\n", b" ", b"\r\n", b"\n\n"]),
)
def test_random_bytes_only_ever_give_400_or_404(
    home: Path, trap: socket.socket, fields: list[bytes], joiner: bytes
) -> None:
    raw = joiner.join(fields)
    try:
        _rc, out = run_inprocess(home, raw)
    except BaseException as e:  # pragma: no cover - the property is that this never happens
        pytest.fail(f"exception {e!r} for {raw!r}")
    if out == b"OK\n" or out.startswith(b'{"services"'):
        return  # hypothesis found a control word
    status, _, _ = parse_as_proxy(out)
    assert status in (400, 404), raw
    assert _calls(trap) == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=200), where=st.integers(0, 4))
def test_random_bytes_in_one_field_of_a_good_request(
    home: Path, trap: socket.socket, junk: bytes, where: int
) -> None:
    """Random bytes in one field of an otherwise valid request for a live service."""
    fields = [b"id-1", b"user@x", b"svc", b"/v1/x", b' -X GET -H "a: b" -d ']
    fields[where] = (b" -H " + junk) if where == 4 else junk
    raw = b"\n".join(fields)
    try:
        parsed = parse_command(raw)
    except WireError:
        parsed = None
    _rc, out = run_inprocess(home, raw)
    if parsed is not None:
        _calls(trap)
        return  # junk that happens to be valid (e.g. a token header); forwarded, as it should be
    assert parse_as_proxy(out)[0] in (400, 404)
    assert _calls(trap) == 0
