"""Remove the usage-only event the proxy asked for but the client did not.

When a streaming client did not ask for ``stream_options.include_usage``,
the proxy sets it anyway so the cluster can record tokens. The backend then
ends the stream with one extra event whose ``choices`` is empty: clients
written against the plain stream (``chunk.choices[0]``) fail on it, so it is
dropped here. Every other event is passed on as soon as it is complete.
"""

from __future__ import annotations

import json
import re

# An event ends at a blank line; servers use \n, \r\n or \r line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def is_usage_only(event: bytes) -> bool:
    """True for ``data: {... "choices": [], "usage": {...}}``."""
    if b"usage" not in event or b"choices" not in event:
        return False
    payload = b"".join(line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:"))
    if not payload:
        return False
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("choices") == [] and isinstance(doc.get("usage"), dict)


class UsageStripper:
    """Feed bytes in, get the bytes to send out (whole events, usage-only ones removed)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        out: list[bytes] = []
        start = 0
        for m in _EVENT_END.finditer(buf):
            event = buf[start : m.end()]
            start = m.end()
            if not is_usage_only(event):
                out.append(event)
        self._pending = buf[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return b"" if is_usage_only(rest) else rest
