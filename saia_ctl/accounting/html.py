"""One self-contained HTML page: tables and inline SVG charts; no script, no network."""

from __future__ import annotations

import calendar
from html import escape
from typing import Any

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
    "#e6550d", "#31a354", "#756bb1", "#636363",
)  # fmt: skip
IDLE_COLOUR = "#c7c7c7"


def _num(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def day_chart(days: list[dict[str, Any]], services: list[str], month: str) -> str:
    """Requests per day of the month, stacked by service."""
    if not days:
        return "<p>No requests.</p>"
    year, mon = (int(x) for x in month.split("-"))
    names = [f"{month}-{d:02d}" for d in range(1, calendar.monthrange(year, mon)[1] + 1)]
    per_day: dict[str, dict[str, int]] = {n: {} for n in names}
    for d in days:
        per_day[d["day"]][d["service"]] = d["requests"]
    top = max(sum(v.values()) for v in per_day.values()) or 1
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(services)}
    width, height, left, bottom = 760, 260, 50, 40
    bar = (width - left - 10) / len(names)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20 * len(services)}" '
        f'role="img" aria-label="requests per day per service">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#333"/>',
        f'<text x="{left - 5}" y="15" text-anchor="end" font-size="11">{top}</text>',
    ]
    for i, n in enumerate(names):
        y = float(height - bottom)
        x = left + i * bar
        for s in services:
            v = per_day[n].get(s, 0)
            if not v:
                continue
            h = (height - bottom - 10) * v / top
            y -= h
            out.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{colour[s]}"><title>{escape(n)} {escape(s)}: {v}</title></rect>'
            )
        if i % max(1, len(names) // 10) == 0:
            out.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 15}" font-size="10" '
                f'text-anchor="middle">{escape(n[5:])}</text>'
            )
    for j, s in enumerate(services):
        y = height + 20 * j
        out.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" fill="{colour[s]}"/>')
        out.append(f'<text x="{left + 18}" y="{y}" font-size="12">{escape(s)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(items: list[tuple[str, list[tuple[float, str]]]], label: str, unit: str) -> str:
    """Horizontal bars, each a stack of (value, colour) parts."""
    if not items:
        return "<p>None.</p>"
    top = max(sum(v for v, _ in parts) for _, parts in items) or 1.0
    width, row, left = 760, 22, 220
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(items) + 10}" '
        f'role="img" aria-label="{escape(label)}">'
    ]
    for i, (name, parts) in enumerate(items):
        y = 5 + i * row
        out.append(
            f'<text x="{left - 6}" y="{y + 14}" font-size="12" text-anchor="end">{escape(name[:32])}</text>'
        )
        x = float(left)
        for v, colour in parts:
            w = (width - left - 90) * v / top
            if w > 0:
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{colour}"/>')
            x += w
        total = sum(v for v, _ in parts)
        out.append(f'<text x="{x + 5:.1f}" y="{y + 14}" font-size="11">{_num(total)} {escape(unit)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(rows: list[dict[str, Any]]) -> str:
    from .render import cell

    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{escape(cell(c, r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def page(data: dict[str, Any]) -> str:
    from .render import title

    services = [s["service"] for s in data.get("services", [])] or sorted(
        {d["service"] for d in data["days"]}
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title(data))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "font-size:12px;margin-bottom:2em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "th{background:#eee}td:first-child{text-align:left}h2{margin-top:1.5em}</style>",
        "</head><body>",
        f"<h1>{escape(title(data))}</h1>",
        "<h2>Requests per day per service</h2>",
        day_chart(data["days"], services, data["month"]),
    ]
    if "users" in data:
        top = sorted(data["users"], key=lambda r: (-r["requests"], r["user"]))[:15]
        parts += [
            "<h2>Top users (requests)</h2>",
            bar_chart(
                [(r["user"], [(float(r["requests"]), PALETTE[0])]) for r in top], "top users", "requests"
            ),
        ]
    if "services" in data:
        items = []
        for i, r in enumerate(data["services"]):
            colour = PALETTE[i % len(PALETTE)]
            if "idle_gpu_hours" in r:
                items.append(
                    (r["service"], [(r["attributed_gpu_hours"], colour), (r["idle_gpu_hours"], IDLE_COLOUR)])
                )
            else:
                items.append((r["service"], [(r["gpu_hours"], colour)]))
        parts += [
            "<h2>GPU-hours per service (grey: idle)</h2>",
            bar_chart(items, "GPU-hours per service", "GPU-h"),
        ]
        parts += ["<h2>Services</h2>", _table(data["services"])]
    if "users" in data:
        parts += ["<h2>Users</h2>", _table(data["users"])]
    parts += ["<h2>Totals</h2>", _table([data["totals"]]), "</body></html>", ""]
    return "\n".join(parts)
