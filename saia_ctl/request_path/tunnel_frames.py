"""The frames of the ``tunnel`` session (``docs/wire-protocol.md`` section 8).

A frame is a 9-byte header and a payload: one byte of kind, the stream id
(4 bytes, big endian), the payload length (4 bytes, big endian), then that
many bytes. A payload longer than ``MAX_PAYLOAD`` or an unknown kind is a
broken session (``FrameError``): the reader cannot know where the next frame
starts. Standard library only, no I/O: both sides (the login node's tunnel
process and the proxy) use it.
"""

from __future__ import annotations

HEADER = 9
MAX_PAYLOAD = 1 << 20  # 1 MiB: a body or an answer larger than this comes in several pieces
MAX_STREAM = (1 << 32) - 1
GREETING = b"saia-tunnel 1"  # the payload of the first frame the login node sends

# proxy -> login node
OPEN = 0x4F  # "O": payload = the request lines and curl arguments (as SSH_ORIGINAL_COMMAND)
BODY = 0x42  # "B": a piece of the request body
END = 0x45  # "E": the request body is complete (the handler's stdin reaches end of file)
CANCEL = 0x43  # "C": the client went away: abort the stream
PING = 0x4B  # "K": keep-alive, on stream 0
# both ways: flow control of the answers (docs/wire-protocol.md section 8). From the proxy on
# stream 0: the offer, with each stream's first window; the login node that knows it echoes it.
# From the proxy on a stream: that many more bytes of DATA may come.
WINDOW = 0x57  # "W": payload = a window in bytes (4 bytes, big endian, 1 .. MAX_WINDOW)
MAX_WINDOW = 1 << 30
# login node -> proxy
HELLO = 0x48  # "H": stream 0, payload GREETING: this installation speaks the tunnel
DATA = 0x44  # "D": a piece of the answer, as `curl -i -N` prints it
DONE = 0x46  # "F": the stream ended; payload = the outcome (ascii: "ok", "error", "aborted")
ERROR = 0x58  # "X": the stream (or, on stream 0, the session) ended with an error; payload = why
PONG = 0x6B  # "k": the answer to PING

TO_LOGIN = frozenset({OPEN, BODY, END, CANCEL, PING, WINDOW})
TO_PROXY = frozenset({HELLO, DATA, DONE, ERROR, PONG, WINDOW})


class FrameError(Exception):
    """The byte stream is not a sequence of frames: the session cannot go on."""


def encode(kind: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame; ValueError for a payload over ``MAX_PAYLOAD`` or a stream id out of range."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    if not 0 <= stream <= MAX_STREAM:
        raise ValueError(f"stream id {stream} out of range")
    return bytes((kind,)) + stream.to_bytes(4, "big") + len(payload).to_bytes(4, "big") + payload


def window(stream: int, size: int) -> bytes:
    """A WINDOW frame granting ``size`` bytes (ValueError out of 1 .. ``MAX_WINDOW``)."""
    if not 0 < size <= MAX_WINDOW:
        raise ValueError(f"window of {size} bytes out of range")
    return encode(WINDOW, stream, size.to_bytes(4, "big"))


def window_size(payload: bytes) -> int | None:
    """The bytes a WINDOW frame grants; None for a malformed one."""
    if len(payload) != 4:
        return None
    size = int.from_bytes(payload, "big")
    return size if 0 < size <= MAX_WINDOW else None


def pieces(kind: int, stream: int, data: bytes) -> list[bytes]:
    """``data`` as frames of at most ``MAX_PAYLOAD`` bytes each (one empty frame for no data)."""
    if not data:
        return [encode(kind, stream)]
    return [encode(kind, stream, data[i : i + MAX_PAYLOAD]) for i in range(0, len(data), MAX_PAYLOAD)]


class Decoder:
    """Incremental decoder: ``feed`` bytes, get the complete frames as (kind, stream, payload)."""

    __slots__ = ("_buf", "kinds")

    def __init__(self, kinds: frozenset[int]) -> None:
        self.kinds = kinds  # the kinds this side may receive
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The frames completed by ``data``; FrameError on an unknown kind or an oversized length."""
        buf = self._buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= HEADER:
            kind = buf[pos]
            if kind not in self.kinds:
                raise FrameError(f"unknown frame kind 0x{kind:02x}")
            length = int.from_bytes(buf[pos + 5 : pos + 9], "big")
            if length > MAX_PAYLOAD:
                raise FrameError(f"frame of {length} bytes is over the limit of {MAX_PAYLOAD}")
            if n - pos - HEADER < length:
                break
            stream = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            out.append((kind, stream, bytes(buf[pos + HEADER : pos + HEADER + length])))
            pos += HEADER + length
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)
