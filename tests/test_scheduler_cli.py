"""`saia-ctl tick`, `saia-ctl ticks list` and `python -m saia_ctl.scheduler`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from saia_ctl.cli.main import app
from saia_ctl.scheduler import tick as tick_module
from saia_ctl.slurm_fake import FakeSlurm
from tests.support.fixtures import service_config
from tests.support.paths import REPO

SBATCH = str(REPO / "tests" / "data" / "scheduler_backend.sbatch")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSlurm:
    import time

    f = FakeSlurm(time.time)
    monkeypatch.setattr(tick_module, "make_slurm", lambda settings: f)
    return f


def test_tick_prints_summary_and_ticks_list(import_services, home, fake) -> None:  # type: ignore[no-untyped-def]
    import_services(service_config("svc", sbatch=SBATCH))
    runner = CliRunner()
    r = runner.invoke(app, ["--home", str(home), "tick"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("svc: target 1 (avg 0.00 in flight / 1 per instance; min 1)")
    assert "submitting 1" in r.output and fake.calls["submit"] == 1
    r = runner.invoke(app, ["--home", str(home), "tick", "--if-due"])
    assert r.exit_code == 0 and "not due" in r.output
    r = runner.invoke(app, ["--home", str(home), "ticks", "list", "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 1 and rows[0]["actions"][0]["action"] == "submit"
    assert "svc: target 1" in rows[0]["summary"]
    r = runner.invoke(app, ["--home", str(home), "ticks", "list"])
    assert r.exit_code == 0 and "svc: target 1" in r.output and "duration" in r.output


def test_tick_failure_is_one_line_and_exit_1(import_services, home, fake) -> None:  # type: ignore[no-untyped-def]
    import_services(service_config("svc", sbatch=SBATCH))
    fake.fail_next.add("queue")
    r = CliRunner().invoke(app, ["--home", str(home), "tick"])
    assert r.exit_code == 1
    assert "Error: Slurm queue unreadable, no job changed: fake queue failure" in r.output
    assert "Traceback" not in r.output


def test_commands_have_help() -> None:
    runner = CliRunner()
    for args in (["tick", "--help"], ["ticks", "list", "--help"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and "--" in r.output


def _module(home: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAIA_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "saia_ctl.scheduler", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_module_entry_not_due_and_busy_exit_0_without_typer(home, engine, settings) -> None:  # type: ignore[no-untyped-def]
    import time

    from saia_ctl.scheduler.lease import begin_tick

    begin_tick(engine, "elsewhere:1:x", time.time(), 300)
    r = _module(home, "--if-due")
    assert r.returncode == 0 and "not due" in r.stdout
    r = _module(home)
    assert r.returncode == 0 and "another tick is running (holder elsewhere:1:x" in r.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, saia_ctl.scheduler.__main__, saia_ctl.scheduler.tick; print('typer' in sys.modules)",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False"


def test_module_entry_error_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = _module(tmp_path / "empty")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr


def test_summary_written_to_a_log_file_is_timestamped(home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """keep-alive sends the detached tick's output to logs/tick.log: each line says when."""
    log = tmp_path / "tick.log"
    with log.open("w") as f:
        r = subprocess.run(
            [sys.executable, "-m", "saia_ctl.scheduler"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SAIA_HOME": str(home), "PYTHONPATH": str(REPO)},
            timeout=120,
        )
    assert r.returncode in (0, 1)
    lines = log.read_text().splitlines()
    assert lines and all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line) for line in lines), lines


def test_entry_point_refuses_an_old_schema(home: Path, engine) -> None:  # type: ignore[no-untyped-def]
    from saia_ctl.migrate import downgrade

    downgrade(engine, "0001")
    r = subprocess.run(
        [sys.executable, "-m", "saia_ctl.scheduler"],
        capture_output=True,
        text=True,
        env={**os.environ, "SAIA_HOME": str(home), "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.startswith("Error: the database is at migration 0001")


# --- a bug in a tick: one line for the user, the traceback in the log row and the log file


def _planner_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    from saia_ctl.scheduler import plan

    def wanted_count_with_a_bug(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("planner bug for the test")

    monkeypatch.setattr(plan, "wanted_count", wanted_count_with_a_bug)


def test_a_bug_in_a_tick_keeps_its_traceback(import_services, home, engine, fake, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import_services(service_config("svc", sbatch=SBATCH))
    _planner_bug(monkeypatch)
    runner = CliRunner()
    r = runner.invoke(app, ["--home", str(home), "tick"])
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: ZeroDivisionError: planner bug for the test (traceback: saia-ctl ticks show 1)"]
    assert "Traceback" not in r.output
    # the row keeps the traceback after the one-line error
    with engine.connect() as c:
        stored = c.execute(text("SELECT error FROM ticks WHERE id = 1")).scalar_one()
    assert stored.startswith(
        "ZeroDivisionError: planner bug for the test\nTraceback (most recent call last):"
    )
    assert "wanted_count_with_a_bug" in stored
    # `ticks list` shows the one line; `--format json` too, with the traceback beside it
    r = runner.invoke(app, ["--home", str(home), "ticks", "list"])
    assert r.exit_code == 0 and "planner bug for the test" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["--home", str(home), "ticks", "list", "--format", "json"])
    (row,) = json.loads(r.output)
    assert row["error"] == "ZeroDivisionError: planner bug for the test"
    assert "wanted_count_with_a_bug" in row["traceback"]
    r = runner.invoke(app, ["--home", str(home), "ticks", "list", "--verbose"])
    assert r.exit_code == 0 and "wanted_count_with_a_bug" in r.output
    # `ticks show` shows it whole
    r = runner.invoke(app, ["--home", str(home), "ticks", "show", "1"])
    assert r.exit_code == 0, r.output
    assert "error: ZeroDivisionError: planner bug for the test" in r.output
    assert "Traceback (most recent call last):" in r.output and "wanted_count_with_a_bug" in r.output
    r = runner.invoke(app, ["--home", str(home), "ticks", "show", "1", "--format", "json"])
    (shown,) = json.loads(r.output)
    assert "wanted_count_with_a_bug" in shown["traceback"]


def test_ticks_show_of_an_unknown_tick_is_one_line(home) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(app, ["--home", str(home), "ticks", "show", "99"])
    assert r.exit_code == 1 and r.output.strip() == "Error: no tick 99"


def test_a_bug_in_a_detached_tick_leaves_its_traceback_in_the_log(
    import_services, home, fake, monkeypatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """keep-alive's tick (``python -m saia_ctl.scheduler``) writes to logs/tick.log: the traceback goes there."""
    from saia_ctl.scheduler.__main__ import main

    import_services(service_config("svc", sbatch=SBATCH))
    _planner_bug(monkeypatch)
    log = tmp_path / "tick.log"
    with log.open("w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        monkeypatch.setattr(sys, "stdout", f)
        assert main(["--home", str(home)]) == 1
    text_ = log.read_text()
    assert "error: ZeroDivisionError: planner bug for the test" in text_
    assert "Traceback (most recent call last):" in text_ and "wanted_count_with_a_bug" in text_
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "
    assert all(re.match(stamp, line) for line in text_.splitlines())


def test_a_bug_around_the_tick_leaves_its_traceback_in_the_log(home, fake, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Outside run_tick's own handler (e.g. in taking the lease) a bug still gets one line and the traceback."""
    from saia_ctl.scheduler.__main__ import main

    def run_tick_with_a_bug(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("lease bug for the test")

    monkeypatch.setattr(tick_module, "run_tick", run_tick_with_a_bug)
    log = tmp_path / "tick.log"
    with log.open("w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        assert main(["--home", str(home)]) == 1
    lines = log.read_text().splitlines()
    assert lines[0].endswith(" Error: 'lease bug for the test'")
    assert any("Traceback (most recent call last):" in line for line in lines)
    assert any("run_tick_with_a_bug" in line for line in lines)
