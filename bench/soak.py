#!/usr/bin/env python3
"""Soak: minutes of mixed load through cloud_interface.sh on the real cluster.

    bench/soak.py [--minutes 10] [--clients 16] [--cluster DIR] [--json]

16 clients send chat completions (half streaming) through the real forced
command, one process per request as sshd would start it; a keep-alive every
3 s drives the scheduler as the cloud proxy does. The test service runs with a
2-minute walltime and a 60 s ``job_expiry_time``, so jobs are rotated all
along; in the last fifth of the run only two clients remain, so the service
scales down. At the end: every request that had a ready backend succeeded,
every request is recorded and closed, and the backend jobs' memory stayed flat.

The cluster is ``--cluster DIR`` or ``$SAIA_TEST_CLUSTER`` when it runs; else
a private one is brought up with ``scripts/dev-cluster.sh`` on free ports and
taken down at the end. Every job the soak submitted is cancelled at the end.
Not run in CI (``bench/run --soak``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import Figure, median, p95, report  # noqa: E402

PYTHON = (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)
SAIA = [str(REPO / ".venv" / "bin" / "saia-ctl")]
SERVICE = "soak-llm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_env(directory: Path) -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", 'source "$1/env.sh" && printf "%s" "$SLURM_CONF"', "_", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {"SLURM_CONF": out.stdout.strip()}


class Soak:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.own_cluster: Path | None = None
        self.home = Path(tempfile.mkdtemp(prefix="saia-soak-"))
        self.prefix = f"soak{uuid.uuid4().hex[:6]}"
        self.lock = threading.Lock()
        self.results: list[dict[str, object]] = []
        self.rss: dict[int, list[tuple[float, int]]] = {}  # job id -> (time, KiB)
        self.stop = threading.Event()
        self.active_clients = opts.clients

    # --- set-up -----------------------------------------------------------
    def cluster(self) -> dict[str, str]:
        given = self.opts.cluster or os.environ.get("SAIA_TEST_CLUSTER")
        if given and (Path(given) / "env.sh").exists():
            return cluster_env(Path(given))
        d = Path(tempfile.mkdtemp(prefix="saia-soakc-"))
        env = {
            **os.environ,
            "SLURMCTLD_PORT": str(free_port()),
            "SLURMD_PORT": str(free_port()),
            "SSH_PORT": str(free_port()),
        }
        subprocess.run(
            [str(REPO / "scripts" / "dev-cluster.sh"), "up", str(d)],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        self.own_cluster = d
        return cluster_env(d)

    def setup(self) -> None:
        env = self.cluster()
        self.slurm_env = {**os.environ, **env}
        script = self.home / "soak-llm.sbatch"
        text = (REPO / "sbatch" / "test-llm.sbatch").read_text().replace("--time=00:30:00", "--time=00:02:00")
        # The job's environment is the tick's, which sshd's nearly empty one begat: name the
        # test server and its interpreter in the script itself.
        # (after the #SBATCH lines: sbatch stops reading directives at the first command)
        text = text.replace(
            "set -euo pipefail\n",
            f"set -euo pipefail\nexport TEST_LLM_SERVER=${{TEST_LLM_SERVER:-{REPO / 'sbatch' / 'test_llm_server.py'}}}\n"
            f"export SAIA_TEST_PYTHON=${{SAIA_TEST_PYTHON:-{PYTHON}}}\n",
            1,
        )
        script.write_text(text)
        script.chmod(0o755)
        low = 30000 + random.randrange(0, 300) * 100
        (self.home / "saia.conf").write_text(
            f"SAIA_JOB_PREFIX={self.prefix}\nSAIA_PORT_RANGE={low}-{low + 99}\n"
            f"SAIA_SLURM_CONF={env['SLURM_CONF']}\nSAIA_TICK_INTERVAL=2\nSAIA_PYTHON={PYTHON}\n"
        )
        cfg = {
            "services": [
                {
                    "name": "Soak LLM",
                    "id": SERVICE,
                    "owned_by": "soak",
                    "input": ["text"],
                    "output": ["text"],
                    "sbatch": str(script),
                    "inferences_per_instance": 3,
                    "maximum_number_instances": 3,
                    "minimum_number_instances": 1,
                    "job_expiry_time": "1:00",
                    "scale_down_cooldown": 20,
                    "request_hold_time": 60,
                    "ready_timeout": 120,
                }
            ]
        }
        (self.home / "config.json").write_text(json.dumps(cfg))
        base = {
            **self.slurm_env,
            "SAIA_HOME": str(self.home),
            "PYTHONPATH": str(REPO),
            "SAIA_TEST_PYTHON": PYTHON,
            "TEST_LLM_SERVER": str(REPO / "sbatch" / "test_llm_server.py"),
        }
        self.env = base
        for args in (["db", "upgrade"], ["init", "--config", str(self.home / "config.json")]):
            subprocess.run([*SAIA, *args], env=base, check=True, capture_output=True, timeout=120)

    # --- load ---------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.home / 'saia.db'}?mode=ro", uri=True, timeout=30)

    def ready_jobs(self) -> int:
        with closing(self.db()) as c:
            return int(
                c.execute(
                    "SELECT count(*) FROM jobs WHERE service_id=? AND state='ready'", (SERVICE,)
                ).fetchone()[0]
            )

    def one_request(self, n: int, stream: bool) -> None:
        body = {
            "model": SERVICE,
            "messages": [{"role": "user", "content": f"soak request {n} " * 4}],
            "max_tokens": random.randint(8, 40),
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        cmd = (
            f"soak-{n}\nuser{n % 7}@soak\n{SERVICE}\n/v1/chat/completions\n"
            f' -X POST -H "content-type: application/json" -d {json.dumps(body)}'
        )
        had_ready = self.ready_jobs() > 0
        env = {"PATH": "/usr/bin:/bin", "SAIA_HOME": str(self.home), "SSH_ORIGINAL_COMMAND": cmd}
        t0 = time.monotonic()
        try:
            r = subprocess.run([str(REPO / "cloud_interface.sh")], env=env, capture_output=True, timeout=180)
            out = r.stdout
        except subprocess.TimeoutExpired:
            out = b""
        took = time.monotonic() - t0
        status = 0
        head, sep, rest = out.partition(b"\r\n\r\n")
        if sep and head.startswith(b"HTTP/1.1 "):
            status = int(head[9:12])
        complete = status == 200 and ((b"[DONE]" in rest) if stream else rest.rstrip().endswith(b"}"))
        with self.lock:
            self.results.append(
                {
                    "n": n,
                    "stream": stream,
                    "status": status,
                    "ok": complete,
                    "had_ready": had_ready,
                    "seconds": took,
                }
            )

    def client(self, idx: int, counter: list[int]) -> None:
        while not self.stop.is_set():
            if idx >= self.active_clients:
                time.sleep(0.5)
                continue
            with self.lock:
                counter[0] += 1
                n = counter[0]
            self.one_request(n, stream=random.random() < 0.5)

    def keep_alive(self) -> None:
        env = {"PATH": "/usr/bin:/bin", "SAIA_HOME": str(self.home), "SSH_ORIGINAL_COMMAND": "keep-alive"}
        while not self.stop.wait(3):
            subprocess.run([str(REPO / "cloud_interface.sh")], env=env, capture_output=True, timeout=60)

    def sample_rss(self) -> None:
        while not self.stop.wait(5):
            with closing(self.db()) as c:
                jobs = c.execute(
                    "SELECT id, port FROM jobs WHERE service_id=? AND state IN ('ready','draining')",
                    (SERVICE,),
                ).fetchall()
            for job_id, port in jobs:
                kib = backend_rss(int(port))
                if kib:
                    self.rss.setdefault(int(job_id), []).append((time.time(), kib))

    def run(self) -> list[Figure]:
        self.setup()
        counter = [0]
        threads = [
            threading.Thread(target=self.keep_alive, daemon=True),
            threading.Thread(target=self.sample_rss, daemon=True),
        ]
        threads += [
            threading.Thread(target=self.client, args=(i, counter), daemon=True)
            for i in range(self.opts.clients)
        ]
        for t in threads:
            t.start()
        seconds = self.opts.minutes * 60
        time.sleep(seconds * 0.8)
        self.active_clients = 2  # the load drops: the service must scale down
        time.sleep(seconds * 0.2)
        self.stop.set()
        for t in threads:
            t.join(240)
        return self.figures()

    def figures(self) -> list[Figure]:
        res = self.results
        sent = len(res)
        lost = [r for r in res if not r["ok"] and r["had_ready"]]
        with closing(self.db()) as c:
            recorded = int(
                c.execute("SELECT count(*) FROM requests WHERE inference_id LIKE 'soak-%'").fetchone()[0]
            )
            still_open = int(c.execute("SELECT count(*) FROM requests WHERE ended_at IS NULL").fetchone()[0])
            rotated = int(c.execute("SELECT count(*) FROM jobs WHERE end_reason='rotated'").fetchone()[0])
            scaled = int(
                c.execute("SELECT count(*) FROM jobs WHERE end_reason IN ('scale-down','idle')").fetchone()[0]
            )
        growth = []
        for samples in self.rss.values():
            if len(samples) >= 4:
                first = median(k for _, k in samples[: len(samples) // 4 or 1])
                last = median(k for _, k in samples[-(len(samples) // 4 or 1) :])
                growth.append((last - first) / 1024)
        lat = [float(r["seconds"]) for r in res if r["ok"]]  # type: ignore[arg-type]
        b = "soak"
        rss_growth = max(growth) if growth else None
        return [
            Figure(b, "requests sent", sent, "", goal=None),
            Figure(b, "requests ok", sum(1 for r in res if r["ok"]), ""),
            Figure(b, "failed with a ready backend", len(lost), "", goal="0", ok=not lost),
            Figure(
                b,
                "failed without a ready backend (503 while starting)",
                sum(1 for r in res if not r["ok"] and not r["had_ready"]),
                "",
            ),
            Figure(b, "rows lost (sent - recorded)", sent - recorded, "", goal="0", ok=sent == recorded),
            Figure(b, "rows left open", still_open, "", goal="0", ok=still_open == 0),
            Figure(b, "job rotations", rotated, "", goal=">= 2", ok=rotated >= 2),
            Figure(b, "scale-downs", scaled, "", goal=">= 1", ok=scaled >= 1),
            Figure(
                b,
                "backend RSS growth (max over jobs, median of last vs first quarter)",
                None if rss_growth is None else round(rss_growth, 2),
                "MiB",
                goal="< 20 MiB",
                ok=None if rss_growth is None else rss_growth < 20,
            ),
            Figure(b, "request wall time median", round(median(lat), 3) if lat else None, "s"),
            Figure(b, "request wall time p95", round(p95(lat), 3) if lat else None, "s"),
        ]

    # --- tear-down --------------------------------------------------------
    def cleanup(self) -> None:
        self.stop.set()
        try:
            out = subprocess.run(
                ["squeue", "-h", "-o", "%i %j"],
                env=self.slurm_env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            ids = [
                ln.split()[0]
                for ln in out.splitlines()
                if ln.split()[1:2] and ln.split()[1].startswith(self.prefix + "_")
            ]
            if ids:
                subprocess.run(["scancel", *ids], env=self.slurm_env, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError, AttributeError):
            pass
        if self.own_cluster is not None:
            subprocess.run(
                [str(REPO / "scripts" / "dev-cluster.sh"), "down", str(self.own_cluster)],
                capture_output=True,
                timeout=180,
            )
            shutil.rmtree(self.own_cluster, ignore_errors=True)
        if not self.opts.keep:
            shutil.rmtree(self.home, ignore_errors=True)
        else:
            print(f"soak: state kept in {self.home}", file=sys.stderr)


def backend_rss(port: int) -> int:
    """Resident KiB of the test backend listening on ``port`` (0 when not found)."""
    needle = f"test_llm_server.py\0{port}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            continue
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument(
        "--cluster", help="a running dev cluster's directory (default: $SAIA_TEST_CLUSTER or a private one)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the soak's state directory")
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last")
    opts = ap.parse_args()
    soak = Soak(opts)
    try:
        figures = soak.run()
    finally:
        soak.cleanup()
    report(figures, opts.json)
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
