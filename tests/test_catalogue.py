"""The live catalogue: `status` and the proxy's /v1/models per service tell the
phase (queued with Slurm's reason, loading, ready, draining, offline), demand,
contextLength, capabilities and the estimated wait; the tick stores Slurm's
pending reason and expected start. The frontend check runs against the fields
GWDG's Chat AI frontend reads (tests/data/chat_ai/model_fields.json)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.proxy.model_list import models_from_status
from saia_ctl.request_path import catalogue
from saia_ctl.scheduler.catalogue import parse_start_times, queue_facts, start_times
from saia_ctl.scheduler.views import JobView
from saia_ctl.slurm import SlurmJob
from tests.support.backend import BackendProcess as Backend
from tests.support.fixtures import service_config
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.wire import add_job, run_inproc

FIELDS = json.loads((REPO / "tests" / "data" / "chat_ai" / "model_fields.json").read_text())


@pytest.mark.parametrize(
    ("in_flight", "capacity", "level"),
    [
        (0, 0, "low"),  # idle and offline: nothing waits
        (0, 4, "low"),
        (1, 8, "low"),  # 0.625
        (1, 4, "medium"),  # 1.25
        (2, 4, "medium"),  # 2.5: half full
        (3, 4, "high"),  # 3.75
        (4, 4, "high"),  # at capacity: 5
        (5, 4, "very high"),  # beyond capacity: requests queue in the backend
        (1, 0, "very high"),  # a request and no ready job
    ],
)
def test_demand_levels_as_the_frontend_reads_them(in_flight: int, capacity: int, level: str) -> None:
    value = catalogue.demand(in_flight, capacity)
    assert isinstance(value, float)
    label = next(d["label"] for d in FIELDS["demand_levels"] if d["up_to"] is None or value <= d["up_to"])
    assert label == level


@pytest.mark.parametrize(
    ("counts", "phase"),
    [
        ({}, "offline"),
        ({"pending": 1}, "queued"),
        ({"submitting": 1}, "queued"),
        ({"pending": 1, "starting": 1}, "loading"),
        ({"starting": 1, "ready": 1}, "ready"),
        ({"draining": 1}, "draining"),
        ({"draining": 1, "pending": 1}, "queued"),
    ],
)
def test_phase_from_live_job_states(counts: dict[str, int], phase: str) -> None:
    assert catalogue.phase(counts) == phase


def test_context_length_config_key_wins_and_is_a_string() -> None:
    assert catalogue.context_length({"contextLength": 32768}, 8192) == "32768"
    assert catalogue.context_length({"contextLength": "128k"}, None) == "128k"
    assert catalogue.context_length({}, 8192) == "8192"
    assert catalogue.context_length({"contextLength": True}, None) is None
    assert catalogue.context_length({}, 0) is None


def test_estimated_wait_from_history_and_slurm() -> None:
    now = 1000.0
    # a job loading for 30 s, loads take 100 s: 70 s to go
    assert catalogue.estimated_wait(now, [150.0], 800.0, 970.0, None, [100.0]) == 70
    # pending, Slurm expects a start in 60 s, loads take 100 s
    assert catalogue.estimated_wait(now, [300.0], 900.0, None, 1060.0, [100.0]) == 160
    # pending, no estimate from Slurm: typical submit-to-ready (median) minus the wait so far
    assert catalogue.estimated_wait(now, [100.0, 300.0, 200.0], 900.0, None, None, []) == 100
    # no job at all: typical submit-to-ready
    assert catalogue.estimated_wait(now, [120.0], None, None, None, []) == 120
    # no history: unknown, never a guess
    assert catalogue.estimated_wait(now, [], 900.0, None, None, []) is None
    assert catalogue.estimated_wait(now, [10.0], 900.0, None, None, []) == 0


def test_extra_keys_keep_capabilities_not_job_keys() -> None:
    config = {**service_config("svc"), "vision": True, "tools": ["x"], "demand": 99}
    assert catalogue.extra_keys(config) == {"vision": True, "tools": ["x"]}


def _set(db: Path, sql: str, *args: object) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute(sql, args)


def _status(home: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads(run_inproc(b"status", home))
    return {s["id"]: s for s in doc["services"]}


def test_status_tells_phase_reason_demand_context_and_wait(home: Path, import_services: Any) -> None:
    import_services(
        service_config("a-ready", maximum_number_instances=2, inferences_per_instance=2, contextLength=4096),
        service_config("b-queued", vision=True),
        service_config("c-loading"),
        service_config("d-off", minimum_number_instances=0),
    )
    db = home / "saia.db"
    now = time.time()
    add_job(db, "a-ready", free_port(), "x")
    for i in range(3):  # three requests in flight against 2 slots
        _set(
            db,
            "INSERT INTO requests (inference_id, user_id, service_id, method, path, started_at,"
            " handler_host, handler_pid, bytes_in, bytes_out)"
            " VALUES (?, 'u', 'a-ready', 'POST', '/v1/chat/completions', ?, 'h', 1, 0, 0)",
            f"inf{i}",
            now,
        )
    # b-queued: an earlier job took 200 s from submit to ready; one is pending for 50 s
    old = add_job(
        db, "b-queued", free_port(), "x", state="ready", submitted_at=now - 1000, ready_at=now - 800
    )
    _set(db, "UPDATE jobs SET state='ended', ended_at=?, end_reason='idle' WHERE id=?", now - 700, old)
    pend = add_job(db, "b-queued", free_port(), "x", state="pending", submitted_at=now - 50)
    _set(db, "UPDATE jobs SET slurm_reason='Resources' WHERE id=?", pend)
    add_job(db, "c-loading", free_port(), "x", state="starting")
    by_id = _status(home)
    a, b, c, d = by_id["a-ready"], by_id["b-queued"], by_id["c-loading"], by_id["d-off"]
    assert (a["phase"], a["state"]) == ("ready", "ready")
    assert a["in_flight"] == 3 and a["capacity"] == 2 and a["demand"] == 7.5
    assert a["contextLength"] == "4096" and "estimated_wait" not in a
    assert (b["phase"], b["state"], b["reason"]) == ("queued", "starting", "Resources")
    assert b["estimated_wait"] == 150 and b["vision"] is True and b["demand"] == 0
    assert (c["phase"], c["state"]) == ("loading", "starting")
    assert (d["phase"], d["state"]) == ("offline", "offline") and d["estimated_wait"] is None
    # Slurm's own estimate, once the tick stored it, wins over history
    _set(db, "UPDATE jobs SET slurm_start=? WHERE id=?", time.time() + 600, pend)
    assert 590 <= _status(home)["b-queued"]["estimated_wait"] <= 800


def test_models_carry_the_fields_the_chat_ai_frontend_reads(home: Path, import_services: Any) -> None:
    import_services(
        service_config("m", maximum_number_instances=2, contextLength=32768, output=["text", "thought"]),
        service_config("n"),
    )
    add_job(home / "saia.db", "m", free_port(), "x")
    models = {m["id"]: m for m in models_from_status(run_inproc(b"status", home), 1)}
    js = {"string": str, "number": (int, float), "string[]": list}
    for model in models.values():
        for field, kind in FIELDS["fields"].items():
            if field == "contextLength" and model["id"] == "n":
                assert field not in model  # unknown: the frontend shows "-"
                continue
            assert isinstance(model[field], js[kind]) and not isinstance(model[field], bool), (field, model)
            if kind == "string[]":
                assert all(isinstance(x, str) for x in model[field])
    assert (
        models["m"]["contextLength"] == "32768"
        and models["m"]["status"] in FIELDS["status_values_shown_online"]
    )
    assert models["m"]["phase"] == "ready" and models["n"]["phase"] == "offline"
    assert models["n"]["status"] not in FIELDS["status_values_shown_online"]
    # earlier consumers' fields are still there
    assert models["m"]["instances"] == {"ready": 1, "starting": 0, "target": 0}


def test_tick_side_reason_and_start_times() -> None:
    jobs = [
        JobView(1, "a", "s", 11, "pending", None, 1, 0.0),
        JobView(2, "b", "s", 12, "starting", "n1", 2, 0.0),
        JobView(3, "c", "s", None, "submitting", None, 3, 0.0),
    ]
    queue = [
        SlurmJob(11, "a", "PENDING", reason="Priority"),
        SlurmJob(12, "b", "RUNNING", node="n1"),
    ]
    assert queue_facts(jobs, queue, {11: 5.0}) == {1: ("Priority", 5.0), 2: (None, None)}
    out = "11|2026-12-02T07:00:00\n12|N/A\nbogus\n"
    starts = parse_start_times(out)
    assert list(starts) == [11] and starts[11] > 0

    class Runs:
        args: tuple[str, ...] = ()

        def run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
            Runs.args = (name, *args)
            return subprocess.CompletedProcess([name], 0, out, "")

    assert start_times(Runs(), [11, 13]) == starts and Runs.args[-1] == "11,13"
    assert start_times(object(), [11]) == {}  # a client that cannot run squeue: no estimate


def test_context_length_learned_once_from_the_backend(home: Path, engine: Any, import_services: Any) -> None:
    from saia_ctl.scheduler.catalogue import context_from_models, learn_context_lengths

    assert context_from_models(b'{"data": [{"id": "m", "max_model_len": 8192}]}') == 8192
    assert context_from_models(b'{"data": [{"id": "m"}]}') == 0
    assert context_from_models(b"<html>") == 0
    import_services(service_config("v"), service_config("w", contextLength=1000), service_config("x"))
    db = home / "saia.db"
    add_job(db, "v", free_port(), "s3cret")
    add_job(db, "w", free_port(), "s3cret")
    asked: list[tuple[str, int, str]] = []

    def fetch(host: str, port: int, secret: str, timeout: float) -> bytes | None:
        asked.append((host, port, secret))
        return b'{"object": "list", "data": [{"id": "m", "max_model_len": 8192}]}'

    assert learn_context_lengths(engine, 1.0, fetch) == {"v": 8192}  # w has it in its config
    assert [a[2] for a in asked] == ["s3cret"]
    assert learn_context_lengths(engine, 1.0, fetch) == {} and len(asked) == 1  # asked once
    assert _status(home)["v"]["contextLength"] == "8192"
    assert _status(home)["w"]["contextLength"] == "1000"
    assert "contextLength" not in _status(home)["x"]


def test_fetch_models_sends_the_bearer_token() -> None:
    from saia_ctl.scheduler.catalogue import fetch_models

    backend = Backend()
    try:
        body = fetch_models("127.0.0.1", backend.port, backend.secret, 5.0)
        assert body is not None and b"test-model" in body
        assert fetch_models("127.0.0.1", backend.port, "wrong", 5.0) is None
        assert fetch_models("127.0.0.1", free_port(), "x", 1.0) is None
    finally:
        backend.stop()
