"""Pieces of the backend side of the request path: the answer head, the chunked
decoder, and reading ``usage`` from the end of an answer."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saia_ctl.request_path.forward import BackendError, BrokenAnswer, ChunkDecoder, find_usage, parse_head

SSE = (
    b'data: {"choices": [{"delta": {"content": "say \\"usage\\": {\\"prompt_tokens\\": 99}"}}], "usage": null}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46,'
    b' "prompt_tokens_details": {"cached_tokens": 5}}}\n\n'
    b"data: [DONE]\n\n"
)

USAGE_CASES = [
    ("json answer", b'{"id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}', (3, 4)),
    ("json with blanks", b'{"usage" :\n {\n "completion_tokens" : 7 ,"prompt_tokens":1}}', (1, 7)),
    ("sse: last event with usage, null ones skipped, quotes in content", SSE, (12, 34)),
    ("embeddings: prompt only", b'{"data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}', (8, 0)),
    ("anthropic names", b'{"usage": {"input_tokens": 2, "output_tokens": 5}}', (2, 5)),
    ("no usage", b'{"choices": []}', (None, None)),
    ("usage null only", b'data: {"usage": null}\n\ndata: [DONE]\n\n', (None, None)),
    ("cut off object", b'{"usage": {"prompt_tokens": 3, "completion_to', (None, None)),
    ("escaped key in a string", b'{"content": "\\"usage\\": {\\"prompt_tokens\\": 5}"}', (None, None)),
    ("not numbers", b'{"usage": {"prompt_tokens": "3", "completion_tokens": true}}', (None, None)),
    (
        "earlier usage when the last is empty",
        b'{"usage": {"prompt_tokens": 1, "completion_tokens": 2}} {"usage": {}}',
        (1, 2),
    ),
]


@pytest.mark.parametrize(("name", "tail", "expected"), USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_find_usage(name: str, tail: bytes, expected: tuple[int | None, int | None]) -> None:
    assert find_usage(tail) == expected


@given(prompt=st.integers(0, 10**9), completion=st.integers(0, 10**9), pad=st.text(max_size=200))
def test_find_usage_agrees_with_json(prompt: int, completion: int, pad: str) -> None:
    doc = {
        "choices": [{"message": {"content": pad}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }
    for dumped in (json.dumps(doc), json.dumps(doc, indent=2), json.dumps(doc, ensure_ascii=False)):
        assert find_usage(dumped.encode()) == (prompt, completion)


def chunked(data: bytes, sizes: list[int]) -> bytes:
    out, i = b"", 0
    for n in sizes:
        piece = data[i : i + n]
        if not piece:
            break
        out += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
        i += n
    if i < len(data):
        out += b"%X\r\n%s\r\n" % (len(data) - i, data[i:])
    return out + b"0\r\nTrailer: x\r\n\r\n"


@given(
    data=st.binary(max_size=2000), sizes=st.lists(st.integers(1, 300), max_size=10), cut=st.integers(1, 50)
)
def test_chunk_decoder_any_split(data: bytes, sizes: list[int], cut: int) -> None:
    wire = chunked(data, sizes)
    dec = ChunkDecoder()
    out = b"".join(dec.feed(wire[i : i + cut]) for i in range(0, len(wire), cut))
    assert out == data and dec.done


def test_chunk_decoder_rejects_garbage() -> None:
    with pytest.raises(BrokenAnswer):
        ChunkDecoder().feed(b"zz\r\nabc\r\n")
    with pytest.raises(BrokenAnswer):
        ChunkDecoder().feed(b"3\r\nabcX\r\n")


def test_parse_head_normalises_for_the_saia_proxy() -> None:
    status, head, chunked_, length = parse_head(
        b"HTTP/1.1 200\r\ncontent-type:application/json\r\nX-Folded: a\r\n  b\r\nContent-Length: 12"
    )
    assert status == 200 and not chunked_ and length == 12
    assert (
        head
        == b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Folded: a b\r\nContent-Length: 12\r\n\r\n"
    )
    status, head, chunked_, length = parse_head(
        b"HTTP/1.0 404 Nope\nTransfer-Encoding: chunked\nContent-Length: 5"
    )
    assert (status, chunked_, length) == (404, True, None)
    assert head.startswith(b"HTTP/1.0 404 Nope\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b"HTTP/1.1 2000 OK",
        b"ICY 200 OK",
        b"HTTP/1.1 200 OK\r\nno colon",
        b"HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: x",
    ],
)
def test_parse_head_rejects(raw: bytes) -> None:
    with pytest.raises(BackendError) as e:
        parse_head(raw)
    assert e.value.status == 502
