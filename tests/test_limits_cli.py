"""`saia-ctl projects ...` and `saia-ctl limits ...`: formats, and bad values change nothing."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saia_ctl.cli.main import app
from tests.support.fixtures import service_config


def cli(*argv: str) -> Any:
    return CliRunner().invoke(app, list(argv), catch_exceptions=False)


def dump(home: Path) -> list[Any]:
    with closing(sqlite3.connect(home / "saia.db")) as c:
        return [
            c.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("projects", "project_members", "limits", "limit_counters")
        ]


def test_projects_and_limits_round_trip_in_every_format(home: Path, import_services: Any) -> None:
    import_services(service_config("svc"))
    assert (
        cli("projects", "add", "unix", "--account", "acc_1", "-m", "*@uni-x.de", "-m", "bob").exit_code == 0
    )
    assert cli("projects", "add-members", "unix", "carol").exit_code == 0
    assert (
        cli("limits", "set", "--project", "unix", "requests_day=1000", "gpu_hours_month=2.5").exit_code == 0
    )
    assert cli("limits", "set", "--user", "bob", "--service", "svc", "concurrent=2").exit_code == 0
    assert cli("limits", "set", "--default", "requests_minute=30").exit_code == 0
    projects = json.loads(cli("projects", "list", "--format", "json").stdout)
    unix = next(p for p in projects if p["project"] == "unix")
    assert unix == {
        "project": "unix",
        "slurm_account": "acc_1",
        "members": ["bob", "carol"],
        "patterns": ["*@uni-x.de"],
    }
    assert any(p["project"] == "default" for p in projects)
    shown = json.loads(cli("projects", "show", "unix", "-f", "json").stdout)
    assert {(r["limit"], r["value"]) for r in shown["limits"]} == {
        ("requests_day", 1000),
        ("gpu_hours_month", 2.5),
    }
    rows = list(csv.DictReader(io.StringIO(cli("limits", "list", "--format", "csv").stdout)))
    assert {(r["scope"], r["subject"], r["service"], r["limit"], r["value"]) for r in rows} == {
        ("project", "unix", "*", "requests_day", "1000"),
        ("project", "unix", "*", "gpu_hours_month", "2.5"),
        ("user", "bob", "svc", "concurrent", "2"),
        ("default", "", "*", "requests_minute", "30"),
    }
    assert "requests_minute" in cli("limits", "list").stdout
    assert cli("limits", "remove", "--user", "bob", "--service", "svc").stdout.startswith("1 limit")
    assert cli("projects", "remove", "unix").exit_code == 0
    assert [p["project"] for p in json.loads(cli("projects", "list", "-f", "json").stdout)] == ["default"]
    assert json.loads(cli("limits", "list", "-f", "json").stdout) == [
        {"scope": "default", "subject": "", "service": "*", "limit": "requests_minute", "value": 30}
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ("projects", "add", "bad name"),
        ("projects", "add", "p2", "--account", "bad account"),
        ("projects", "add", "p2", "-m", "bad user!"),
        ("projects", "add", "unix"),  # exists
        ("projects", "add", "default", "-m", "x"),
        ("projects", "add-members", "nope", "x"),
        ("projects", "remove-members", "unix", "nobody"),
        ("projects", "remove", "nope"),
        ("projects", "show", "nope"),
        ("limits", "set", "--user", "bob", "requests_minute=-1"),
        ("limits", "set", "--user", "bob", "requests_minute=1.5"),
        ("limits", "set", "--user", "bob", "requests_minute=1", "concurrent=nan"),
        ("limits", "set", "--user", "bob", "requests_minute=1", "tokens_week=5"),
        ("limits", "set", "--user", "bob", "requests_minute"),
        ("limits", "set", "--user", "b*", "requests_minute=1"),
        ("limits", "set", "--project", "nope", "requests_minute=1"),
        ("limits", "set", "--user", "bob", "--service", "nope", "requests_minute=1"),
        ("limits", "set", "requests_minute=1"),
        ("limits", "set", "--user", "bob", "--default", "requests_minute=1"),
        ("limits", "remove", "--user", "bob", "tokens_week"),
    ],
)
def test_bad_values_are_one_line_errors_and_change_nothing(home: Path, argv: tuple[str, ...]) -> None:
    assert cli("projects", "add", "unix", "-m", "bob").exit_code == 0
    assert cli("limits", "set", "--user", "bob", "requests_minute=5").exit_code == 0
    before = dump(home)
    result = cli(*argv)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert dump(home) == before
