"""Admission through the real sshd of the test cluster (forced command
``cloud_interface.sh``): with a limit of k and 64 simultaneous requests, half of
them through sshd and half run directly (another login node's handlers on the
same database), exactly k are served; the 429 is read as SAIA's proxy reads it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.db import write_session
from saia_ctl.limits import set_limits
from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.paths import REPO
from tests.support.wire import add_ready_job, chat_body, command, header, parse_as_proxy, rows, run_interface

pytestmark = pytest.mark.cluster

SERVICE = "svc-lim-cluster"


@pytest.fixture
def world(cluster: Any, home: Path, import_services: Any, engine: Any) -> Iterator[dict[str, Any]]:
    import_services(service_config(SERVICE, request_hold_time=0))
    with FakeBackend("ok") as b:
        add_ready_job(home, SERVICE, b.port)
        key = cluster.add_forced_key(f"SAIA_HOME={home} {REPO}/cloud_interface.sh")
        yield {"home": home, "key": key, "backend": b, "engine": engine}


def ssh(cluster: Any, key: Path, cmd: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*cluster.ssh_argv(key), cmd.decode()], capture_output=True, timeout=120, stdin=subprocess.DEVNULL
    )


def test_exactly_k_of_64_through_sshd_and_a_second_handler_path(cluster: Any, world: dict[str, Any]) -> None:
    k = 7
    home = world["home"]
    with write_session(world["engine"]) as s:
        set_limits(s, "user", "alice@uni-x.de", None, {"requests_hour": str(k)})
    cmds = [
        command(f"c{i}", "alice@uni-x.de", SERVICE, "/v1/chat/completions", body=chat_body())
        for i in range(64)
    ]
    if time.time() % 3600 > 3300:  # an hour boundary mid-burst would open a new window
        time.sleep(3601 - time.time() % 3600)

    def send(i: int) -> bytes:
        if i % 2:
            return ssh(cluster, world["key"], cmds[i]).stdout
        return run_interface(home, cmds[i]).stdout

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(send, range(64)))
    parsed = [parse_as_proxy(a) for a in answers]
    statuses = [p[0] for p in parsed]
    assert statuses.count(200) == k, statuses
    assert statuses.count(429) == 64 - k
    assert len(world["backend"].received) == k
    recorded = rows(home / "saia.db")
    assert len(recorded) == 64 and sum(r["status"] == 429 for r in recorded) == 64 - k
    # the 429 as SAIA's proxy and its clients read it
    status, headers, body = next(p for p in parsed if p[0] == 429)
    assert header(headers, "x-ratelimit-limit-hour") == str(k)
    assert header(headers, "x-ratelimit-remaining-hour") == "0"
    assert int(header(headers, "Retry-After") or "0") > 0
    assert json.loads(body)["error"]["type"] == "rate_limit_exceeded"
    served = next(p for p in parsed if p[0] == 200)
    assert header(served[1], "x-ratelimit-limit-hour") == str(k)
    # usage through sshd: no backend, no row, the limit used up
    usage = ssh(
        cluster, world["key"], command("u1", "alice@uni-x.de", "usage", "/v1/usage", method="GET", body=None)
    )
    status, _h, body = parse_as_proxy(usage.stdout)
    doc = json.loads(body)
    assert status == 200 and doc["requests"] == 64
    assert [(x["limit"], x["remaining"]) for x in doc["limits"]] == [("requests_hour", 0)]
    assert len(rows(home / "saia.db")) == 64
