"""32 concurrent clients x 50 requests through ``cloud_interface.sh`` against a
local backend: every request answered, exactly 1,600 complete rows, no
"database is locked" anywhere."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import BackendProcess
from tests.support.fixtures import service_config
from tests.support.wire import add_job, chat_body, command, parse_as_proxy, rows, run_interface

CLIENTS = 32
PER_CLIENT = 50


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_32_clients_x_50_requests(home: Path, import_services: Any) -> None:
    import_services(service_config("svc", minimum_number_instances=0, maximum_number_instances=0))
    a, b = BackendProcess(), BackendProcess()
    try:
        add_job(home / "saia.db", "svc", a.port, a.secret)
        add_job(home / "saia.db", "svc", b.port, b.secret)
        failures: list[str] = []
        statuses: list[int] = []
        lock = threading.Lock()

        def client(c: int) -> None:
            for i in range(PER_CLIENT):
                stream = i % 5 == 0
                body = chat_body(stream, max_tokens=3, stream_options={"include_usage": True})
                cmd = command(f"load-{c}-{i}", f"user{c}@x", "svc", "/v1/chat/completions",
                              headers={"content-type": "application/json"}, body=body)  # fmt: skip
                try:
                    r = run_interface(home, cmd, timeout=120)
                    status = parse_as_proxy(r.stdout)[0]
                    err = r.stderr.decode(errors="replace")
                except Exception as e:
                    with lock:
                        failures.append(f"{c}-{i}: {e!r}")
                    continue
                with lock:
                    statuses.append(status)
                    if err:
                        failures.append(f"{c}-{i}: stderr {err!r}")

        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        assert failures == []
        assert len(statuses) == CLIENTS * PER_CLIENT and set(statuses) == {200}
        got = rows(home / "saia.db")
        assert len(got) == CLIENTS * PER_CLIENT
        assert {r["outcome"] for r in got} == {"ok"} and all(r["ended_at"] is not None for r in got)
        assert all(r["output_tokens"] == 3 for r in got)
        assert len({r["inference_id"] for r in got}) == CLIENTS * PER_CLIENT
        per_job = [sum(1 for r in got if r["job_id"] == j) for j in {r["job_id"] for r in got}]
        assert len(per_job) == 2 and min(per_job) > 0.3 * len(got)
        log = home / "logs" / "route.log"
        assert not log.exists() or "locked" not in log.read_text()
        print(f"1600 requests by 32 clients in {elapsed:.1f} s ({1600 / elapsed:.0f} requests/s)")
    finally:
        a.stop()
        b.stop()
