"""The wire protocol as the proxy speaks it: validation, the command, the answer's head.

Pure functions, standard library only (see ``docs/wire-protocol.md``; the
character sets and limits come from ``saia_ctl.wire_spec``, shared with the
request path). The command is built exactly as saia-hub's ``proxy-hpc``
builds it, so the cluster side cannot tell the two apart; fields are
validated here first, so a bad user id is a 400 from the proxy, not a round
trip to the cluster.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import wire_spec as spec

ID_RE = re.compile(f"{spec.regex_class(spec.ID_CHARS)}{{1,{spec.MAX_FIELD}}}")
USER_RE = re.compile(f"{spec.regex_class(spec.USER_CHARS)}{{1,{spec.MAX_FIELD}}}")
PATH_RE = re.compile(f"/{spec.regex_class(spec.PATH_CHARS)}{{0,{spec.MAX_FIELD - 1}}}")
HEADER_NAME_RE = re.compile(f"{spec.regex_class(spec.TOKEN_CHARS)}+")
HEADER_VALUE_RE = re.compile(r"[\x20-\x7e]*")
# Words the cluster's argument parser treats as option starts (section 2).
_PARSER_WORDS = frozenset(spec.ARG_WORDS)

HOP_BY_HOP = spec.HOP_BY_HOP
# Never sent to the cluster (see wire_spec.DROPPED_REQUEST_HEADERS): the length
# (the body streams on stdin), this hop's host, the client's credentials (the
# cluster sends the job's secret instead) and compression (the cluster reads
# usage from the plain answer).
_DROP_REQUEST = spec.DROPPED_REQUEST_HEADERS
# Not copied from the cluster's answer: the proxy frames the body itself.
DROP_RESPONSE = HOP_BY_HOP | {"content-length"}


class ProtocolError(ValueError):
    """A request the proxy refuses before it reaches the cluster (HTTP 400)."""


def valid_inference_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None


def check_user(user: str) -> str:
    if USER_RE.fullmatch(user) is None:
        raise ProtocolError(f"invalid user id: 1-{spec.MAX_FIELD} characters from {spec.USER_CHARS_TEXT}")
    return user


def check_service(service: str) -> str:
    if ID_RE.fullmatch(service) is None:
        raise ProtocolError(
            f"invalid model (service id): 1-{spec.MAX_FIELD} characters from {spec.ID_CHARS_TEXT}"
        )
    return service


def check_path(path: str) -> str:
    if PATH_RE.fullmatch(path) is None or ".." in path:
        raise ProtocolError(
            f"invalid request path: at most {spec.MAX_FIELD} characters from {spec.PATH_CHARS_TEXT}, no '..'"
        )
    return path


def inference_id(header: str | None) -> str:
    """The client's ``inference-id`` when it is valid, else a new UUID4."""
    if header and valid_inference_id(header):
        return header
    return str(uuid.uuid4())


def forwarded_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The request headers saia-hub forwards, minus those the cluster could misparse.

    Dropped: content-length, hop-by-hop, host, authorization, accept-encoding,
    ``x-*`` and ``inference-*`` except ``inference-service``; and any header
    whose value holds a character outside printable ASCII or a bare ``-H``,
    ``-X`` or ``-d`` word (the cluster splits line 5 on white space).
    """
    out: list[tuple[str, str]] = []
    for name, value in headers:
        low = name.lower()
        if low in _DROP_REQUEST or low.startswith("x-"):
            continue
        if low.startswith("inference-") and low != "inference-service":
            continue
        if HEADER_NAME_RE.fullmatch(name) is None or HEADER_VALUE_RE.fullmatch(value) is None:
            continue
        if any(word in _PARSER_WORDS for word in value.split()):
            continue
        out.append((low, value.strip()))
    return out


def build_command(
    inference: str, user: str, service: str, path: str, method: str, headers: Iterable[tuple[str, str]]
) -> str:
    """``SSH_ORIGINAL_COMMAND`` for a request whose body goes on stdin (no ``-d``)."""
    if method.upper() != method or not method.isalpha():
        raise ProtocolError(f"invalid method {method!r}")
    args = f" -X {method}" + "".join(f' -H "{name}: {value}"' for name, value in headers)
    return "\n".join((inference, check_user(user), check_service(service), check_path(path), args))


@dataclass
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None


class BadAnswer(ValueError):
    """The cluster's answer does not start with an HTTP/1.x status line and headers."""


HEAD_END = b"\r\n\r\n"


def parse_head(buffer: bytes) -> tuple[ResponseHead, bytes] | None:
    """Parse the head of a raw HTTP/1.1 answer; ``None`` until it is complete.

    A ``100 Continue`` (or other 1xx) interim answer is skipped. Returns the
    final head and the body bytes already read after it.
    """
    while True:
        end = buffer.find(HEAD_END)
        if end < 0:
            if not buffer.startswith(b"HTTP/"[: len(buffer)]):
                raise BadAnswer("the cluster's answer is not HTTP")
            return None
        head, buffer = buffer[:end], buffer[end + len(HEAD_END) :]
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise BadAnswer(f"bad status line from the cluster: {lines[0][:80]!r}")
        status = int(parts[1])
        if not 100 <= status <= 599:
            raise BadAnswer(f"bad status code from the cluster: {status}")
        if status < 200:
            continue
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                continue
            if name.lower() in DROP_RESPONSE:
                continue
            headers.append((name, value.strip()))
        return ResponseHead(status, parts[2] if len(parts) > 2 else "", headers), buffer


def prepare_body(body: bytes) -> tuple[dict[str, object] | None, bool]:
    """The body as a JSON object (or None) and whether the client asked for usage.

    The second value is True unless this is a streaming request whose client
    did not ask for ``stream_options.include_usage``.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, True
    if not isinstance(doc, dict):
        return None, True
    if doc.get("stream") is not True:
        return doc, True
    options = doc.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    return doc, asked


def inject_usage(doc: dict[str, object]) -> bytes:
    """The body with ``stream_options.include_usage`` set, so the cluster can count tokens."""
    options = doc.get("stream_options")
    merged = dict(options) if isinstance(options, dict) else {}
    merged["include_usage"] = True
    doc = dict(doc)
    doc["stream_options"] = merged
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def openai_error(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    """An error body in the OpenAI shape."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()
