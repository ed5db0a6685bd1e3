"""The cloud-side chain: what ``saia-ctl proxy`` + multiplexed SSH + ``cloud_interface.sh`` add.

In one run, interleaved, the same streaming chat request to the same real
Slurm job of the test service (``sbatch/test-llm.sbatch``):

1. ``direct``: HTTP straight to the backend (with the job's secret);
2. ``cloud_interface``: ``cloud_interface.sh`` alone, as sshd would start it
   (``SSH_ORIGINAL_COMMAND`` + body on stdin), no SSH;
3. ``ssh``: the same through a plain multiplexed ``ssh`` call (warm master,
   real sshd, forced command), no proxy;
4. ``proxy``: HTTP to ``saia-ctl proxy`` (its own process), which goes over its
   warm ControlMaster pool through the real sshd into ``cloud_interface.sh``.

Per variant: median and p95 of the total time and of the first streamed
chunk (time from sending the request to the first ``data:`` event); the
chain's added time is proxy minus direct, split into cloud_interface.sh
(2 - 1), SSH (3 - 2) and the proxy itself (4 - 3). Goal (issue 6): < 30 ms median,
< 50 ms p95. Uses the dev cluster in ``$SAIA_TEST_CLUSTER`` (or
/tmp/saia-dev-cluster) when it is up, else starts a private one and stops it.

    .venv/bin/python bench/proxy.py [--requests 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from common import Figure, median, p95, report  # noqa: E402

from tests.support.net import free_block  # noqa: E402

SERVICE = "bench-llm"
GOAL_MEDIAN_MS, GOAL_P95_MS = 30.0, 50.0


def body() -> bytes:
    return json.dumps(
        {
            "model": SERVICE,
            "messages": [{"role": "user", "content": "one two three"}],
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
            "token_delay": 0,
        }
    ).encode()


def http_timing(
    host: str, port: int, path: str, headers: dict[str, str], data: bytes
) -> tuple[float, float, int]:
    """(first chunk s, total s, status) of one HTTP/1.1 request over a fresh connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
    )
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(head.encode() + data)
        return _read_answer(s.recv, t0)


def _read_answer(read: Any, t0: float) -> tuple[float, float, int]:
    buf, first, status = b"", None, 0
    while True:
        chunk = read(65536)
        if not chunk:
            break
        buf += chunk
        if first is None:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                status = int(buf.split(b" ", 2)[1])
                if b"data:" in buf[end:]:
                    first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    if status != 200 or first is None:
        raise RuntimeError(f"bad answer (status {status}): {buf[:300]!r}")
    return first, total, status


def interface_timing(env: dict[str, str], command: str, data: bytes) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(REPO / "cloud_interface.sh")],
        env={**env, "SSH_ORIGINAL_COMMAND": command},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    proc.stdin.close()
    fd = proc.stdout.fileno()
    try:
        return _read_answer(lambda n: os.read(fd, n), t0)
    finally:
        proc.stdout.close()
        proc.wait(30)


def ssh_timing(argv: list[str], command: str, data: bytes) -> tuple[float, float, int]:
    """The same request by a plain multiplexed ``ssh`` call (no proxy): what the proxy adds is the rest."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    proc.stdin.close()
    fd = proc.stdout.fileno()
    try:
        return _read_answer(lambda n: os.read(fd, n), t0)
    finally:
        proc.stdout.close()
        proc.wait(30)


def prepare_home(home: Path, cluster: Any) -> None:
    from saia_ctl.config import apply_config, load_config
    from saia_ctl.db import engine_for, write_session
    from saia_ctl.migrate import upgrade
    from saia_ctl.settings import Settings

    low = free_block()  # jobs' ports, outside the ephemeral range
    (home / "saia.conf").write_text(
        f"SAIA_JOB_PREFIX=bench{uuid.uuid4().hex[:6]}\nSAIA_PORT_RANGE={low}-{low + 49}\n"
        f"SAIA_SLURM_CONF={cluster.slurm_conf}\nSAIA_PYTHON={sys.executable}\n"
    )
    engine = engine_for(Settings(home=str(home), environ={}))
    upgrade(engine)
    svc = {
        "name": "Bench LLM",
        "id": SERVICE,
        "owned_by": "bench",
        "input": ["text"],
        "output": ["text"],
        "sbatch": str(REPO / "sbatch" / "test-llm.sbatch"),
        "inferences_per_instance": 100,
        "maximum_number_instances": 1,
        "minimum_number_instances": 1,
        "job_expiry_time": "9:00",
    }
    (home / "config.json").write_text(json.dumps({"services": [svc]}))
    services, _ = load_config(str(home / "config.json"))
    with write_session(engine) as s:
        apply_config(s, services)
    engine.dispose()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "saia_ctl")], check=True)


def get_cluster() -> tuple[Any, Path | None]:
    from tests.support.cluster import cluster_at, cluster_running, start_cluster

    shared = Path(os.environ.get("SAIA_TEST_CLUSTER") or "/tmp/saia-dev-cluster")
    if cluster_running(shared):
        return cluster_at(shared.resolve(), owned=False), None
    private = Path(tempfile.mkdtemp(prefix="saia-bc-"))
    os.chmod(private, 0o755)
    return start_cluster(private), private


def start_proxy(cluster: Any, key: Path, control_dir: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    argv = [
        str(REPO / ".venv" / "bin" / "saia-ctl") if (REPO / ".venv" / "bin" / "saia-ctl").exists() else "saia-ctl",
        "proxy",
        "--port", "0",
        "--ssh-host", "127.0.0.1",
        "--ssh-port", str(cluster.ssh_port),
        "--ssh-user", cluster.ssh_user,
        "--ssh-key", str(key),
        "--ssh-option", "StrictHostKeyChecking=no",
        "--ssh-option", f"UserKnownHostsFile={cluster.dir / 'ssh' / 'known_hosts'}",
        "--control-dir", control_dir,
        "--pool-size", "2",
        "--models-ttl", "0",
        "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIA_")}
    with open(log, "wb") as f:  # a file, not a pipe: a full pipe would stall the proxy
        proc = subprocess.Popen(argv, env=env, stderr=f)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"listening on http://[^:]+:(\d+)", log.read_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the proxy did not start: {log.read_text()[-500:]}")


def wait_ready(port: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"X-Consumer-Custom-ID": "bench"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                models = json.loads(r.read())["data"]
            if any(m["id"] == SERVICE and m["status"] == "ready" for m in models):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the bench job did not become ready")


def cancel_jobs(home: Path, cluster: Any) -> None:
    try:
        conn = sqlite3.connect(home / "saia.db")
        ids = [
            str(r[0]) for r in conn.execute("SELECT slurm_job_id FROM jobs WHERE slurm_job_id IS NOT NULL")
        ]
        conn.close()
    except sqlite3.Error:
        return
    if ids:
        subprocess.run(["scancel", *ids], env={**os.environ, **cluster.env}, capture_output=True, timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40, help="requests per variant (interleaved)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON last (bench/run)")
    args = ap.parse_args()

    cluster, private = get_cluster()
    os.environ["SLURM_CONF"] = cluster.slurm_conf
    tmp = Path(tempfile.mkdtemp(prefix="saia-bp-"))
    control_dir = tempfile.mkdtemp(prefix="sbp", dir="/tmp")
    home = tmp / "home"
    home.mkdir()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        prepare_home(home, cluster)
        key = cluster.add_forced_key(f"SAIA_HOME={home} {REPO}/cloud_interface.sh")
        proxy, port = start_proxy(cluster, key, control_dir, tmp / "proxy.log")
        wait_ready(port)
        conn = sqlite3.connect(home / "saia.db")
        node, bport, secret = conn.execute(
            "SELECT node, port, secret FROM jobs WHERE state = 'ready' AND service_id = ?", (SERVICE,)
        ).fetchone()
        conn.close()
        data = body()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SAIA_HOME": str(home)}
        times: dict[str, list[tuple[float, float]]] = {
            "direct": [],
            "cloud_interface": [],
            "ssh": [],
            "proxy": [],
        }
        ssh_argv = [
            *cluster.ssh_argv(key)[:-1],
            "-T",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control_dir}/bench-%C",
            "-o", "ControlPersist=60",
            cluster.ssh_argv(key)[-1],
        ]  # fmt: skip
        ct = {"content-type": "application/json", "accept": "text/event-stream"}
        for i in range(args.requests + 3):  # 3 warm-up rounds, not counted
            d = http_timing(
                node, bport, "/v1/chat/completions", {**ct, "Authorization": f"Bearer {secret}"}, data
            )
            cmd = "\n".join(
                [f"bench-ci-{uuid.uuid4().hex}", "bench", SERVICE, "/v1/chat/completions",
                 ' -X POST -H "content-type: application/json" -H "accept: text/event-stream"']
            )  # fmt: skip
            c = interface_timing(env, cmd, data)
            s = ssh_timing(ssh_argv, cmd.replace("bench-ci-", "bench-ssh-"), data)
            p = http_timing(
                "127.0.0.1", port, "/v1/chat/completions", {**ct, "X-Consumer-Custom-ID": "bench"}, data
            )
            if i >= 3:
                times["direct"].append(d[:2])
                times["cloud_interface"].append(c[:2])
                times["ssh"].append(s[:2])
                times["proxy"].append(p[:2])
    finally:
        if proxy is not None:
            proxy.terminate()
            try:
                proxy.wait(30)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        cancel_jobs(home, cluster)
        cluster.remove_test_keys()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(control_dir, ignore_errors=True)
        if private is not None:
            subprocess.run(
                [str(REPO / "scripts" / "dev-cluster.sh"), "down", str(private)], capture_output=True
            )
            shutil.rmtree(private, ignore_errors=True)

    ms: dict[str, dict[str, list[float]]] = {
        k: {"first": [v[0] * 1000 for v in vs], "total": [v[1] * 1000 for v in vs]} for k, vs in times.items()
    }
    figures: list[Figure] = []
    for variant in ("direct", "cloud_interface", "ssh", "proxy"):
        for what in ("total", "first"):
            label = "first chunk" if what == "first" else "total"
            base = None if variant == "direct" else ms["direct"][what]
            figures.append(
                Figure("proxy", f"{variant} {label} median", round(median(ms[variant][what]), 2), "ms",
                       None if base is None else round(median(base), 2))
            )  # fmt: skip
            figures.append(
                Figure("proxy", f"{variant} {label} p95", round(p95(ms[variant][what]), 2), "ms",
                       None if base is None else round(p95(base), 2))
            )  # fmt: skip
    for what, label in (("total", "total"), ("first", "first chunk")):
        added_med = median(ms["proxy"][what]) - median(ms["direct"][what])
        added_p95 = p95(ms["proxy"][what]) - p95(ms["direct"][what])
        figures.append(
            Figure("proxy", f"chain adds, {label} median", round(added_med, 2), "ms",
                   goal=f"< {GOAL_MEDIAN_MS:g} ms", ok=added_med < GOAL_MEDIAN_MS)
        )  # fmt: skip
        figures.append(
            Figure("proxy", f"chain adds, {label} p95", round(added_p95, 2), "ms",
                   goal=f"< {GOAL_P95_MS:g} ms", ok=added_p95 < GOAL_P95_MS)
        )  # fmt: skip
    ci_added = median(ms["cloud_interface"]["total"]) - median(ms["direct"]["total"])
    figures.append(Figure("proxy", "of which cloud_interface.sh, total median", round(ci_added, 2), "ms"))
    figures.append(
        Figure("proxy", "of which SSH (multiplexed), total median",
               round(median(ms["ssh"]["total"]) - median(ms["cloud_interface"]["total"]), 2), "ms")
    )  # fmt: skip
    figures.append(
        Figure("proxy", "of which the proxy itself, total median",
               round(median(ms["proxy"]["total"]) - median(ms["ssh"]["total"]), 2), "ms")
    )  # fmt: skip
    print(f"{args.requests} requests per variant, interleaved, streaming chat (4 tokens, no token delay)")
    report(figures, args.json)


if __name__ == "__main__":
    main()
