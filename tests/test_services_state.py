"""`saia-ctl services drain|resume|disable|enable SERVICE`: the operator's state of a
service, shown in `services list` and `status`, honoured by the request path (503)
and the scheduler (the service's jobs drain), kept across re-imports of config.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from saia_ctl.cli.main import app
from saia_ctl.scheduler.observe import read_snapshot
from tests.support.fixtures import service_config
from tests.support.net import free_port
from tests.support.wire import add_job, chat_body, command, parse_as_proxy, rows, run_inproc


def _cli(home: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--home", str(home), *args])


def _status(home: Path) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in json.loads(run_inproc(b"status", home))["services"]}


def test_drain_resume_disable_enable(home: Path, engine: Any, import_services: Any) -> None:
    import_services(service_config("a"), service_config("b"))
    add_job(home / "saia.db", "a", free_port(), "x")
    assert _status(home)["a"]["admin"] == "active" and _status(home)["a"]["phase"] == "ready"

    r = _cli(home, "services", "drain", "a")
    assert r.exit_code == 0, r.output
    assert "active -> draining" in r.output and "1 live job" in r.output
    a = _status(home)["a"]
    assert (a["admin"], a["phase"]) == ("draining", "draining")
    # the scheduler sees the service as not wanted: its jobs drain
    views = {v.id: v for v in read_snapshot(engine, time.time(), "h").services}
    assert views["a"].enabled is False and views["b"].enabled is True
    # the request path answers 503 and says why, before writing anything (as for an unknown service)
    raw = run_inproc(
        command(
            "d1",
            "u",
            "a",
            "/v1/chat/completions",
            headers={"Content-Type": "application/json"},
            body=chat_body(),
        ),
        home,
    )
    status, _headers, body = parse_as_proxy(raw)
    assert status == 503 and b"draining by its operator" in body
    assert rows(home / "saia.db") == []
    # a re-import of config.json keeps the operator's state
    import_services(service_config("a"), service_config("b"))
    assert _status(home)["a"]["admin"] == "draining"
    listed = json.loads(_cli(home, "services", "list", "--format", "json").output)
    assert {s["id"]: s["state"] for s in listed} == {"a": "draining", "b": "active"}

    r = _cli(home, "services", "enable", "a")
    assert r.exit_code == 1 and "use `saia-ctl services resume a`" in r.output
    assert _cli(home, "services", "resume", "a").exit_code == 0
    assert _status(home)["a"]["phase"] == "ready"

    assert _cli(home, "services", "disable", "b").exit_code == 0
    b = _status(home)["b"]
    assert (b["admin"], b["phase"]) == ("disabled", "offline")
    r = _cli(home, "services", "resume", "b")
    assert r.exit_code == 1 and "use `saia-ctl services enable b`" in r.output
    assert _cli(home, "services", "enable", "b").exit_code == 0
    assert "already active" in _cli(home, "services", "enable", "b").output

    r = _cli(home, "services", "drain", "nope")
    assert r.exit_code == 1 and "no service 'nope'" in r.output and "Traceback" not in r.output
