"""The report rendered as a table, JSON, CSV, Markdown or a self-contained HTML page."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from .columns import IDS, LEGEND, column, pick, shorten, title
from .html import page

FORMATS = ("table", "json", "csv", "markdown", "html")
ID_WIDTH = 28  # the compact table's user and service ids: longer ones keep their start and end


def cell(key: str, value: Any) -> str:
    """One value as in CSV: GPU-hours with exactly three decimals, seconds with three."""
    return column(key).plain(value)


def _rows(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cols = list(rows[0]) if rows else []
    return cols, [[cell(k, r.get(k)) for k in cols] for r in rows]


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    cols, body = _rows(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if cols:
        w.writerow(cols)
    w.writerows(body)
    return buf.getvalue()


def _sections(data: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    if "users" in data:
        out.append(("Users", data["users"]))
    if "services" in data:
        out.append(("Services", data["services"]))
    out.append(("Totals", [data["totals"]]))
    return out


def _plain(cells: Sequence[str]) -> bool:
    """True if tabulate would print every cell as is: printable ASCII, no surrounding blanks."""
    return all(c.isascii() and c.isprintable() and c == c.strip() for c in cells)


def grid(
    body: Sequence[Sequence[str]],
    headers: Sequence[str],
    fmt: str = "simple",
    right: Sequence[bool] | None = None,
) -> str:
    """``tabulate(body, headers, tablefmt=fmt, disable_numparse=True, colalign=...)``, byte for
    byte, for the "simple" and "github" formats; much faster on the 10,000 rows of a month's users.
    ``right`` says which columns are right-aligned (numbers); the others are left-aligned.

    Only plain cells take the fast path (see ``_plain``): anything else (wide characters, escape
    codes, blanks that tabulate would strip) goes to tabulate itself.
    """
    flags = list(right) if right is not None else [False] * len(headers)
    if fmt not in ("simple", "github") or not _plain(headers) or not all(_plain(r) for r in body):
        return tabulate(
            body,
            headers=list(headers),
            tablefmt=fmt,
            disable_numparse=True,
            colalign=["right" if f else "left" for f in flags] if any(flags) else None,
        )
    widths = [len(h) + 2 for h in headers]  # tabulate's minimum: the header plus MIN_PADDING
    for r in body:
        widths = [w if w >= len(c) else len(c) for w, c in zip(widths, r, strict=True)]

    def pad(c: str, w: int, r: bool) -> str:
        return c.rjust(w) if r else c.ljust(w)

    if fmt == "simple":

        def line(cells: Sequence[str]) -> str:
            return "  ".join(pad(c, w, r) for c, w, r in zip(cells, widths, flags, strict=True)).rstrip()

        rule = "  ".join("-" * w for w in widths)
    else:

        def line(cells: Sequence[str]) -> str:
            return (
                "| " + " | ".join(pad(c, w, r) for c, w, r in zip(cells, widths, flags, strict=True)) + " |"
            )

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *map(line, body)])


def human_table(
    rows: Sequence[dict[str, Any]],
    fmt: str = "simple",
    columns: Sequence[str] | None = None,
    *,
    compact: bool = False,
) -> str:
    """One section for people: human titles, thousands separators, numbers right-aligned; in
    the compact table, ids cut to ``ID_WIDTH`` characters."""
    cols = [column(k) for k in pick(list(rows[0]), columns, compact=compact)]
    body = [
        [
            shorten(c.human(r.get(c.key)), ID_WIDTH) if compact and c.key in IDS else c.human(r.get(c.key))
            for c in cols
        ]
        for r in rows
    ]
    return grid(body, [c.title for c in cols], fmt, [c.numeric for c in cols])


def to_table(
    data: dict[str, Any],
    fmt: str = "simple",
    columns: Sequence[str] | None = None,
    *,
    compact: bool = False,
) -> str:
    """The terminal table (``fmt="simple"``) or Markdown (``"github"``): every section with the
    chosen columns, the compact set or all of them."""
    md = fmt == "github"
    parts = [("# " if md else "") + title(data)]
    shown: set[str] = set()
    sections = []
    for name, rows in _sections(data):
        sections.append(("## " if md else "") + name)
        cols = pick(list(rows[0]), columns, compact=compact) if rows else []
        shown.update(cols)
        if cols:
            sections.append(human_table(rows, fmt, columns, compact=compact))
        else:
            sections.append("(none)" if not rows else "(none of the chosen columns)")
    if shown & {"duration_p50_s", "duration_p95_s"}:
        parts.append(LEGEND)
    return "\n\n".join(parts + sections) + "\n"


def to_csv_all(data: dict[str, Any]) -> str:
    """CSV on stdout: with --by, that one table; else users, services and totals, separated by a blank line."""
    by = data.get("filters", {}).get("by")
    if by == "user":
        return to_csv(data["users"])
    if by == "service":
        return to_csv(data["services"])
    return "\n".join(to_csv(rows) for _, rows in _sections(data))


def render(
    data: dict[str, Any], fmt: str, columns: Sequence[str] | None = None, *, wide: bool = False
) -> str:
    """The report in ``fmt``. The terminal table shows the compact columns unless ``wide``;
    Markdown all of them; ``columns`` picks those of both. JSON, CSV and HTML show every key."""
    if fmt == "json":
        return to_json(data)
    if fmt == "csv":
        return to_csv_all(data)
    if fmt == "markdown":
        return to_table(data, "github", columns)
    if fmt == "html":
        return page(data)
    return to_table(data, "simple", columns, compact=not wide)


def write_files(data: dict[str, Any], folder: str) -> list[str]:
    """report.json, users.csv, services.csv, days.csv and report.html in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    files = {"report.json": to_json(data), "report.html": page(data)}
    if "users" in data:
        files["users.csv"] = to_csv(data["users"])
    if "services" in data:
        files["services.csv"] = to_csv(data["services"])
    files["days.csv"] = to_csv(data["days"]) if data["days"] else "day,service,requests\n"
    written = []
    for name, text in files.items():
        path = os.path.join(folder, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(path)
    return written
