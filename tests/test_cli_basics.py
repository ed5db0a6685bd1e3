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


# --- errors: expected ones are one line; a bug is one line plus its traceback where an operator looks


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("provoked bug")


def test_a_bug_is_one_line_and_its_traceback_goes_to_the_cli_log(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from saia_ctl.cli import common

    monkeypatch.delenv("SAIA_DEBUG", raising=False)
    monkeypatch.setattr(common, "engine", _boom)
    result = CliRunner().invoke(app, ["services", "list"])
    assert result.exit_code == 1
    log = home / "logs" / "cli.log"
    assert result.stderr == (
        f"Error: unexpected RuntimeError: provoked bug (a bug; the traceback is in {log})\n"
    )
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in _boom" in text
    assert "RuntimeError: provoked bug" in text and "saia-ctl" in text


# The real entry point with common.engine (or the --home callback) broken on purpose.
BROKEN = (
    "import sys\n"
    "from saia_ctl.cli import common\n"
    "def boom(*a, **k):\n"
    "    raise RuntimeError('provoked bug')\n"
    "setattr(common, sys.argv.pop(1), boom)\n"
    "from saia_ctl.cli.main import run\n"
    "run()\n"
)


def run_broken(what: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    py = str(REPO / ".venv" / "bin" / "python")
    return subprocess.run(
        [py, "-c", BROKEN, what, *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_with_saia_debug_the_traceback_is_on_stderr_too(home: Path) -> None:
    env = dict(os.environ, SAIA_DEBUG="1")
    r = run_broken("engine", "services", "list", env=env)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "RuntimeError: provoked bug" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("Error: unexpected RuntimeError: provoked bug")
    assert "provoked bug" in (home / "logs" / "cli.log").read_text()


def test_without_a_state_directory_the_traceback_goes_to_stderr(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SAIA_HOME", "SAIA_DEBUG")}
    r = run_broken("engine", "services", "list", env=env)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "in boom" in r.stderr
    assert r.stderr.splitlines()[-1] == (
        "Error: unexpected RuntimeError: provoked bug (a bug; the traceback is printed above)"
    )


def test_a_bug_outside_any_command_body_is_caught_by_the_entry_point(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAIA_DEBUG"}
    r = run_broken("set_home", "services", "list", env=env)  # the --home callback
    assert r.returncode == 1
    assert (
        r.stderr.startswith("Error: unexpected RuntimeError: provoked bug")
        and len(r.stderr.splitlines()) == 1
    )
    assert "in boom" in (home / "logs" / "cli.log").read_text()


def test_an_expected_error_is_exactly_one_line_and_logs_nothing(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAIA_DEBUG"}
    env["SAIA_JOURNAL_MODE"] = "fast please"
    r = run("services", "list", env=env)
    assert r.returncode == 1
    assert (
        r.stderr == "Error: SAIA_JOURNAL_MODE must be delete, truncate, persist or wal, not 'fast please'\n"
    )
    assert not (home / "logs" / "cli.log").exists()


def test_the_library_errors_users_cause_are_expected_ones() -> None:
    from saia_ctl.accounting.prune import PruneError
    from saia_ctl.accounting.report import ReportError
    from saia_ctl.accounting.zones import TimeError
    from saia_ctl.cli.common import CLIError
    from saia_ctl.config import ConfigError
    from saia_ctl.db import DatabaseError
    from saia_ctl.durations import DurationError
    from saia_ctl.errors import SaiaError
    from saia_ctl.proxy.apikeys import KeyFileError
    from saia_ctl.settings import SettingsError
    from saia_ctl.slurm import SlurmError

    for cls in (TimeError, PruneError, ReportError, CLIError, ConfigError, DatabaseError, DurationError):
        assert issubclass(cls, SaiaError), cls
    for cls in (KeyFileError, SettingsError, SlurmError):
        assert issubclass(cls, SaiaError), cls
