"""The test cluster starts every time: `dev-cluster.sh up` then `down`, N times in a row (goal: 0 failures).

Usage: .venv/bin/python bench/cluster_restarts.py [--runs 20] [--ports ephemeral|auto] [--json]

Each run uses a fresh folder and its own ports, never the shared cluster's:
``ephemeral`` picks them as the test fixture does (free ports the kernel hands
out, inside its ephemeral range, where an outgoing connection may take one
before the daemon binds it: dev-cluster.sh must then move to another port);
``auto`` lets dev-cluster.sh pick ports outside that range. A failed start
prints the script's message (which carries the failing daemon's log tail).
Needs root and Slurm, munge and sshd installed (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Figure, median, report

DEV_CLUSTER = Path(__file__).resolve().parent.parent / "scripts" / "dev-cluster.sh"


def kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="starts and stops in a row (default 20)")
    ap.add_argument(
        "--ports", choices=("ephemeral", "auto"), default="ephemeral", help="how ports are chosen"
    )
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last")
    args = ap.parse_args()
    if not shutil.which("slurmctld"):
        print("cluster_restarts: slurmctld not found (run scripts/setup.sh)", file=sys.stderr)
        return 2
    failures: list[str] = []
    up_times: list[float] = []
    moved = 0
    for i in range(args.runs):
        directory = Path(tempfile.mkdtemp(prefix="saia-restart-"))
        names = ("SLURMCTLD_PORT", "SLURMD_PORT", "SSH_PORT")
        ports = {n: "auto" if args.ports == "auto" else str(kernel_port()) for n in names}
        env = {**os.environ, **ports}
        t0 = time.monotonic()
        try:
            up = subprocess.run(
                [str(DEV_CLUSTER), "up", str(directory)], env=env, capture_output=True, text=True, timeout=240
            )
            took = time.monotonic() - t0
            if up.returncode == 0:
                up_times.append(took)
                moved += up.stderr.count("was taken, trying")
                print(f"run {i + 1}: up in {took:.1f} s", file=sys.stderr)
            else:
                failures.append(f"run {i + 1} (ports {ports}): {up.stderr.strip()}")
                print(f"run {i + 1}: FAILED\n{up.stderr}", file=sys.stderr)
        finally:
            down = subprocess.run(
                [str(DEV_CLUSTER), "down", str(directory)], capture_output=True, text=True, timeout=240
            )
            if down.returncode != 0:
                failures.append(f"run {i + 1}: down failed: {down.stderr.strip()}")
            shutil.rmtree(directory, ignore_errors=True)
    bench = "cluster_restarts"
    report(
        [
            Figure(
                bench,
                f"failed starts of {args.runs} ({args.ports} ports)",
                len(failures),
                "",
                goal="0",
                ok=not failures,
            ),
            Figure(bench, "up time median", median(up_times) if up_times else None, "s"),
            Figure(bench, "ports moved after a bind failure", moved, ""),
        ],
        args.json,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
