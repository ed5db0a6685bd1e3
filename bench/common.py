"""Shared helpers for the benches: statistics, the figure record, the output convention.

Convention (read by ``bench/run``): a bench run with ``--json`` prints, as the
LAST line of its standard output, a JSON list of figures::

    [{"bench": "request_path", "figure": "overhead median", "value": 9.1, "unit": "ms",
      "baseline": 10.2, "ratio": 0.89, "goal": "< 15 ms", "ok": true}, ...]

``baseline`` is the same quantity measured for the reference in the same run
(e.g. a direct curl), ``ratio`` is value / baseline, ``ok`` says whether the
goal stated in the bench's issue is met (null when there is no goal). Figures
are medians or ratios of several runs, never one timing.

Import from a bench script with ``from common import ...`` (the script's own
folder is on ``sys.path``) or ``from bench.common import ...`` from the repo.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

FIELDS = ("bench", "figure", "value", "unit", "baseline", "ratio", "goal", "ok")


def median(values: Iterable[float]) -> float:
    """The median; raises ValueError on no values."""
    xs = sorted(values)
    if not xs:
        raise ValueError("median of no values")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank method (a value that occurred)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return xs[rank - 1]


def p95(values: Iterable[float]) -> float:
    return percentile(values, 95)


class Figure:
    """One measured figure, with its same-run baseline and its goal."""

    __slots__ = FIELDS

    def __init__(
        self,
        bench: str,
        figure: str,
        value: float | int | None,
        unit: str = "",
        baseline: float | int | None = None,
        ratio: float | None = None,
        goal: str | None = None,
        ok: bool | None = None,
    ) -> None:
        self.bench = bench
        self.figure = figure
        self.value = value
        self.unit = unit
        self.baseline = baseline
        if (
            ratio is None
            and isinstance(value, (int, float))
            and isinstance(baseline, (int, float))
            and baseline
        ):
            ratio = float(value) / float(baseline)
        self.ratio = ratio
        self.goal = goal
        self.ok = ok

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figure:
        ok = d.get("ok")
        return cls(
            bench=str(d.get("bench") or "?"),
            figure=str(d["figure"]),
            value=d.get("value"),
            unit=str(d.get("unit") or ""),
            baseline=d.get("baseline"),
            ratio=d.get("ratio"),
            goal=None if d.get("goal") is None else str(d.get("goal")),
            ok=None if ok is None else bool(ok),
        )

    def __repr__(self) -> str:
        return f"Figure({self.as_dict()!r})"


def at_most(value: float, limit: float) -> bool:
    """``ok`` for a goal of the form ``< limit`` / ``<= limit``."""
    return value <= limit


def json_line(figures: Sequence[Figure]) -> str:
    """The one line a bench prints last under ``--json``."""
    return json.dumps([f.as_dict() for f in figures], separators=(",", ":"))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10**-digits):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def table(figures: Sequence[Figure], extra_rows: Sequence[tuple[str, str]] = ()) -> str:
    """Figures as one aligned plain-text table (figure, value, baseline, ratio, goal, pass)."""
    head = ("bench", "figure", "value", "baseline", "ratio", "goal", "pass")
    rows: list[tuple[str, ...]] = [head]
    for f in figures:
        unit = f" {f.unit}" if f.unit and f.value is not None else ""
        bunit = f" {f.unit}" if f.unit and f.baseline is not None else ""
        verdict = "-" if f.ok is None else ("pass" if f.ok else "FAIL")
        rows.append(
            (
                f.bench,
                f.figure,
                _fmt(f.value) + unit,
                _fmt(f.baseline) + bunit,
                _fmt(f.ratio, 2),
                f.goal or "-",
                verdict,
            )
        )
    for bench, message in extra_rows:
        rows.append((bench, message, "-", "-", "-", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(figures: Sequence[Figure], json_mode: bool | None = None, out: TextIO | None = None) -> None:
    """Print the figures: a table for people, and the JSON line last when ``--json``."""
    out = out or sys.stdout
    if json_mode is None:
        json_mode = "--json" in sys.argv[1:]
    print(table(figures), file=out)
    if json_mode:
        print(json_line(figures), file=out)
    out.flush()


def parse_figures(stdout: str) -> list[Figure] | None:
    """The figures in a bench's output (its last non-empty line), or None if it has none."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        doc = json.loads(lines[-1])
    except ValueError:
        return None
    if not isinstance(doc, list):
        return None
    figures: list[Figure] = []
    for item in doc:
        if not isinstance(item, dict) or "figure" not in item:
            return None
        try:
            figures.append(Figure.from_dict(item))
        except (TypeError, ValueError, ZeroDivisionError):
            return None
    return figures
