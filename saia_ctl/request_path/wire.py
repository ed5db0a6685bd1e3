"""The forced-command wire protocol: parse and validate ``SSH_ORIGINAL_COMMAND``,
and build the answers the interface gives itself.

The protocol is fixed by ``docs/wire-protocol.md``: control words (section 1),
the request lines (section 2) and the error answers (section 4); its
character sets and limits are declared in ``saia_ctl.wire_spec``. Nothing
here touches the database, a socket or a shell.
"""

from __future__ import annotations

from .. import wire_spec as spec

MAX_FIELD = spec.MAX_FIELD
MAX_HEADERS = spec.MAX_HEADERS
MAX_HEADER_LEN = spec.MAX_HEADER_LEN
MAX_METHOD_LEN = spec.MAX_METHOD_LEN
METHODS = spec.METHODS
CONTROL_WORDS = tuple(w.encode("ascii") for w in spec.CONTROL_WORDS)
_ARG_WORDS = tuple(w.encode("ascii") for w in spec.ARG_WORDS)

ID_CHARS = frozenset(spec.ID_CHARS.encode("ascii"))
USER_CHARS = frozenset(spec.USER_CHARS.encode("ascii"))
PATH_CHARS = frozenset(spec.PATH_CHARS.encode("ascii"))
TOKEN_CHARS = frozenset(spec.TOKEN_CHARS.encode("ascii"))
_SPACE = (0x20, 0x09)
# Bytes never allowed in the argument list (the part before -d): C0 controls
# except TAB (a word separator), and DEL. LF cannot occur (lines are joined).
_BAD_ARG_BYTES = frozenset(b for b in range(0x20) if b != 0x09) | {0x7F}

# Sent by the client, never forwarded (see wire_spec); we set Host, the
# framing and Authorization (the job's secret) ourselves.
DROPPED_HEADERS = spec.DROPPED_REQUEST_HEADERS

REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class WireError(Exception):
    """The command cannot be served; ``status`` and ``message`` form the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ParsedRequest:
    """A validated request (section 2). ``body`` is None when it comes on stdin."""

    __slots__ = (
        "body",
        "content_length",
        "headers",
        "inference_id",
        "method",
        "path",
        "service_id",
        "user_id",
    )

    def __init__(
        self,
        inference_id: str,
        user_id: str,
        service_id: str,
        path: str,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        content_length: int | None,
    ) -> None:
        self.inference_id = inference_id
        self.user_id = user_id
        self.service_id = service_id
        self.path = path
        self.method = method
        self.headers = headers  # forwardable headers, in order, as (name, value)
        self.body = body
        self.content_length = content_length  # the client's, for a stdin body only

    def __repr__(self) -> str:
        return (
            f"ParsedRequest({self.inference_id!r}, {self.user_id!r}, {self.service_id!r}, "
            f"{self.method} {self.path!r}, {self.headers!r}, body={self.body!r})"
        )


def _field(value: bytes, allowed: frozenset[int], what: str, charset: str) -> str:
    if not value:
        raise WireError(400, f"{what} is empty")
    if len(value) > MAX_FIELD:
        raise WireError(400, f"{what} is longer than {MAX_FIELD} characters")
    for b in value:
        if b not in allowed:
            raise WireError(400, f"{what} has a character outside {charset}")
    return value.decode("ascii")


def _path(value: bytes) -> str:
    path = _field(value, PATH_CHARS, "line 4 (request path)", spec.PATH_CHARS_TEXT)
    if not path.startswith("/"):
        raise WireError(400, "line 4 (request path) must start with /")
    if ".." in path:
        raise WireError(400, "line 4 (request path) must not contain ..")
    return path


def _header(words: list[bytes]) -> tuple[str, str]:
    raw = b" ".join(words)
    # One leading and one trailing quote are removed, as the original did with
    # ${h#\"} and ${h%\"}; quotes inside the value stay.
    if raw.startswith(b'"'):
        raw = raw[1:]
    if raw.endswith(b'"'):
        raw = raw[:-1]
    if len(raw) > MAX_HEADER_LEN:
        raise WireError(400, f"a header is longer than {MAX_HEADER_LEN} bytes")
    name_b, sep, value_b = raw.partition(b":")
    if not sep:
        raise WireError(400, "a -H argument is not of the form 'name: value'")
    if not name_b or any(b not in TOKEN_CHARS for b in name_b):
        raise WireError(400, "a header name is empty or not an HTTP token")
    try:
        value = value_b.decode("utf-8").strip(" ")
    except UnicodeDecodeError:
        raise WireError(400, "a header value is not valid UTF-8") from None
    return name_b.decode("ascii"), value


def parse_arguments(
    args: bytes,
) -> tuple[str | None, list[tuple[str, str]], bytes | None]:
    """Lines 5+ (already joined): method (None if no -X), headers, inline body or None."""
    method: str | None = None
    headers: list[tuple[str, str]] = []
    current: list[bytes] | None = None  # words of the header being read
    body: bytes | None = None
    expect_method = False
    i, n = 0, len(args)
    while i < n:
        while i < n and args[i] in _SPACE:
            i += 1
        if i >= n:
            break
        j = i
        while j < n and args[j] not in _SPACE:
            j += 1
        word = args[i:j]
        i = j
        if expect_method:
            if len(word) > MAX_METHOD_LEN:
                raise WireError(400, "the method after -X is too long")
            method = word.decode("ascii", "replace")
            if method not in METHODS:
                raise WireError(400, f"unsupported method; use one of {', '.join(sorted(METHODS))}")
            expect_method = False
            continue
        if word in _ARG_WORDS:
            if current is not None:
                headers.append(_header(current))
                current = None
            if word == b"-H":
                if len(headers) >= MAX_HEADERS:
                    raise WireError(400, f"more than {MAX_HEADERS} headers")
                current = []
            elif word == b"-X":
                if method is not None:
                    raise WireError(400, "-X given twice")
                expect_method = True
            else:
                # -d ends parsing; the body is the rest after one separating blank.
                body = args[j + 1 :] if j < n else b""
                break
            continue
        if current is None:
            raise WireError(400, "malformed argument list: a word outside -X/-H/-d")
        current.append(word)
    if expect_method:
        raise WireError(400, "-X without a method")
    if current is not None:
        headers.append(_header(current))
    return method, headers, body


def parse_command(raw: bytes) -> ParsedRequest | str:
    """A control word (``"keep-alive"``/``"status"``) or a validated request.

    Raises ``WireError(400, ...)`` for anything else.
    """
    word = raw.strip(b" \t\r\n")
    if word in CONTROL_WORDS:
        return word.decode("ascii")
    if b"\n" not in raw:
        raise WireError(400, "not a control command (keep-alive, status, tunnel) nor a request of 4+ lines")
    lines = raw.split(b"\n")
    if len(lines) < 4:
        raise WireError(400, "a request needs at least 4 lines: inference id, user id, service id, path")
    inference_id = _field(lines[0], ID_CHARS, "line 1 (inference id)", spec.ID_CHARS_TEXT)
    user_id = _field(lines[1], USER_CHARS, "line 2 (user id)", spec.USER_CHARS_TEXT)
    service_id = _field(lines[2], ID_CHARS, "line 3 (service id)", spec.ID_CHARS_TEXT)
    path = _path(lines[3])
    joined = b"".join(lines[4:])
    method, raw_headers, body = parse_arguments(joined)
    # Control bytes before the body (the body itself is opaque): a CR in a
    # header value would split it on the wire.
    for b in joined if body is None else joined[: len(joined) - len(body)]:
        if b in _BAD_ARG_BYTES:
            raise WireError(400, "the argument list has a control character (CR, NUL, ...)")
    if method is None:
        method = "GET" if body is None else "POST"  # what curl does without -X
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    for name, value in raw_headers:
        low = name.lower()
        if low == "content-length":
            if not value.isdigit() or len(value) > 15:
                raise WireError(400, "content-length is not a number")
            content_length = int(value)
            continue
        if low in DROPPED_HEADERS:
            continue
        headers.append((name, value))
    return ParsedRequest(
        inference_id,
        user_id,
        service_id,
        path,
        method,
        headers,
        body,
        content_length if body is None else None,
    )


def _json_error(status: int, message: str, kind: str, extra: dict[str, object] | None) -> bytes:
    import json

    err: dict[str, object] = {"message": message, "type": kind, "code": status}
    doc: dict[str, object] = {"error": err}
    if extra:
        doc.update(extra)
    return json.dumps(doc).encode("utf-8")


_KINDS = {
    400: "invalid_request_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error_response(
    status: int,
    message: str,
    headers: tuple[tuple[str, str], ...] = (),
    extra: dict[str, object] | None = None,
) -> bytes:
    """A complete HTTP/1.1 answer with an OpenAI-style JSON error body."""
    body = _json_error(status, message, _KINDS.get(status, "error"), extra)
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    head.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
