"""Attributed GPU time per user of a service, and its split into thousandths of a GPU-hour.

A user's attributed GPU time is kept as whole nanoseconds (an int: sums are exact and
the same in any order); ``to_ns`` converts the seconds a scan attributes, once per
user, service and folded piece (the ledger) or tail (a report).

The report shows a service's GPU total rounded to thousandths of a GPU-hour and splits
exactly that total among its users and its idle time by *cumulative rounding* in a
fixed order (``IDLE`` first, then the users by their JSON-encoded id): with S the sum
of the values and P the running sum up to and including a key, that key gets
round(T·P/S) − round(T·P'/S), P' the running sum before it. The shares add up to T
exactly, and each is the floor or the ceiling of its exact quota T·v/S (the quota rule
of largest remainders). Unlike largest remainders, one key's share needs only three
sums — of the keys before it, its own, of all — so ``GET /v1/usage`` reads one user's
share without the other users' values: the ledger stores a service's users in that
order with their values packed (``pack``), and ``Folded`` finds the sum before a user
with a string search and a sum over a slice, in C.

Stdlib only and cheap to import: the request path's usage answer reads it.
"""

from __future__ import annotations

import struct

from .. import cjson

IDLE = ""  # key of the idle share in a service's split (no user id is empty)
NS_PER_SECOND = 1_000_000_000


def to_ns(seconds: float) -> int:
    """Whole nanoseconds of ``seconds`` (round half to even)."""
    return round(seconds * NS_PER_SECOND)


def milli_gpu_hours(seconds: float) -> int:
    """Seconds (of GPU time, or of a job's or a service's time) as the report shows them:
    whole thousandths of an hour."""
    return round(seconds / 3.6)


def order_key(key: str) -> str:
    """A user's place in a split: by JSON-encoded id (``IDLE`` goes first whatever this says)."""
    return cjson.dumps(key)


def _rounded(running: int, total: int, whole: int) -> int:
    """round(total · running / whole), halves up, in exact integer arithmetic."""
    return (2 * total * running + whole) // (2 * whole)


def share(before: int, own: int, whole: int, total: int) -> int:
    """The share of ``total`` of a key with value ``own`` after keys summing to ``before``,
    all keys summing to ``whole`` (> 0)."""
    return _rounded(before + own, total, whole) - _rounded(before, total, whole)


def split(values: dict[str, int], total: int) -> dict[str, int]:
    """``total`` split among ``values`` (ns) by cumulative rounding: ints adding up to ``total``.
    With nothing to split by, all goes to the first key."""
    keys = sorted((k for k in values if k != IDLE), key=order_key)
    if IDLE in values:
        keys.insert(0, IDLE)
    whole = sum(values.values())
    if whole <= 0:
        return {k: (total if i == 0 else 0) for i, k in enumerate(keys)}
    out: dict[str, int] = {}
    running = done = 0
    for k in keys:
        running += values[k]
        upto = _rounded(running, total, whole)
        out[k] = upto - done
        done = upto
    return out


def _ints(blob: bytes | None) -> tuple[int, ...]:
    """Little-endian int64s (``struct``, not ``array``: that imports ``collections``)."""
    return struct.unpack(f"<{len(blob) // 8}q", blob) if blob else ()


def pack(users: dict[str, int]) -> tuple[str, bytes]:
    """A service's users as stored in the ledger: their encoded ids in split order, one per
    line, and their nanoseconds as little-endian int64 in the same order (zeros left out)."""
    pairs = sorted((order_key(u), ns) for u, ns in users.items() if ns and u != IDLE)
    return "\n".join(k for k, _ in pairs), struct.pack(f"<{len(pairs)}q", *(ns for _, ns in pairs))


def unpack(keys: str | None, blob: bytes | None) -> dict[str, int]:
    """``pack``'s users back (user id -> ns)."""
    if not keys:
        return {}
    names = cjson.loads("[" + keys.replace("\n", ",") + "]")
    return dict(zip(names, _ints(blob), strict=True))


class Folded:
    """A service's stored users, read for one user's share without decoding the others'."""

    __slots__ = ("_keys", "_values")

    def __init__(self, keys: str | None, blob: bytes | None) -> None:
        self._keys = "\n" + keys + "\n" if keys else "\n"
        self._values = _ints(blob)

    def names(self, key: str) -> bool:
        return ("\n" + order_key(key) + "\n") in self._keys

    def total(self) -> int:
        return sum(self._values)

    def before_and_own(self, key: str) -> tuple[int, int]:
        """The sum of the users before ``key`` in split order, and ``key``'s own value."""
        enc = order_key(key)
        at = self._keys.find("\n" + enc + "\n")
        if at >= 0:
            i = self._keys.count("\n", 0, at)
            return sum(self._values[:i]), self._values[i]
        lines = self._keys[1:-1].split("\n") if len(self._keys) > 1 else []
        lo, hi = 0, len(lines)
        while lo < hi:  # the number of stored keys before enc
            mid = (lo + hi) // 2
            if lines[mid] < enc:
                lo = mid + 1
            else:
                hi = mid
        return sum(self._values[:lo]), 0
