"""The report's HTML page opens offline in headless Chromium and shows its charts."""

from __future__ import annotations

import ast
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.support.accounting import Rows, busy_month, cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) with zlib + struct."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = depth = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels.extend(tuple(line[i : i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, pixels


def chromium(tmp_path: Path, page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", *flags, page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"
)
BLUE, GREEN, WHITE = (0x1F, 0x77, 0xB4), (0x2C, 0xA0, 0x2C), (255, 255, 255)


@pytest.fixture
def report_page(rows: Rows, tmp_path: Path) -> Path:
    """report.html of a busy month: long user ids, big numbers."""
    busy_month(rows)
    out = tmp_path / "out"
    r = cli("report", "--month", "2026-05", "--output", str(out))
    assert r.exit_code == 0, r.stderr
    return out / "report.html"


def test_html_is_self_contained_with_human_titles_and_separators(report_page: Path) -> None:
    html = report_page.read_text()
    assert (
        html.count("<svg") == 4
        and "<script" not in html
        and "<link" not in html
        and "url(" not in html
        and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert 'aria-label="top users by requests"' in html and 'aria-label="top users by GPU-hours"' in html
    assert '<th title="gpu_hours">GPU\u2011hours</th>' in html and ">errors_4xx<" not in html
    assert "<td>617,283,945</td>" in html and "<td>6,976.539</td>" in html  # tokens, GPU-hours
    assert "617283945" not in html


@needs_chromium
@pytest.mark.timeout(180)
def test_html_report_renders_charts_side_by_side_without_overflow_at_1280px(
    report_page: Path, tmp_path: Path
) -> None:
    # The whole page laid out 1280 CSS pixels wide, shot at half scale (fewer pixels to decode).
    shot = tmp_path / "shot.png"
    chromium(
        tmp_path, report_page, f"--screenshot={shot}", "--window-size=1280,3600",
        "--force-device-scale-factor=0.5",
    )  # fmt: skip
    assert shot.exists(), "chromium wrote no screenshot"
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (640, 1800)
    colours = set(pixels)
    assert len(colours) > 20  # text, axes and bars, not a blank page
    # the charts' bars are there: the first two services' colours (svc-a, svc-b)
    assert BLUE in colours and (0xFF, 0x7F, 0x0E) in colours
    assert sum(1 for p in pixels if p == BLUE) / len(pixels) > 0.002
    # the users' requests (blue) and GPU-hours (green) charts side by side: a row has both
    rows_ = [pixels[y * width : (y + 1) * width] for y in range(height)]
    assert any(BLUE in r[: width // 2] and GREEN in r[width // 2 :] for r in rows_)
    # nothing reaches into the page's right margin (2em = 32 px, 16 px here) ...
    assert all(p == WHITE for r in rows_ for p in r[-12:])
    # ... down to the last table (the whole page is in the shot)
    assert all(p == WHITE for p in rows_[-1])


@needs_chromium
@pytest.mark.timeout(180)
def test_html_report_is_no_wider_than_a_1280px_window(report_page: Path, tmp_path: Path) -> None:
    """The document's scroll width, written into the DOM by a script added to a copy."""
    probe = tmp_path / "probe.html"
    script = (
        "<script>document.body.setAttribute('data-width', "
        "document.documentElement.scrollWidth + 'x' + document.documentElement.clientWidth)</script>"
    )
    probe.write_text(report_page.read_text().replace("</body>", script + "</body>"))
    r = chromium(tmp_path, probe, "--dump-dom", "--window-size=1280,900")
    m = re.search(r'data-width="(\d+)x(\d+)"', r.stdout)
    assert m, r.stderr[-2000:]
    scroll, client = int(m[1]), int(m[2])
    assert client == 1280 and scroll <= client, (scroll, client)


def test_accounting_output_modules_do_not_import_each_other_in_a_cycle() -> None:
    """render, html and columns: every import among accounting modules, lazy ones included."""
    folder = Path(__file__).resolve().parent.parent / "saia_ctl" / "accounting"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[path.stem] = deps
    assert {"render", "html", "columns"} <= set(graph)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        nexts = graph.get(start, set())
        return goal in nexts or any(reaches(d, goal, seen | {d}) for d in nexts - seen)

    assert not [m for m in ("render", "html", "columns") if reaches(m, m, set())]
