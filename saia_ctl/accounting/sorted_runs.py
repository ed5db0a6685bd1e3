"""Sorted runs of floats: stored as little-endian doubles, and percentiles of their union.

The ledger keeps every duration of a user (or service) and month as one sorted
run per fold; a report adds today's run. Nearest-rank percentiles of the union
are picked by selection over the runs (never estimated, never all merged when
that costs more than it saves), so they equal ``gpu.percentile`` of the runs
merged and sorted.
"""

from __future__ import annotations

import bisect
import itertools
import math
import struct
import sys
from array import array
from collections.abc import Sequence

from .gpu import percentile


def pack(values: Sequence[float]) -> bytes:
    a = array("d", values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def unpack(blob: bytes | None) -> array[float]:
    a = array("d")
    if blob:
        a.frombytes(blob)
        if sys.byteorder == "big":
            a.byteswap()
    return a


def _key(x: float) -> int:
    """An integer that orders like the float ``x`` (IEEE 754 bits, sign folded)."""
    bits = int(struct.unpack("<q", struct.pack("<d", x))[0])
    return bits if bits >= 0 else -(bits & 0x7FFFFFFFFFFFFFFF) - 1


def _float(key: int) -> float:
    bits = key if key >= 0 else (-(key + 1)) | -0x8000000000000000
    (x,) = struct.unpack("<d", struct.pack("<q", bits))
    return float(x)


def nth_smallest(runs: Sequence[Sequence[float]], rank: int) -> float:
    """The ``rank``-th smallest value (1-based) of the union of sorted runs, without merging them."""
    runs = [r for r in runs if len(r)]
    if len(runs) == 1:
        return runs[0][rank - 1]
    lo = min(_key(r[0]) for r in runs)
    hi = max(_key(r[-1]) for r in runs)
    while lo < hi:  # the least key whose float has at least `rank` values at or below it
        mid = (lo + hi) // 2
        v = _float(mid)  # never NaN: NaN keys lie beyond those of the infinities
        if sum(bisect.bisect_right(r, v) for r in runs) < rank:
            lo = mid + 1
        else:
            hi = mid
    v = _float(lo)
    # the stored value itself (the same float; this keeps 0.0 from coming back as -0.0)
    return min(r[i] for r in runs if (i := bisect.bisect_left(r, v)) < len(r))


# Up to this many values in several runs, sorting them together is cheaper than selecting.
MERGE_UP_TO = 4096


def _rank(p: float, n: int) -> int:
    return min(max(1, math.ceil(p * n / 100)), n)  # as gpu.percentile


def runs_percentile(runs: Sequence[Sequence[float]], p: float) -> float | None:
    """Nearest-rank percentile of the union of sorted runs (as ``gpu.percentile`` of it merged)."""
    n = sum(len(r) for r in runs)
    if not n:
        return None
    return nth_smallest(runs, _rank(p, n))


def nth_of_two(a: Sequence[float], b: Sequence[float], rank: int) -> float:
    """The ``rank``-th smallest (1-based) of two sorted runs; O(len(b)), for a short ``b``."""
    n, m = len(a), len(b)
    for j in range(max(0, rank - n), min(m, rank) + 1):  # j values of b among the `rank` smallest
        i = rank - j
        if (j == m or i == 0 or a[i - 1] <= b[j]) and (j == 0 or i == n or b[j - 1] <= a[i]):
            if i == 0:
                return b[j - 1]
            if j == 0:
                return a[i - 1]
            return max(a[i - 1], b[j - 1])
    raise ValueError("runs not sorted")


def p50_p95(runs: Sequence[Sequence[float]]) -> tuple[float | None, float | None]:
    """Median and 95th percentile of the union of sorted runs, by the cheapest exact way."""
    runs = [r for r in runs if len(r)]
    if len(runs) == 2:  # e.g. a user's folded durations and today's few
        a, b = sorted(runs, key=len, reverse=True)
        if len(b) <= 16:
            n = len(a) + len(b)
            return nth_of_two(a, b, _rank(50, n)), nth_of_two(a, b, _rank(95, n))
    if len(runs) > 1 and sum(len(r) for r in runs) > MERGE_UP_TO:
        return runs_percentile(runs, 50), runs_percentile(runs, 95)
    values = runs[0] if len(runs) == 1 else sorted(itertools.chain.from_iterable(runs))
    return percentile(values, 50), percentile(values, 95)
