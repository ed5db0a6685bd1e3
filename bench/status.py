"""The cost of the ``status`` answer (called by every cloud proxy every few
seconds) with the live catalogue: per service phase, reason, demand,
contextLength and estimated wait.

Builds a state database with ``--services`` services (a third ready with
requests in flight, a third queued with Slurm's reason, a third offline) and
``--history`` ended jobs, then measures per ``status`` answer:

- the document built in process (``control.status_document``), against the
  reads the answer made before the catalogue (``store.status_rows`` alone) as
  the baseline;
- the whole ``cloud_interface.sh status`` process, as sshd runs it.

    .venv/bin/python bench/status.py [--services 60] [--history 5000] [--runs 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import Figure, json_line  # noqa: E402
from sqlalchemy import text  # noqa: E402

from saia_ctl import rawdb  # noqa: E402
from saia_ctl.db import engine_for, write_session  # noqa: E402
from saia_ctl.migrate import upgrade  # noqa: E402
from saia_ctl.request_path import control, store  # noqa: E402
from saia_ctl.settings import Settings  # noqa: E402
from tests.support.paths import CLOUD_INTERFACE  # noqa: E402

GOAL_MS = 5.0


def setup(home: str, n_services: int, n_history: int) -> str:
    settings = Settings(home=home, environ={})
    engine = engine_for(settings)
    upgrade(engine)
    now = time.time()
    with write_session(engine) as s:
        port = 20000
        for i in range(n_services):
            sid = f"service-{i:03d}"
            config = json.dumps({"id": sid, "contextLength": 32768, "vision": i % 2 == 0})
            s.execute(
                text(
                    "INSERT INTO services (id, name, owned_by, input, output, sbatch, inferences_per_instance, "
                    "minimum_number_instances, maximum_number_instances, job_expiry_time, ready_timeout, "
                    "idle_timeout, scale_down_cooldown, health_failures, request_hold_time, enabled, config_json, "
                    "created_at, updated_at) VALUES (:id, :id, 'bench', '[\"text\"]', '[\"text\"]', '/x', 4, 1, 2,"
                    " 600, 1800, 900, 120, 3, 30, 1, :c, :now, :now)"
                ),
                {"id": sid, "c": config, "now": now},
            )
            s.execute(
                text("INSERT INTO service_states (service_id, load_avg, target) VALUES (:id, 0, 1)"),
                {"id": sid},
            )
            for k in range(n_history // n_services):
                port += 1
                t = now - 86400 + k * 60
                s.execute(
                    text(
                        "INSERT INTO jobs (name, service_id, state, port, secret, submitted_at, started_at, ready_at,"
                        " ended_at, end_reason, gpus, health_failures) VALUES (:n, :sid, 'ended', :p, 'x', :t,"
                        " :t + 30, :t + 120, :t + 600, 'idle', 0, 0)"
                    ),
                    {"n": f"h{port}", "sid": sid, "p": port, "t": t},
                )
            kind = i % 3
            if kind == 2:
                continue
            port += 1
            state = "ready" if kind == 0 else "pending"
            r = s.connection().execute(
                text(
                    "INSERT INTO jobs (name, service_id, state, port, secret, submitted_at, started_at, ready_at,"
                    " slurm_reason, gpus, health_failures) VALUES (:n, :sid, :st, :p, 'x', :t, :started, :ready,"
                    " :reason, 0, 0)"
                ),
                {
                    "n": f"l{port}",
                    "sid": sid,
                    "st": state,
                    "p": port,
                    "t": now - 300,
                    "started": now - 200 if kind == 0 else None,
                    "ready": now - 100 if kind == 0 else None,
                    "reason": None if kind == 0 else "Resources",
                },
            )
            if kind == 0:
                for q in range(3):
                    s.execute(
                        text(
                            "INSERT INTO requests (inference_id, user_id, service_id, job_id, method, path,"
                            " started_at, bytes_in, bytes_out, handler_host, handler_pid)"
                            " VALUES (:i, 'u', :sid, :j, 'POST', '/v1/chat/completions', :t, 0, 0, 'h', 1)"
                        ),
                        {"i": f"{sid}-{q}", "sid": sid, "j": r.lastrowid, "t": now},
                    )
    engine.dispose()
    return str(Path(home) / "saia.db")


def per_call_ms(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=60)
    ap.add_argument("--history", type=int, default=6000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last (bench/run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        db = setup(home, args.services, args.history)
        conn = rawdb.connect(db, journal_mode="wal", busy_timeout=5.0)
        try:
            doc = control.status_document(conn)
            services = doc["services"]
            assert isinstance(services, list) and len(services) == args.services
            old = per_call_ms(lambda: store.status_rows(conn), args.runs)
            new = per_call_ms(lambda: control.status_document(conn), args.runs)
        finally:
            conn.close()
        env = {
            "PATH": "/usr/bin:/bin",
            "SAIA_HOME": home,
            "LANG": "C.UTF-8",
            "SSH_ORIGINAL_COMMAND": "status",
        }
        walls = []
        for _ in range(max(5, args.runs // 20)):
            t0 = time.perf_counter()
            p = subprocess.run([str(CLOUD_INTERFACE)], env=env, capture_output=True, check=False)
            walls.append(time.perf_counter() - t0)
            assert p.returncode == 0, p.stderr
        wall = statistics.median(walls) * 1000
    print(f"services={args.services} history jobs={args.history} runs={args.runs}")
    print(f"status document with the catalogue: median {new:.2f} ms (the reads before it: {old:.2f} ms)")
    print(f"whole `status` process: median {wall:.1f} ms wall")
    print(f"goal (< {GOAL_MS:g} ms for the document): {'met' if new < GOAL_MS else 'NOT met'}")
    if args.json:
        scale = f"{args.services} services"
        print(
            json_line(
                [
                    Figure(
                        "status",
                        f"status document ({scale})",
                        round(new, 3),
                        "ms",
                        baseline=round(old, 3),
                        goal=f"< {GOAL_MS:g} ms",
                        ok=new < GOAL_MS,
                    ),
                    Figure("status", f"status process wall ({scale})", round(wall, 1), "ms"),
                ]
            )
        )
    return 0


if __name__ == "__main__":
    os.environ.pop("SAIA_HOME", None)
    sys.exit(main())
