"""Tunnel mode end to end: the official openai client → ``saia-ctl proxy --tunnel-sessions 2``
→ the real sshd (forced-command key) → ``cloud_interface.sh tunnel`` → a backend.

The backend is the fake one on this host, entered as a ready job of the
test's own state directory (a real Slurm job adds nothing here: the tunnel
is the cluster's side of SSH); no tick runs, so nothing reconciles that row
with Slurm."""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import openai
import pytest

from saia_ctl.proxy.config import ProxyConfig
from saia_ctl.proxy.server import running_in_thread
from tests.support.backend import FakeBackend
from tests.support.fixtures import service_config
from tests.support.paths import REPO
from tests.support.wire import add_ready_job, rows

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.fixture
def control_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="stn", dir="/tmp")  # socket paths must stay short
    yield d
    for name in os.listdir(d):
        subprocess.run(["rm", "-f", os.path.join(d, name)], check=False)
    os.rmdir(d)


def test_openai_client_through_real_sshd_in_tunnel_mode(
    cluster: Any, home: Path, import_services: Any, control_dir: str
) -> None:
    import_services(
        service_config("tun-svc", minimum_number_instances=0, maximum_number_instances=0, request_hold_time=0)
    )
    with closing(sqlite3.connect(home / "saia.db")) as conn, conn:  # no tick: see the module's doc
        conn.execute(
            "INSERT INTO ticks (started_at, holder, summary, actions) VALUES (?, 'test', '', '[]')",
            (time.time() + 3600,),
        )
    key = cluster.add_forced_key(f"SAIA_HOME={home} {REPO}/cloud_interface.sh")
    argv = cluster.ssh_argv(key)
    options = tuple(
        argv[i + 1]
        for i, w in enumerate(argv)
        if w == "-o" and not argv[i + 1].startswith(("BatchMode", "IdentitiesOnly"))
    )
    cfg = ProxyConfig(
        ssh_host="127.0.0.1",
        port=0,
        ssh_port=cluster.ssh_port,
        ssh_user=cluster.ssh_user,
        ssh_key=str(key),
        ssh_options=options,
        control_dir=control_dir,
        pool_size=2,
        keepalive_interval=600,
        timeout=60,
        tunnel_sessions=2,
    )
    n = 60
    with FakeBackend() as backend:
        add_ready_job(home, "tun-svc", backend.port)
        with running_in_thread(cfg) as (p, base):
            c = openai.OpenAI(
                base_url=base + "/v1",
                api_key="none",
                default_headers={"X-Consumer-Custom-ID": "alice@uni.de"},
                max_retries=0,
                timeout=90,
            )

            def ask(i: int) -> str:
                if i % 2:
                    chunks = c.chat.completions.create(
                        model="tun-svc",
                        messages=[{"role": "user", "content": "x"}],
                        max_tokens=i % 5 + 1,
                        stream=True,
                    )
                    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                done = c.chat.completions.create(
                    model="tun-svc", messages=[{"role": "user", "content": "x"}], max_tokens=i % 5 + 1
                )
                return str(done.choices[0].message.content)

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(ask, range(n)))
            assert p.tunnels is not None and p.tunnels.opened == 2
            assert p.pool.direct_sessions == 0
            # 16 at once fit in the oldest session (FILL): the other stands by
            assert [c.opened_streams for c in p.tunnels.conns] == [n, 0]
    assert [len(a.split()) for a in answers] == [i % 5 + 1 for i in range(n)]
    recorded = rows(home / "saia.db")
    assert len(recorded) == n
    assert {r["outcome"] for r in recorded} == {"ok"}
    assert len({r["handler_pid"] for r in recorded}) == 1  # one login-node process served them all
    assert all(r["output_tokens"] for r in recorded)
