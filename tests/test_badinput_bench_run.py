"""bench/run and bench/common: one table from every bench, whatever a bench prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.paths import REPO

sys.path.insert(0, str(REPO / "bench"))

from common import Figure, json_line, median, p95, parse_figures, percentile, table

RUN = str(REPO / "bench" / "run")

GOOD = """
import sys
sys.path.insert(0, {bench!r})
from common import Figure, report
report([
    Figure("good", "overhead median", 9.5, "ms", baseline=10.0, goal="< 15 ms", ok=True),
    Figure("good", "cpu per request", 31.0, "ms", goal="< 40 ms", ok=True),
])
"""
FAILING = """
import sys
sys.path.insert(0, {bench!r})
from common import Figure, report
report([Figure("failing", "lost requests", 3, "", goal="0", ok=False)])
"""
GARBAGE = """
import sys
print("some progress")
print("ValueError: boom", file=sys.stderr)
sys.exit(3)
"""
NOT_A_LIST = 'print(\'{{"figure": "x"}}\')\n'
SLOW = "import time\ntime.sleep(60)\n"
SOAK = """
import sys
sys.path.insert(0, {bench!r})
from common import Figure, report
minutes = sys.argv[sys.argv.index("--minutes") + 1] if "--minutes" in sys.argv else "10"
report([Figure("soak", "minutes", float(minutes), "min")])
"""


def make(folder: Path, **scripts: str) -> None:
    for name, body in scripts.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(body.format(bench=str(REPO / "bench"))))


def run(folder: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SAIA_BENCH_DIR=str(folder), SAIA_BENCH_PYTHON=sys.executable)
    return subprocess.run([RUN, *args], capture_output=True, text=True, timeout=timeout, env=env)


def rows(stdout: str) -> dict[str, str]:
    """figure (or note) -> its table line."""
    out = {}
    for line in stdout.splitlines()[2:]:
        parts = line.split("  ")
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) >= 2:
            out[parts[1]] = line
    return out


def test_statistics() -> None:
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 2, 3]) == 2.5
    xs = list(range(1, 101))
    assert p95(xs) == 95
    assert percentile(xs, 50) == 50
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        median([])
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_figure_ratio_and_json_round_trip() -> None:
    f = Figure("b", "x", 5.0, "ms", baseline=10.0, goal="< 15 ms", ok=True)
    assert f.ratio == 0.5
    assert Figure("b", "y", 5.0, baseline=0).ratio is None
    line = json_line([f])
    [back] = parse_figures("noise\n" + line + "\n") or []
    assert back.as_dict() == f.as_dict()
    assert parse_figures("no json here") is None
    assert parse_figures('{"a": 1}') is None
    assert parse_figures("[1, 2]") is None
    assert "FAIL" in table([Figure("b", "z", 1, ok=False)])


def test_one_table_with_figures_baselines_ratios_goals(tmp_path: Path) -> None:
    make(tmp_path, good=GOOD, common="raise SystemExit('common.py must not run')")
    r = run(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header == ["bench", "figure", "value", "baseline", "ratio", "goal", "pass"]
    got = rows(r.stdout)
    assert "9.5 ms" in got["overhead median"] and "10 ms" in got["overhead median"]
    assert "0.95" in got["overhead median"] and "< 15 ms" in got["overhead median"]
    assert got["overhead median"].rstrip().endswith("pass")
    assert "cpu per request" in got
    assert "common" not in r.stdout


def test_bench_without_convention_or_failing_goal_does_not_crash_the_table(tmp_path: Path) -> None:
    make(tmp_path, good=GOOD, garbage=GARBAGE, failing=FAILING, notalist=NOT_A_LIST)
    r = run(tmp_path, "--json")
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert "ValueError: boom" in r.stdout  # the last stderr line says why
    got = rows(r.stdout)
    assert any(k.startswith("no figures (exit 3)") for k in got), r.stdout
    assert any(k.startswith("no figures (exit 0)") for k in got), r.stdout
    assert got["lost requests"].rstrip().endswith("FAIL")
    assert "overhead median" in got  # the good bench still reported
    figures = json.loads(r.stdout.splitlines()[-1])
    assert {f["figure"] for f in figures} == {"overhead median", "cpu per request", "lost requests"}


def test_time_limit_per_bench(tmp_path: Path) -> None:
    make(tmp_path, slow=SLOW, good=GOOD)
    r = run(tmp_path, "--timeout", "2", timeout=40)
    assert r.returncode == 1
    got = rows(r.stdout)
    assert any(k.startswith("timed out after 2 s") for k in got), r.stdout
    assert "overhead median" in got


def test_soak_runs_only_when_asked(tmp_path: Path) -> None:
    make(tmp_path, good=GOOD, soak=SOAK)
    assert "minutes" not in rows(run(tmp_path).stdout)
    r = run(tmp_path, "--soak", "--soak-minutes", "1.5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1.5 min" in rows(r.stdout)["minutes"]
    r = run(tmp_path, "--only", "soak", "--soak")
    assert set(rows(r.stdout)) == {"minutes"}


def test_tunnel_soak_runs_only_when_asked_and_takes_the_minutes(tmp_path: Path) -> None:
    make(tmp_path, good=GOOD, soak=SOAK, tunnel_soak=SOAK.replace('"soak"', '"tunnel_soak"'))
    got = run(tmp_path)
    assert "minutes" not in rows(got.stdout)
    r = run(tmp_path, "--tunnel-soak", "--soak-minutes", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    soaks = [line for line in r.stdout.splitlines() if " minutes " in line]
    assert len(soaks) == 1 and soaks[0].startswith("tunnel_soak") and "2 min" in soaks[0]
