"""The SSH hop at wire speed (issue 15): 16 clients through ``saia-ctl proxy
--tunnel-sessions 2`` → a real sshd → ``cloud_interface.sh tunnel`` → a backend,
against the same clients straight to that backend, in the same run.

The backend is ``sbatch/test_llm_server.py`` (what the test Slurm job runs)
started here as a plain process and entered as a ready job of a private
state directory; sshd is a private one with the dev cluster's host key and
``authorized_keys`` (so its every process is this bench's). Each client
sends small non-streaming chat completions, one after the other, on a
keep-alive connection. Direct and chain are measured in turns (``--rounds``,
3 by default; the machine is shared, so each figure is the median over the
rounds of the round's chain against the same round's direct). Figures, per
variant: requests/s, latency median and p95, and CPU per request of the
serving processes (backend; for the chain also the proxy, its ssh client and
masters, sshd and the tunnel processes, each kind printed), read from /proc
before and after (``utime+stime`` and reaped children's). The clients' own
CPU is left out of both. The backend closes every connection, as the issue's
first measurement had it; ``--backend-keep-alive`` makes it keep them open
(as vLLM does), which makes direct much cheaper. ``--per-request`` adds the
chain without the tunnel (one SSH session per request) for comparison;
``--verbose`` shows the slowest requests.

Goals (issue 15): throughput ≥ 50 % of direct; CPU ≤ 3 ms per request;
latency overhead ≤ +8 ms median, ≤ +15 ms p95.

    .venv/bin/python bench/tunnel.py [--clients 16] [--requests 1600] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from common import Figure, median, p95, report  # noqa: E402

SERVICE = "bench-tunnel"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- CPU of process trees, from /proc --------------------------------------------------


def _procs() -> dict[tuple[int, int], tuple[int, float, str]]:
    """(pid, start time) -> (ppid, CPU seconds incl. reaped children, cmdline) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        cpu = (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TICK
        out[(int(entry), int(f[19]))] = (int(f[1]), cpu, cmd)
    return out


def _ours(procs: dict[tuple[int, int], tuple[int, float, str]], roots: set[int], marker: str) -> set[Any]:
    children: dict[int, list[tuple[int, int]]] = {}
    for key, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(key)
    keys = {k for k in procs if k[0] in roots or (marker and marker in procs[k][2])}
    todo = list(keys)
    while todo:
        for child in children.get(todo.pop()[0], []):
            if child not in keys:
                keys.add(child)
                todo.append(child)
    return keys


KINDS = ("backend", "proxy", "ssh", "sshd", "tunnel")


def kind_of(cmdline: str) -> str:
    """Which part of the chain a process is, by its command line."""
    if "test_llm_server" in cmdline:
        return "backend"
    if "saia-ctl proxy" in cmdline:
        return "proxy"
    if cmdline.startswith("sshd"):
        return "sshd"
    if cmdline.startswith("ssh"):  # the client (`ssh -T`) and the masters (`ssh: ... [mux]`)
        return "ssh"
    if "request_path/entry.py" in cmdline or "cloud_interface" in cmdline:
        return "tunnel"
    return "other"


class CpuMeter:
    def __init__(self, roots: set[int], marker: str = "") -> None:
        self.roots, self.marker = roots, marker
        self.before = _procs()

    def seconds(self) -> float:
        after = _procs()
        keys = _ours(after, self.roots, self.marker) | _ours(self.before, self.roots, self.marker)
        total = 0.0
        self.by_kind: dict[str, float] = {}
        for k in keys:
            end = after.get(k)
            start = self.before.get(k)
            if end is not None:
                used = end[1] - (start[1] if start else 0.0)
                total += used
                what = kind_of(end[2])
                self.by_kind[what] = self.by_kind.get(what, 0.0) + used
        return total


# --- load ------------------------------------------------------------------------------


def load(port: int, headers: dict[str, str], clients: int, per_client: int) -> tuple[float, list[float]]:
    """(wall seconds, latencies) of ``clients`` threads sending ``per_client`` requests each."""
    body = json.dumps(
        {"model": SERVICE, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 4}
    ).encode()
    head = {"Content-Type": "application/json", **headers}
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        start.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/chat/completions", body, head)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200 or b'"usage"' not in data:
                    failures.append(f"{resp.status} {data[:120]!r}")
            except (OSError, http.client.HTTPException) as e:
                failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return wall, latencies


# --- set-up ------------------------------------------------------------------------------


def prepare_home(home: Path, backend_port: int, secret: str) -> None:
    from saia_ctl.config import apply_config, load_config
    from saia_ctl.db import engine_for, write_session
    from saia_ctl.migrate import upgrade
    from saia_ctl.settings import Settings
    from tests.support.wire import add_job

    (home / "saia.conf").write_text(
        f"SAIA_JOB_PREFIX=bt{uuid.uuid4().hex[:6]}\nSAIA_PYTHON={sys.executable}\n"
    )
    engine = engine_for(Settings(home=str(home), environ={}))
    upgrade(engine)
    svc = {
        "name": "Bench tunnel",
        "id": SERVICE,
        "owned_by": "bench",
        "input": ["text"],
        "output": ["text"],
        "sbatch": str(REPO / "sbatch" / "test-llm.sbatch"),
        "inferences_per_instance": 1000,
        "minimum_number_instances": 0,
        "maximum_number_instances": 0,
        "job_expiry_time": "9:00",
        "request_hold_time": 0,
    }
    (home / "config.json").write_text(json.dumps({"services": [svc]}))
    services, _ = load_config(str(home / "config.json"))
    with write_session(engine) as s:
        apply_config(s, services)
    engine.dispose()
    add_job(home / "saia.db", SERVICE, backend_port, secret, walltime_limit=36000)
    # No tick: it would end a job row Slurm does not know (a tick "started" in the future).
    with closing(sqlite3.connect(home / "saia.db")) as conn, conn:
        conn.execute(
            "INSERT INTO ticks (started_at, holder, summary, actions) VALUES (?, 'bench', '', '[]')",
            (time.time() + 36000,),
        )
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "saia_ctl")], check=True)


def start_sshd(cluster: Any, root: Path) -> tuple[int, int]:
    """A private sshd with the cluster's config, host key and authorized_keys: (pid, port)."""
    port = free_port()
    lines = [
        line
        for line in (cluster.dir / "ssh" / "sshd_config").read_text().splitlines()
        if line.split(" ", 1)[0] not in ("Port", "PidFile")
    ]
    pidfile = root / "sshd.pid"
    lines += [f"Port {port}", f"PidFile {pidfile}"]
    (root / "sshd_config").write_text("\n".join(lines) + "\n")
    subprocess.run(
        ["/usr/sbin/sshd", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")],
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(pidfile.read_text().split()[0]), port


def start_proxy(
    cluster: Any,
    sshd_port: int,
    key: Path,
    control_dir: str,
    log: Path,
    sessions: int,
    *,
    keepalive_interval: float = 3600,
    log_level: str = "error",
    default_user: str = "bench@uni",
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    """``saia-ctl proxy`` in tunnel mode through the private sshd; (process, port)."""
    exe = REPO / ".venv" / "bin" / "saia-ctl"
    argv = [
        str(exe) if exe.exists() else "saia-ctl",
        "proxy",
        "--port", "0",
        "--ssh-host", "127.0.0.1",
        "--ssh-port", str(sshd_port),
        "--ssh-user", cluster.ssh_user,
        "--ssh-key", str(key),
        "--ssh-option", "StrictHostKeyChecking=no",
        "--ssh-option", f"UserKnownHostsFile={cluster.dir / 'ssh' / 'known_hosts'}",
        "--control-dir", control_dir,
        "--pool-size", "2",
        "--keepalive-interval", str(keepalive_interval),
        "--log-level", log_level,
        "--default-user", default_user,
        "--tunnel-sessions", str(sessions),
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIA_")}
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, env=env, stderr=f)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"listening on http://[^:]+:(\d+)", log.read_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the proxy did not start: {log.read_text()[-500:]}")


def measure(
    name: str,
    port: int,
    headers: dict[str, str],
    roots: set[int],
    marker: str,
    args: argparse.Namespace,
    warm: bool = True,
) -> dict[str, float]:
    per_client = max(1, args.requests // args.clients)
    if warm:
        load(port, headers, args.clients, max(2, per_client // 10))  # warm up: sessions, masters, caches
    meter = CpuMeter(roots, marker)
    wall, lat = load(port, headers, args.clients, per_client)
    n = len(lat)
    cpu = meter.seconds()
    out = {
        "rate": n / wall,
        "median_ms": median(lat) * 1000,
        "p95_ms": p95(lat) * 1000,
        "cpu_ms": cpu / n * 1000,
    }
    for kind in KINDS:
        out[f"cpu_{kind}_ms"] = meter.by_kind.get(kind, 0.0) / n * 1000
    kinds = ", ".join(f"{k} {out[f'cpu_{k}_ms']:.2f}" for k in KINDS if meter.by_kind.get(k))
    print(
        f"{name:12s} {n} requests in {wall:.2f} s: {out['rate']:.0f}/s, median {out['median_ms']:.1f} ms, "
        f"p95 {out['p95_ms']:.1f} ms, CPU {out['cpu_ms']:.2f} ms/request ({kinds})",
        file=sys.stderr,
    )
    if args.verbose:
        slow = sorted(lat)[-5:]
        print(f"    slowest: {', '.join(f'{x * 1000:.0f}' for x in slow)} ms", file=sys.stderr)
    return out


def compare(direct: dict[str, float], chain: dict[str, float]) -> dict[str, float]:
    """One round's chain against the same round's direct."""
    return {
        "ratio": chain["rate"] / direct["rate"],
        "over_median_ms": chain["median_ms"] - direct["median_ms"],
        "over_p95_ms": chain["p95_ms"] - direct["p95_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1600, help="requests per variant and round")
    ap.add_argument("--sessions", type=int, default=2, help="the proxy's --tunnel-sessions (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="turns of direct and chain (median of rounds)")
    ap.add_argument(
        "--backend-keep-alive", action="store_true", help="the backend keeps connections open (as vLLM)"
    )
    ap.add_argument(
        "--per-request", action="store_true", help="also the chain with one SSH session per request"
    )
    ap.add_argument("--json", action="store_true", help="print the figures as JSON last (bench/run)")
    ap.add_argument("--verbose", action="store_true", help="CPU per request of each kind of process")
    args = ap.parse_args()

    from tests.support.cluster import cluster_at, cluster_running

    shared = Path(os.environ.get("SAIA_TEST_CLUSTER") or "/tmp/saia-dev-cluster")
    if not cluster_running(shared):
        print("bench/tunnel.py: the dev cluster is not running; nothing measured", file=sys.stderr)
        report([Figure("tunnel", "skipped: no dev cluster", None)], args.json)
        return
    cluster = cluster_at(shared.resolve(), owned=False)
    root = Path(tempfile.mkdtemp(prefix="saia-bt-"))
    os.chmod(root, 0o755)
    home = root / "home"
    home.mkdir()
    control_dir = tempfile.mkdtemp(prefix="sbt", dir="/tmp")
    secret = secrets.token_urlsafe(24)
    backend_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    sshd_pid = 0
    try:
        env = {
            **os.environ,
            "SAIA_API_KEY": secret,
            "TEST_LLM_TOKEN_DELAY": "0",
            "TEST_LLM_HOST": "127.0.0.1",
            "TEST_LLM_KEEP_ALIVE": "1" if args.backend_keep_alive else "0",
        }
        backend = subprocess.Popen(
            [sys.executable, str(REPO / "sbatch" / "test_llm_server.py"), str(backend_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(backend)
        prepare_home(home, backend_port, secret)
        key = cluster.add_forced_key(f"SAIA_HOME={home} {REPO}/cloud_interface.sh")
        sshd_pid, sshd_port = start_sshd(cluster, root)
        proxy, proxy_port = start_proxy(
            cluster, sshd_port, key, control_dir, root / "proxy.log", args.sessions
        )
        procs.append(proxy)
        roots = {backend.pid, proxy.pid, sshd_pid}
        auth = {"Authorization": f"Bearer {secret}"}
        directs, chains, rounds = [], [], []
        for r in range(max(1, args.rounds)):
            directs.append(measure("direct", backend_port, auth, {backend.pid}, "", args, warm=r == 0))
            chains.append(measure("tunnel", proxy_port, {}, roots, control_dir, args, warm=r == 0))
            rounds.append(compare(directs[-1], chains[-1]))
            print(
                f"  round {r + 1}: throughput {rounds[-1]['ratio'] * 100:.0f} % of direct, "
                f"overhead {rounds[-1]['over_median_ms']:+.1f} ms median, {rounds[-1]['over_p95_ms']:+.1f} ms p95",
                file=sys.stderr,
            )
        direct = {k: median(d[k] for d in directs) for k in directs[0]}
        chain = {k: median(c[k] for c in chains) for k in chains[0]}
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
        per_request = None
        if args.per_request:
            proxy, proxy_port = start_proxy(cluster, sshd_port, key, control_dir, root / "proxy2.log", 0)
            procs.append(proxy)
            small = argparse.Namespace(**{**vars(args), "requests": min(args.requests, 320)})
            per_request = measure(
                "per-request", proxy_port, {}, {backend.pid, proxy.pid, sshd_pid}, control_dir, small
            )
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if sshd_pid:
            try:
                os.kill(sshd_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        cluster.remove_test_keys()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(control_dir, ignore_errors=True)

    ratio = median(r["ratio"] for r in rounds)
    over_med = median(r["over_median_ms"] for r in rounds)
    over_p95 = median(r["over_p95_ms"] for r in rounds)
    kinds = ", ".join(f"{k} {chain[f'cpu_{k}_ms']:.2f}" for k in KINDS)
    print(
        f"median of {len(rounds)} rounds: throughput {chain['rate']:.0f}/s = {ratio * 100:.0f} % of direct "
        f"({direct['rate']:.0f}/s); CPU {chain['cpu_ms']:.2f} ms/request ({kinds}; direct "
        f"{direct['cpu_ms']:.2f}); latency overhead {over_med:+.1f} ms median, {over_p95:+.1f} ms p95",
        file=sys.stderr,
    )
    figures = [
        Figure("tunnel", "chain throughput", round(chain["rate"], 1), "req/s", round(direct["rate"], 1),
               ratio=round(ratio, 3), goal=">= 50% of direct", ok=ratio >= 0.5),
        Figure("tunnel", "chain CPU per request", round(chain["cpu_ms"], 2), "ms", round(direct["cpu_ms"], 2),
               goal="<= 3 ms", ok=chain["cpu_ms"] <= 3.0),
        Figure("tunnel", "latency overhead median", round(over_med, 1), "ms", round(direct["median_ms"], 1),
               goal="<= +8 ms", ok=over_med <= 8.0),
        Figure("tunnel", "latency overhead p95", round(over_p95, 1), "ms", round(direct["p95_ms"], 1),
               goal="<= +15 ms", ok=over_p95 <= 15.0),
    ]  # fmt: skip
    if per_request is not None:
        figures.append(
            Figure("tunnel", "per-request chain throughput", round(per_request["rate"], 1), "req/s",
                   round(direct["rate"], 1))
        )  # fmt: skip
    report(figures, args.json)


if __name__ == "__main__":
    main()
