"""The wire protocol's character sets and limits (``docs/wire-protocol.md``,
section 2), declared once for the three places that check them: the request
path (``request_path/wire.py``, byte by byte), the proxy
(``proxy/protocol.py``) and the config import (``config.py``), which build
their regular expressions from the same strings with ``regex_class``.

Standard library only and no imports at all: the request path loads it for
every request.
"""

from __future__ import annotations

MAX_FIELD = 256  # lines 1-4: inference id, user id, service id, path (characters)
MAX_HEADERS = 100  # -H arguments of one request
MAX_HEADER_LEN = 8192  # one "name: value" (bytes)
MAX_METHOD_LEN = 16

CONTROL_WORDS = ("keep-alive", "status", "tunnel")  # sections 1 and 7
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Words of line 5 that start an option; anything else belongs to a header or the method.
ARG_WORDS = ("-H", "-X", "-d")

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
ID_CHARS = _ALNUM + "._-+"  # inference id, service id
USER_CHARS = ID_CHARS + "@"
PATH_CHARS = _ALNUM + "_/.-+?=&"  # after the leading /
TOKEN_CHARS = _ALNUM + "!#$%&'*+-.^_`|~"  # a header name: RFC 9110 tchar
# The same sets as people read them, for error messages.
ID_CHARS_TEXT = "A-Z a-z 0-9 . _ - +"
USER_CHARS_TEXT = "A-Z a-z 0-9 . _ - + @"
PATH_CHARS_TEXT = "A-Z a-z 0-9 _ / . - + ? = &"

# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection only.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers never forwarded to a backend (the proxy does not send them,
# the request path drops them): hop-by-hop ones, the framing and the host
# (set per hop), the client's credentials (the job's secret replaces them),
# Expect (the body is sent at once; a `100 Continue` would only confuse the
# answer) and Accept-Encoding (answers stay uncompressed so their `usage`
# can be read).
DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    "content-length",
    "host",
    "authorization",
    "accept-encoding",
    "expect",
}


def regex_class(chars: str) -> str:
    """A regular-expression character class matching exactly ``chars``."""
    return "[" + "".join("\\" + c if c in "\\]^-[" else c for c in chars) + "]"
