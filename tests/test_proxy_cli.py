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


# The real entry point where importing aiohttp fails, as on an installation without the extra.
WITHOUT_AIOHTTP = (
    "import sys\n"
    "class NoAiohttp:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'aiohttp':\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, NoAiohttp())\n"
    "from saia_ctl.cli.main import run\n"
    "run()\n"
)


@pytest.mark.parametrize("args", [[], ["--ssh-host", "login"]])
def test_missing_aiohttp_is_a_one_line_error(args: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIA_")}
    r = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOHTTP, "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert r.stderr == (
        "Error: the proxy needs aiohttp, which this installation lacks: pip install 'saia-ctl[proxy]'\n"
    )
    assert r.stdout == ""


def test_options_come_from_the_one_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each declared option, given by its env var, lands in the config; unset, its default does."""
    import dataclasses

    from saia_ctl.cli.main import app
    from saia_ctl.proxy import server
    from saia_ctl.proxy.config import OPTIONS, ProxyConfig

    seen: list[ProxyConfig] = []
    monkeypatch.setattr(server, "serve", seen.append)
    for o in OPTIONS:
        monkeypatch.delenv(o.env, raising=False)
    result = CliRunner().invoke(app, ["proxy", "--ssh-host", "login"])
    assert result.exit_code == 0, result.output
    assert seen.pop() == ProxyConfig(ssh_host="login")

    given = {
        "ssh_host": "login2",
        "host": "0.0.0.0",
        "port": 8181,
        "ssh_port": 2222,
        "ssh_user": "saia",
        "ssh_key": "/k",
        "ssh_options": ("A=1", "B=2"),
        "ssh_binary": "/bin/ssh2",
        "control_dir": "/c",
        "pool_size": 3,
        "max_sessions": 7,
        "tunnel_sessions": 2,
        "tunnel_max_age": 90.5,
        "keepalive_interval": 2.5,
        "connect_timeout": 4.5,
        "timeout": 30.5,
        "user_header": "X-User",
        "default_user": "anon",
        "api_keys": "/keys",
        "models_ttl": 1.5,
        "max_body": 1000,
        "log_level": "warning",
    }
    assert sorted(given) == sorted(o.name for o in OPTIONS)
    env = {o.env: " ".join(given[o.name]) if o.repeatable else str(given[o.name]) for o in OPTIONS}
    result = CliRunner().invoke(app, ["proxy"], env=env)
    assert result.exit_code == 0, result.output
    assert dataclasses.replace(ProxyConfig(), **given) == seen.pop()


def test_help_shows_every_declared_option_with_its_env_var_and_default() -> None:
    from saia_ctl.cli.main import app
    from saia_ctl.proxy.config import OPTIONS

    text = " ".join(CliRunner().invoke(app, ["proxy", "--help"], terminal_width=400).output.split())
    for o in OPTIONS:
        assert o.flag in text and o.env in text and " ".join(o.help.split()) in text, o.name
        if o.default not in (None, (), ""):
            assert f"default: {o.default}" in text, o.name


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
