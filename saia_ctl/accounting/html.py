"""One self-contained HTML page: tables and inline SVG charts; no script, no network.

Laid out to fit a 1280-pixel window without horizontal scrolling: the charts scale down to the
page's width, two of them side by side when there is room, and a table wider than the page
scrolls inside its own box."""

from __future__ import annotations

import calendar
from html import escape
from typing import Any

from .columns import column, shorten, title

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
    "#e6550d", "#31a354", "#756bb1", "#636363",
)  # fmt: skip
IDLE_COLOUR = "#c7c7c7"
NBH = "\u2011"  # non-breaking hyphen


def _num(v: float) -> str:
    """A chart label: thousands separators, at most three decimals."""
    return f"{v:,.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else f"{v:,}"


def _svg(width: int, height: int, label: str) -> str:
    """An SVG element that keeps its proportions and shrinks to the width of its box."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}">'
    )


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
        _svg(width, height + 20 * len(services), "requests per day per service"),
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#333"/>',
        f'<text x="{left - 5}" y="15" text-anchor="end" font-size="11">{_num(top)}</text>',
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
                f'fill="{colour[s]}"><title>{escape(n)} {escape(s)}: {_num(v)}</title></rect>'
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


def bar_chart(
    items: list[tuple[str, list[tuple[float, str]]]], label: str, unit: str, width: int = 600
) -> str:
    """Horizontal bars, each a stack of (value, colour) parts."""
    if not items:
        return "<p>None.</p>"
    top = max(sum(v for v, _ in parts) for _, parts in items) or 1.0
    row, left = 22, 220
    out = [_svg(width, row * len(items) + 10, label)]
    for i, (name, parts) in enumerate(items):
        y = 5 + i * row
        out.append(
            f'<text x="{left - 6}" y="{y + 14}" font-size="12" text-anchor="end">'
            f"<title>{escape(name)}</title>{escape(shorten(name, 30))}</text>"
        )
        x = float(left)
        for v, colour in parts:
            w = (width - left - 110) * v / top
            if w > 0:
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{colour}"/>')
            x += w
        total = sum(v for v, _ in parts)
        out.append(f'<text x="{x + 5:.1f}" y="{y + 14}" font-size="11">{_num(total)} {escape(unit)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(rows: list[dict[str, Any]]) -> str:
    """Every column, with its human title (the JSON/CSV key as the title's tooltip)."""
    if not rows:
        return "<p>(none)</p>"
    cols = [column(k) for k in rows[0]]
    # a title wraps at its blanks, not at the hyphen of "GPU-h"
    head = "".join(f'<th title="{escape(c.key)}">{escape(c.title.replace("-", NBH))}</th>' for c in cols)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{escape(c.human(r.get(c.key)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>'


def _pair(*charts: tuple[str, str]) -> str:
    """Charts side by side (one under the other in a narrow window), each with its heading."""
    boxes = "".join(f'<div class="chart"><h2>{escape(h)}</h2>\n{c}\n</div>' for h, c in charts)
    return f'<div class="pair">{boxes}</div>'


STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222;background:#fff}"
    "h2{margin-top:1.5em}svg{max-width:100%;height:auto;display:block}"
    ".pair{display:flex;flex-wrap:wrap;gap:1em 2em}.chart{flex:1 1 520px;min-width:0;max-width:640px}"
    ".scroll{max-width:100%;overflow-x:auto;margin-bottom:2em}"
    "table{border-collapse:collapse;font-size:11px;font-variant-numeric:tabular-nums}"
    "td,th{border:1px solid #ccc;padding:2px 4px;text-align:right}th{background:#eee;font-weight:600}"
    "td{white-space:nowrap}td:first-child,th:first-child{text-align:left}"
    "td:first-child{white-space:normal;overflow-wrap:anywhere;min-width:8em;max-width:16em}"
)


def page(data: dict[str, Any]) -> str:
    services = [s["service"] for s in data.get("services", [])] or sorted(
        {d["service"] for d in data["days"]}
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title(data))}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>{escape(title(data))}</h1>",
        "<h2>Requests per day per service</h2>",
        day_chart(data["days"], services, data["month"]),
    ]
    if "users" in data:
        users = data["users"]
        by_requests = sorted(users, key=lambda r: (-r["requests"], r["user"]))[:15]
        by_gpu = sorted(users, key=lambda r: (-r["gpu_hours"], r["user"]))[:15]
        parts.append(
            _pair(
                (
                    "Top users (requests)",
                    bar_chart(
                        [(r["user"], [(r["requests"], PALETTE[0])]) for r in by_requests],
                        "top users by requests",
                        "requests",
                    ),
                ),
                (
                    "Top users (GPU-hours)",
                    bar_chart(
                        [(r["user"], [(float(r["gpu_hours"]), PALETTE[2])]) for r in by_gpu],
                        "top users by GPU-hours",
                        "GPU-h",
                    ),
                ),
            )
        )
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
            bar_chart(items, "GPU-hours per service", "GPU-h", width=760),
        ]
        parts += ["<h2>Services</h2>", _table(data["services"])]
    if "users" in data:
        parts += ["<h2>Users</h2>", _table(data["users"])]
    parts += ["<h2>Totals</h2>", _table([data["totals"]]), "</body></html>", ""]
    return "\n".join(parts)
