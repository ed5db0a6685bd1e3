"""Bad CLI arguments: hypothesis over ``saia-ctl`` argv for every command that exists.

Whatever the argv (unknown options, wrong types, weird text, missing values),
``saia-ctl`` ends with exit status 0, 1 (an ``Error:`` line) or 2 (usage),
and never prints a traceback. The commands are read from the Typer app, so
commands added later are covered too. Long-running servers (``proxy``) only
get argv that cannot start them (``--help`` or invalid options).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.main import get_command
from typer.testing import CliRunner

from saia_ctl.cli.main import app
from tests.support.paths import REPO

SAIA = str(REPO / ".venv" / "bin" / "saia-ctl")
SERVERS = {("proxy",)}  # would serve forever on valid arguments


class Hung(BaseException):
    """Raised by SIGALRM: a command did not return (BaseException: no handler may swallow it)."""


def _commands() -> list[tuple[tuple[str, ...], list[str]]]:
    out: list[tuple[tuple[str, ...], list[str]]] = []

    def walk(group: Any, prefix: tuple[str, ...]) -> None:
        for name, cmd in getattr(group, "commands", {}).items():
            path = (*prefix, name)
            if getattr(cmd, "commands", None):
                walk(cmd, path)
            else:
                opts = [o for p in getattr(cmd, "params", []) for o in getattr(p, "opts", [])]
                out.append((path, opts))

    walk(get_command(app), ())
    return out


COMMANDS = _commands()
WEIRD = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
VALUES = st.one_of(
    WEIRD,
    st.sampled_from(
        [
            "",
            "-",
            "--",
            "-1",
            "0",
            "1e309",
            "nan",
            "NaN",
            "999999999999999999999",
            "table",
            "json",
            "csv",
            "xml",
            "2026-13",
            "2026-02",
            "1970-01",
            "../../etc/passwd",
            "/nonexistent",
            "$(id)",
            "`id`",
            "; rm -rf /",
            "%s%n",
            "\\x00",
            "é",
            "\u202e",
            "--help",
            "-h",
            "--format",
        ]
    ),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    path, opts = draw(st.sampled_from(COMMANDS))
    words: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 3))
        if kind == 0 and opts:
            words.append(draw(st.sampled_from(opts)))
            if draw(st.booleans()):
                words.append(draw(VALUES))
        elif kind == 1:
            words.append(draw(VALUES))
        elif kind == 2:
            words.append(
                "--" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12))
            )
        else:
            words.append(draw(st.sampled_from(["--format", "-f", "--home", "--limit", "-n", "--month"])))
            words.append(draw(VALUES))
    if path in SERVERS and "--help" not in words:
        words.append("--no-such-option-here")  # never let a server start
    prefix = []
    if draw(st.booleans()):
        prefix = ["--home", draw(st.sampled_from(["home-a", "", "/nonexistent/deeper", "nested/dir"]))]
    return [*prefix, *path, *words]


def _alarm(_signum: int, _frame: object) -> None:
    raise Hung()


@pytest.fixture
def isolated(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """cwd in a scratch dir (relative --home land there); Slurm commands fail fast (no binaries)."""
    scratch = tmp_path / "cwd"
    scratch.mkdir()
    empty_bin = tmp_path / "no-slurm"
    empty_bin.mkdir()
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("SAIA_SLURM_BIN", str(empty_bin))
    monkeypatch.setenv("SAIA_SLURM_TIMEOUT", "2")
    monkeypatch.delenv("SAIA_DEBUG", raising=False)
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield scratch
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_the_app_has_commands_to_fuzz() -> None:
    assert len(COMMANDS) >= 5
    assert all(opts is not None for _, opts in COMMANDS)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=argvs())
def test_any_argv_ends_in_0_1_or_2_without_a_traceback(isolated: Path, argv: list[str]) -> None:
    runner = CliRunner()
    signal.alarm(20)
    try:
        result = runner.invoke(app, argv, catch_exceptions=True)
    except Hung:
        raise AssertionError(f"saia-ctl {argv!r} did not return within 20 s") from None
    finally:
        signal.alarm(0)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"saia-ctl {argv!r} raised {result.exception!r}") from result.exception
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output[-500:])
    assert "Traceback" not in result.output, (argv, result.output[-2000:])
    if result.exit_code == 1:
        err = result.stderr if hasattr(result, "stderr") else result.output
        assert "Error" in err or "Aborted" in err, (argv, err[-500:])


@pytest.mark.parametrize(
    "argv",
    [
        ["services", "list", "--format", "xml"],
        ["ticks", "list", "--limit", "nan"],
        ["--home", "/nonexistent/\u202e/x", "services", "list"],
        ["init", "--config", "/nonexistent/config.json"],
        ["init", "--config"],
        ["no-such-command"],
        ["report", "--month", "2026-13"],
        ["jobs", "list", "--format", "$(id)"],
    ],
)
def test_the_real_entry_point_never_prints_a_traceback(isolated: Path, argv: list[str]) -> None:
    r = subprocess.run([SAIA, *argv], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert r.returncode in (1, 2), (argv, r.returncode, r.stdout[-300:], r.stderr[-300:])
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stderr.strip(), argv
