"""``forward.stream_body`` sends the answer's head with the first piece of the body
in one write (one SSH packet, one tunnel frame), and on its own before it waits
for a body that has not come yet (a stream's head is never held back)."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from saia_ctl.request_path import forward

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    monkeypatch.setattr(forward, "write_all", lambda fd, data: calls.append(bytes(data)))
    return calls


@pytest.fixture
def backend() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _stream(sock: socket.socket, answer: forward.Answer, no_body: bool = False) -> forward.Delivery:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    result = forward.Delivery()
    forward.stream_body(sock, answer, -1, poller, 5.0, no_body, result, HEAD)
    return result


def test_a_body_that_came_with_the_head_goes_out_in_one_write(
    writes: list[bytes], backend: tuple[socket.socket, socket.socket]
) -> None:
    body = b'{"usage": {"prompt_tokens": 1, "completion_tokens": 2}}'
    result = _stream(backend[0], forward.Answer(200, HEAD, False, len(body), body))
    assert writes == [HEAD + body]
    assert result.complete and result.bytes_out == len(body)


def test_the_head_goes_out_alone_before_waiting_for_the_body(
    writes: list[bytes], backend: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = backend
    theirs.sendall(b"5\r\nhello\r\n0\r\n\r\n")
    result = _stream(ours, forward.Answer(200, HEAD, True, None, b""))
    assert writes == [HEAD, b"hello"]
    assert result.complete and result.bytes_out == 5


@pytest.mark.parametrize(
    ("answer", "no_body"),
    [
        (forward.Answer(204, HEAD, False, None, b""), True),  # no body at all
        (forward.Answer(200, HEAD, False, 0, b""), False),  # an empty one
        (forward.Answer(200, HEAD, True, None, b"0\r\n\r\n"), False),  # an empty chunked one
    ],
)
def test_a_head_without_body_still_goes_out(
    writes: list[bytes], backend: tuple[socket.socket, socket.socket], answer: forward.Answer, no_body: bool
) -> None:
    result = _stream(backend[0], answer, no_body)
    assert writes == [HEAD]
    assert result.complete and result.bytes_out == 0
