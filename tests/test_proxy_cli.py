"""`saia-ctl proxy` as a command: options and env vars, no SAIA_HOME, clean stop, aiohttp optional."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.paths import REPO
from tests.support.proxy_fakes import Fakes

SAIA_CTL = [sys.executable, "-c", "from saia_ctl.cli.main import run; run()", "proxy"]


def test_cli_imports_no_aiohttp() -> None:
    code = "import sys, saia_ctl.cli.main; assert 'aiohttp' not in sys.modules, 'aiohttp imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_missing_aiohttp_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from saia_ctl.cli.main import app

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aiohttp" else real(name, *a)
    )
    result = CliRunner().invoke(app, ["proxy", "--ssh-host", "login"])
    assert result.exit_code == 1
    assert "saia-ctl[proxy]" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_options_are_one_line_errors() -> None:
    from saia_ctl.cli.main import app

    for args in (
        ["proxy"],
        ["proxy", "--ssh-host", "h", "--pool-size", "0"],
        ["proxy", "--ssh-host", "-oX=y"],
    ):
        result = CliRunner().invoke(app, args, env={"SAIA_HOME": ""})
        assert result.exit_code == 1 and result.output.startswith("Error: "), result.output


def test_runs_from_env_vars_without_saia_home_and_stops_on_sigterm(fakes: Fakes, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAIA_", "SLURM_"))}
    env.update(
        SAIA_PROXY_SSH_HOST="login",
        SAIA_PROXY_SSH_BINARY=str(fakes.ssh),
        SAIA_PROXY_PORT="0",
        SAIA_PROXY_POOL_SIZE="1",
        SAIA_PROXY_KEEPALIVE_INTERVAL="0.5",
        SAIA_PROXY_SSH_OPTIONS="StrictHostKeyChecking=no ConnectionAttempts=1",
        SAIA_PROXY_DEFAULT_USER="anon",
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.Popen(SAIA_CTL, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 30
        while "listening on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, line
        req = urllib.request.Request(
            m.group(1) + "/v1/chat/completions", data=json.dumps({"model": "echo"}).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["choices"][0]["message"]["content"] == "Hello from echo"
        time.sleep(1.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rec = fakes.all_records()[0]
    assert rec["user"] == "anon"
    argv = next(a for a in fakes.argvs() if a[-1] == "keep-alive")
    assert "StrictHostKeyChecking=no" in argv and "ConnectionAttempts=1" in argv
    assert fakes.keepalive_count() >= 2  # warm-up and the loop
    assert not (tmp_path / "saia.db").exists()
