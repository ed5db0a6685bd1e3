"""The proxy in tunnel mode in a thread, in front of the fake ``ssh`` (``proxy_fakes``):
``config``, ``proxy``, an ``openai`` ``client`` for it, and the fixture ``real_login``
(the fake ssh runs the real forced command for the test's home, one service on a fake
backend), for the proxy's tunnel tests."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from saia_ctl.proxy.config import ProxyConfig
from saia_ctl.proxy.server import Proxy, running_in_thread
from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.paths import CLOUD_INTERFACE
from tests.support.proxy_fakes import Fakes
from tests.support.wire import add_ready_job


def config(fakes: Fakes, **kw: Any) -> ProxyConfig:
    base = ProxyConfig(
        ssh_host="login.example",
        port=0,
        ssh_binary=str(fakes.ssh),
        control_dir=str(fakes.root / "cm"),
        pool_size=2,
        keepalive_interval=600,
        timeout=30,
        tunnel_sessions=2,
    )
    return replace(base, **kw)


@contextmanager
def proxy(fakes: Fakes, **kw: Any) -> Iterator[tuple[Proxy, str]]:
    with running_in_thread(config(fakes, **kw)) as (p, base):
        yield p, base


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base + "/v1",
        api_key="unused",
        default_headers={"X-Consumer-Custom-ID": "alice@uni.de"},
        max_retries=0,
        timeout=60,
    )


@pytest.fixture
def real_login(
    fakes: Fakes, home: Path, import_services: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeBackend]:
    """The fake ssh runs the real forced command for ``home``; service ``svc`` on a fake backend."""
    import_services(
        service_config("svc", minimum_number_instances=0, maximum_number_instances=0, request_hold_time=0)
    )
    # no tick from the warm-up keep-alive: it would end the job row, which Slurm does not know
    with closing(sqlite3.connect(home / "saia.db")) as conn, conn:
        conn.execute(
            "INSERT INTO ticks (started_at, holder, summary, actions) VALUES (?, 'test', '', '[]')",
            (time.time() + 3600,),
        )
    monkeypatch.setenv("FAKE_SSH_FORCED", str(CLOUD_INTERFACE))
    monkeypatch.setenv("SAIA_HOME", str(home))
    with FakeBackend() as backend:
        add_ready_job(home, "svc", backend.port)
        yield backend
