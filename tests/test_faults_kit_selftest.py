"""The fault kit's own checks: its HTTP parser refuses incomplete answers, its backend answers."""

from __future__ import annotations

import socket

import pytest

from tests.faultkit import Backend, parse_http
from tests.faultkit import backend as backend  # the fixture


def test_parse_http_rejects_incomplete_answers() -> None:
    good = b'HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\n\r\n{"error":"x"}'
    assert parse_http(good).status == 400
    for bad in (
        b"",
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\n",  # no blank line
        b'HTTP/1.1 400 Bad Request\r\nContent-Length: 20\r\n\r\n{"error":"x"}',  # short body
        b"HTTP/1.0 400 Bad\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 4000 Bad\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 400 Bad\r\nno colon\r\nContent-Length: 0\r\n\r\n",
        b"Traceback (most recent call last):\n",
    ):
        with pytest.raises(AssertionError):
            parse_http(bad)


def test_backend_answers_and_records(backend: Backend) -> None:
    with socket.create_connection(("127.0.0.1", backend.port), timeout=5) as s:
        s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert parse_http(data).status == 200
    assert backend.received[0][1] == b"abc"
