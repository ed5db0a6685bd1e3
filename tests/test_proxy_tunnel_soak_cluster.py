"""A short tunnel soak on the real cluster: ``bench/tunnel_soak.py`` for a minute, a tunnel
session SIGKILLed every 20 s (first the proxy's ssh client, then the login node's tunnel
process), under plain, streaming and hung-up requests through a real Slurm job.

The bench holds the checks (rows lost, rows left open, processes left behind,
sessions reopened); this test runs it short and asserts each of them, and that
the kills happened on both sides and cut requests that were in flight (so the
checks had something to hold)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.paths import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def test_tunnel_sessions_killed_under_load_lose_no_row_and_leave_nothing(cluster: Any) -> None:
    env = {**os.environ, "SAIA_TEST_CLUSTER": str(cluster.dir)}
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tunnel_soak.py"), "--minutes", "1", "--kill-every", "20",
         "--clients", "6", "--json"],
        env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert r.stdout.strip(), r.stderr[-2000:]
    figures = {f["figure"]: f for f in json.loads(r.stdout.strip().splitlines()[-1])}
    diagnosis = r.stdout + r.stderr[-3000:]
    assert "skipped: no dev cluster" not in figures, diagnosis
    value = {name: f["value"] for name, f in figures.items()}
    assert value["sessions killed"] == 2, diagnosis
    assert value["  of which ssh clients on the proxy's side"] == 1, diagnosis
    assert value["  of which tunnel processes on the login node"] == 1, diagnosis
    assert value["rows lost (answered 200, no row)"] == 0, diagnosis
    assert value["rows with no request sent, or doubled"] == 0, diagnosis
    assert value["rows left open"] == 0, diagnosis
    assert value["login-node processes left behind"] == 0, diagnosis
    assert value["stray tunnel processes before a kill (max)"] == 0, diagnosis
    assert value["proxy sessions live at the end"] == 2, diagnosis
    assert value["tunnel processes seen (login node)"] >= 4, diagnosis  # 2, then one per kill
    assert value["requests complete after the last kill"] >= 1, diagnosis
    assert value["client: complete"] >= 50 and value["client: hung up on purpose"] >= 1, diagnosis
    assert [name for name, f in figures.items() if f["ok"] is False] == [], diagnosis
    assert value["client: cut or refused by a kill"] >= 1, diagnosis  # the kills hit requests in flight
    assert r.returncode == 0, diagnosis
