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
order in blocks of consecutive users, each with the sum of the blocks before it and
its users' running sums (``pack``), so one user's share reads one block (found by
its first user in the table's key order) and the service's last.

Stdlib only and cheap to import: the request path's usage answer reads it.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from itertools import accumulate

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


BLOCK = 128  # users per stored block: one user's share reads ~4 KB, not the service's all


def _ints(blob: bytes | None) -> tuple[int, ...]:
    """Little-endian int64s (``struct``, not ``array``: that imports ``collections``)."""
    return struct.unpack(f"<{len(blob) // 8}q", blob) if blob else ()


def _running_at(blob: bytes, i: int) -> int:
    """The running sum up to and including the ``i``-th user of a block (0 before the first)."""
    return struct.unpack_from("<q", blob, 8 * i)[0] if i >= 0 else 0


def pack(users: dict[str, int]) -> list[tuple[str, int, str, bytes]]:
    """A service's users as the ledger stores them: in split order, in blocks of ``BLOCK``
    consecutive users, each block (its first user's encoded id, the sum of the blocks before
    it, its users' encoded ids each between newlines, the running sums of their nanoseconds
    as little-endian int64). Users without time are left out."""
    pairs = sorted((order_key(u), ns) for u, ns in users.items() if ns and u != IDLE)
    out: list[tuple[str, int, str, bytes]] = []
    before = 0
    for at in range(0, len(pairs), BLOCK):
        chunk = pairs[at : at + BLOCK]
        sums = list(accumulate(ns for _, ns in chunk))
        keys = "\n" + "\n".join(k for k, _ in chunk) + "\n"
        out.append((chunk[0][0], before, keys, struct.pack(f"<{len(sums)}q", *sums)))
        before += sums[-1]
    return out


def unpack(blocks: list[tuple[str, bytes]]) -> dict[str, int]:
    """``pack``'s users back (user id -> ns) from its blocks' (keys, running sums), in order."""
    out: dict[str, int] = {}
    for keys, blob in blocks:
        names = cjson.loads("[" + keys[1:-1].replace("\n", ",") + "]")
        sums = _ints(blob)
        out.update(zip(names, (b - a for a, b in zip((0, *sums), sums, strict=False)), strict=True))
    return out


def total_of(before: int, blob: bytes) -> int:
    """The service's total from its last block: the blocks before it plus its own."""
    return before + _running_at(blob, len(blob) // 8 - 1)


def before_and_own(before: int, keys: str, blob: bytes, key: str) -> tuple[int, int]:
    """From the block whose first user is the last one not after ``key`` in split order: the
    sum of the service's users before ``key``, and ``key``'s own value (0 if not stored)."""
    enc = order_key(key)
    at = keys.find("\n" + enc + "\n")
    if at >= 0:
        i = keys.count("\n", 0, at)
        low = _running_at(blob, i - 1)
        return before + low, _running_at(blob, i) - low
    ahead = bisect_left(keys[1:-1].split("\n"), enc)  # the block's users before enc
    return before + _running_at(blob, ahead - 1), 0
