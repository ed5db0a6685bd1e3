"""The CLI shell: help everywhere, one-line errors, the migration guard."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import typer
from typer.main import get_command

from saia_ctl.cli.main import app
from tests.support.paths import REPO

SAIA = str(REPO / ".venv" / "bin" / "saia-ctl")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAIA, *args], capture_output=True, text=True, timeout=60, env=env)


def _commands(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    out = []
    for name, cmd in getattr(group, "commands", {}).items():
        out.append(((*prefix, name), cmd))
        out.extend(_commands(cmd, (*prefix, name)))
    return out


def test_every_command_has_help_text() -> None:
    root = get_command(app)
    cmds = _commands(root)
    assert len(cmds) >= 4
    for path, cmd in cmds:
        assert (getattr(cmd, "help", None) or "").strip(), f"saia-ctl {' '.join(path)} has no help"
        for param in getattr(cmd, "params", []):
            if isinstance(param, typer.core.TyperOption) or param.param_type_name == "option":
                assert (param.help or "").strip(), f"saia-ctl {' '.join(path)} {param.name}: no help"


def test_missing_state_directory_is_one_line_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAIA_HOME"}
    r = run("services", "list", env=env)
    assert r.returncode == 1
    assert r.stderr == "Error: no state directory: set SAIA_HOME or pass --home\n"


def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    r = run("--home", str(tmp_path), "services", "list")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: the database is empty: run `saia-ctl db upgrade` first"
    r = run("--home", str(tmp_path), "db", "upgrade")
    assert r.returncode == 0, r.stderr
    r = run("--home", str(tmp_path), "services", "list")
    assert r.returncode == 0, r.stderr


def test_home_option_wins_over_environment(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("--home", str(a), "db", "upgrade").returncode == 0
    env = dict(os.environ, SAIA_HOME=str(b))
    r = run("--home", str(a), "db", "current", env=env)
    assert r.returncode == 0 and "(newest)" in r.stdout
    assert not (b / "saia.db").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("services", "list", "--format", "yaml"),
        ("init",),
        ("nonsense",),
        ("init", "--config", "/nonexistent/config.json"),
    ],
)
def test_bad_arguments_give_a_clear_error_without_traceback(home: Path, args: tuple[str, ...]) -> None:
    r = run(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stderr.strip()


def test_bad_setting_is_one_line_error(home: Path) -> None:
    env = dict(os.environ, SAIA_JOURNAL_MODE="fast")
    r = run("services", "list", env=env)
    assert r.returncode == 1
    assert r.stderr.startswith("Error: SAIA_JOURNAL_MODE must be") and len(r.stderr.splitlines()) == 1
