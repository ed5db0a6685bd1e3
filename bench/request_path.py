"""Request-path overhead: the same request to the same backend, once by a direct
``curl -i`` and once through ``cloud_interface.sh`` (as sshd runs it, without
SSH, so the figure is ours alone). Interleaved, several runs.

Reports per variant: median and p95 wall time per request (process start to
exit), our overhead (median difference), and CPU per request: of the
processes started (``RUSAGE_CHILDREN``: bash + python, or curl) and
machine-wide (``/proc/stat`` busy time, which includes the backend, the
same for both variants).

With ``--limits`` a variant ``limits``: ``cloud_interface.sh`` on a second state
directory where the bench user has limits of every request kind, a concurrency
limit and a token budget (all far from reached), a project pattern and a
default limit: admission decides and writes its counters in the recording
transaction. The figure to read is its median minus ``cloud_interface``'s
(limits on vs off, same run; goal: at most 1 ms).

    .venv/bin/python bench/request_path.py [--requests 100] [--runs 3] [--stream] [--limits]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import Figure, json_line  # noqa: E402

from tests.support.backend import BackendProcess  # noqa: E402
from tests.support.paths import CLOUD_INTERFACE  # noqa: E402
from tests.support.wire import add_job, chat_body, command  # noqa: E402


def busy_seconds() -> float:
    """Machine-wide busy CPU seconds so far (all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def setup(home: Path) -> None:
    from saia_ctl.config import apply_config, load_config
    from saia_ctl.db import engine_for, write_session
    from saia_ctl.migrate import upgrade
    from saia_ctl.settings import Settings

    engine = engine_for(Settings(home=str(home), environ={}))
    upgrade(engine)
    cfg = home / "config.json"
    svc = {
        "name": "Bench",
        "id": "bench",
        "owned_by": "bench",
        "input": ["text"],
        "output": ["text"],
        "sbatch": str(REPO / "bench" / "request_path.py"),
        "inferences_per_instance": 1,
        "maximum_number_instances": 0,
        "minimum_number_instances": 0,
        "job_expiry_time": "9:00",
    }
    cfg.write_text(json.dumps({"services": [svc]}))
    services, _ = load_config(str(cfg))
    with write_session(engine) as s:
        apply_config(s, services)
    engine.dispose()
    # What scripts/setup.sh does: bytecode of the hot path exists before the first request.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "saia_ctl")], check=True)


def set_limits(home: Path) -> None:
    """Limits for the bench user that are never reached: every kind admission counts."""
    import sqlite3

    with sqlite3.connect(home / "saia.db") as conn:
        conn.execute("INSERT INTO projects (name, slurm_account, created_at) VALUES ('bench', NULL, 0)")
        conn.execute("INSERT INTO project_members (project, member) VALUES ('bench', '*@x')")
        values = {
            "requests_minute": 10**6, "requests_hour": 10**7, "requests_day": 10**8,
            "requests_month": 10**9, "concurrent": 1000, "tokens_day": 10**12,
        }  # fmt: skip
        for kind, value in values.items():
            conn.execute(
                "INSERT INTO limits (scope, subject, service_id, kind, value) VALUES ('user', 'bench@x', '', ?, ?)",
                (kind, value),
            )
        conn.execute("INSERT INTO limits VALUES ('project', 'bench', '', 'requests_day', 1e9)")
        conn.execute("INSERT INTO limits VALUES ('default', '', 'bench', 'requests_minute', 1e6)")


def run_batch(argvs: list[tuple[list[str], dict[str, str]]]) -> tuple[list[float], float, float]:
    walls = []
    c0, b0 = children_cpu(), busy_seconds()
    for argv, env in argvs:
        t = time.perf_counter()
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True)
        walls.append(time.perf_counter() - t)
        if not r.stdout.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"bad answer from {argv[0]}: {r.stdout[:200]!r} {r.stderr[:300]!r}")
    n = len(argvs)
    return walls, (children_cpu() - c0) / n, (busy_seconds() - b0) / n


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95 + 0.5) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100, help="requests per variant and run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stream", action="store_true", help="a streaming chat completion instead")
    ap.add_argument("--batch", type=int, default=10, help="requests of one variant in a row")
    ap.add_argument("--limits", action="store_true", help="also the limits variant (admission deciding)")
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last (bench/run)")
    args = ap.parse_args()
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is needed")
    home = Path(tempfile.mkdtemp(prefix="saia-bench-"))
    cleanup: list[Path] = []
    backend = BackendProcess()
    try:
        setup(home)
        add_job(home / "saia.db", "bench", backend.port, backend.secret)
        body = chat_body(args.stream, max_tokens=5)
        url = f"http://127.0.0.1:{backend.port}/v1/chat/completions"
        direct = [
            curl, "-s", "-i", "-N", "-X", "POST", "-H", "content-type: application/json",
            "-H", f"Authorization: Bearer {backend.secret}", url, "-d", body.decode(),
        ]  # fmt: skip
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SAIA_")}
        base_env["SAIA_HOME"] = str(home)
        variants = {"cloud_interface": base_env}
        if args.limits:
            lim_home = Path(tempfile.mkdtemp(prefix="saia-bench-limits-"))
            cleanup.append(lim_home)
            setup(lim_home)
            add_job(lim_home / "saia.db", "bench", backend.port, backend.secret)
            set_limits(lim_home)
            variants["limits"] = dict(base_env, SAIA_HOME=str(lim_home))
        # warm-up (bytecode, page cache)
        for i in range(5):
            run_batch([(direct, base_env)])
            env = dict(base_env, SSH_ORIGINAL_COMMAND=command(
                f"warm-{i}", "bench@x", "bench", "/v1/chat/completions",
                headers={"content-type": "application/json"}, body=body).decode())  # fmt: skip
            for venv in variants.values():
                run_batch([([str(CLOUD_INTERFACE)], dict(env, SAIA_HOME=venv["SAIA_HOME"]))])
        print(f"request: POST /v1/chat/completions ({'streaming' if args.stream else 'non-streaming'}, "
              f"{len(body)} bytes), {args.requests} per variant and run, cores: {os.cpu_count()}")  # fmt: skip
        print(
            f"{'run':>3} {'variant':<18} {'median ms':>9} {'p95 ms':>7} {'cpu/req ms':>10} {'machine cpu/req ms':>18}"
        )
        summary = []
        lim_summary: list[tuple[float, float]] = []
        seq = 0
        for run in range(1, args.runs + 1):
            walls: dict[str, list[float]] = {"curl": [], **{v: [] for v in variants}}
            cpu: dict[str, list[float]] = {"curl": [], **{v: [] for v in variants}}
            machine: dict[str, list[float]] = {"curl": [], **{v: [] for v in variants}}
            left = args.requests
            while left > 0:
                n = min(args.batch, left)
                left -= n
                w, c, m = run_batch([(direct, base_env)] * n)
                walls["curl"] += w
                cpu["curl"] += [c] * n
                machine["curl"] += [m] * n
                for name, venv in variants.items():
                    batch = []
                    for _ in range(n):
                        seq += 1
                        cmd = command(f"bench-{run}-{seq}", "bench@x", "bench", "/v1/chat/completions",
                                      headers={"content-type": "application/json"}, body=body)  # fmt: skip
                        batch.append(([str(CLOUD_INTERFACE)], dict(venv, SSH_ORIGINAL_COMMAND=cmd.decode())))
                    w, c, m = run_batch(batch)
                    walls[name] += w
                    cpu[name] += [c] * n
                    machine[name] += [m] * n
            figures = {}
            for name in walls:
                med, high = statistics.median(walls[name]) * 1000, p95(walls[name]) * 1000
                c, m = statistics.mean(cpu[name]) * 1000, statistics.mean(machine[name]) * 1000
                figures[name] = (med, high, c, m)
                print(f"{run:>3} {name:<18} {med:9.1f} {high:7.1f} {c:10.1f} {m:18.1f}")
            overhead = figures["cloud_interface"][0] - figures["curl"][0]
            extra_cpu = figures["cloud_interface"][3] - figures["curl"][3]
            print(f"{run:>3} {'overhead':<18} {overhead:9.1f} {'':>7} {'':>10} {extra_cpu:18.1f}")
            if "limits" in figures:
                lim_over = figures["limits"][0] - figures["cloud_interface"][0]
                lim_cpu = figures["limits"][2] - figures["cloud_interface"][2]
                print(f"{run:>3} {'limits - none':<18} {lim_over:9.1f} {'':>7} {lim_cpu:10.1f}")
                lim_summary.append((lim_over, lim_cpu))
            summary.append(
                (
                    overhead,
                    figures["cloud_interface"][2],
                    figures["cloud_interface"][3],
                    figures["curl"][0],
                    figures["cloud_interface"][1] - figures["curl"][1],
                    figures["curl"][2],
                )
            )
        print(
            f"median over runs: overhead {statistics.median(s[0] for s in summary):.1f} ms, "
            f"cloud_interface CPU {statistics.median(s[1] for s in summary):.1f} ms/request "
            f"(machine-wide {statistics.median(s[2] for s in summary):.1f} ms/request incl. the backend); "
            f"goal: overhead < 15 ms, CPU < 40 ms"
        )
        if lim_summary:
            print(
                f"median over runs: limits on vs off {statistics.median(s[0] for s in lim_summary):+.2f} ms "
                f"wall, {statistics.median(s[1] for s in lim_summary):+.2f} ms CPU per request (goal: <= 1 ms)"
            )
        import sqlite3

        with sqlite3.connect(home / "saia.db") as conn:
            # Rows are closed just after the client saw the end of the answer: wait for them.
            for _ in range(100):
                if not conn.execute("SELECT count(*) FROM requests WHERE ended_at IS NULL").fetchone()[0]:
                    break
                time.sleep(0.05)
            n, ok = conn.execute("SELECT count(*), sum(outcome = 'ok') FROM requests").fetchone()
            bad = conn.execute(
                "SELECT inference_id, outcome, status, error FROM requests WHERE outcome IS NOT 'ok' LIMIT 5"
            ).fetchall()
        print(f"rows recorded: {n}, ok: {ok}" + (f"; not ok: {bad}" if bad else ""))
        keep_alive = []
        for _ in range(10):
            t = time.perf_counter()
            r = subprocess.run(
                [str(CLOUD_INTERFACE)],
                env=dict(base_env, SSH_ORIGINAL_COMMAND="keep-alive"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            keep_alive.append(time.perf_counter() - t)
            if r.stdout != b"OK\n":
                raise SystemExit(f"bad keep-alive answer: {r.stdout[:200]!r} {r.stderr[:300]!r}")
        ka_ms = statistics.median(keep_alive) * 1000
        print(f"keep-alive: median {ka_ms:.1f} ms wall (goal < 1000 ms)")
        if args.json:
            kind = "streaming" if args.stream else "non-streaming"
            over = statistics.median(x[0] for x in summary)
            our_cpu = statistics.median(x[1] for x in summary)
            print(
                json_line(
                    [
                        Figure(
                            "request_path",
                            f"overhead over curl, median ({kind})",
                            round(over, 2),
                            "ms",
                            baseline=round(statistics.median(x[3] for x in summary), 2),
                            goal="< 15 ms",
                            ok=over < 15,
                        ),
                        Figure(
                            "request_path",
                            f"overhead over curl, p95 ({kind})",
                            round(statistics.median(x[4] for x in summary), 2),
                            "ms",
                        ),
                        Figure(
                            "request_path",
                            "CPU per request (bash + handler)",
                            round(our_cpu, 2),
                            "ms",
                            baseline=round(statistics.median(x[5] for x in summary), 2),
                            goal="< 40 ms",
                            ok=our_cpu < 40,
                        ),
                        Figure(
                            "request_path",
                            "keep-alive, median (wall)",
                            round(ka_ms, 1),
                            "ms",
                            goal="< 1000 ms",
                            ok=ka_ms < 1000,
                        ),
                        Figure(
                            "request_path",
                            "rows recorded ok / requests",
                            ok,
                            "",
                            baseline=n,
                            goal="all",
                            ok=ok == n,
                        ),
                    ]
                )
            )
    finally:
        backend.stop()
        shutil.rmtree(home, ignore_errors=True)
        for extra in cleanup:
            shutil.rmtree(extra, ignore_errors=True)


if __name__ == "__main__":
    main()
