#!/usr/bin/env python3
"""Tunnel soak (issue 15): minutes of load through ``saia-ctl proxy --tunnel-sessions 2``
while a tunnel session is killed every 30 s.

    bench/tunnel_soak.py [--minutes 10] [--kill-every 30] [--clients 8] [--json]

The chain is the real one: the proxy → a private sshd (the dev cluster's
config, host key and ``authorized_keys``, so every login-node process is this
run's) → the forced command ``cloud_interface.sh tunnel`` → a real Slurm job
running ``sbatch/test-llm.sbatch``, submitted by the ticks the proxy's
keep-alive drives. The clients send small chat completions (plain and
streaming), and some hang up in the middle of a stream; each request has its
own ``inference-id``, so every row leads back to the client that sent it.

Every ``--kill-every`` seconds one tunnel session is killed with SIGKILL,
alternately on the proxy's side (its ``ssh`` client process) and on the login
node's side (the ``tunnel`` process under sshd), always the oldest session, which
carries the requests in flight (the proxy fills the oldest first). At the end:

- no row lost: every request a backend answered (HTTP 200) has its row, and
  every row is a request a client sent;
- no row left open once the ticks ran (the rows of a killed tunnel process are
  closed by the tick, which sees their handler gone);
- no tunnel process outlives its session (counted before each kill), and
  once the proxy stopped no login-node process of this run is left, nor an
  ssh process of the proxy's;
- the proxy reopened its sessions (one per kill) and served requests after the
  last kill.

The cluster is ``--cluster DIR`` or ``$SAIA_TEST_CLUSTER`` (default
``/tmp/saia-dev-cluster``); without one running, nothing is measured. Long: run
through ``bench/run --tunnel-soak``. ``tests/test_proxy_tunnel_soak_cluster.py``
runs a short one.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
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
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from common import Figure, report  # noqa: E402
from tunnel import start_proxy, start_sshd  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
SERVICE = "tunnel-soak"
SESSIONS = 2
ENTRY_MARKS = (b"request_path/entry.py", b"saia_ctl.request_path.entry")


# --- processes ---------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                out[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def home_processes(home: Path) -> list[int]:
    """Processes started for this run's state directory through sshd (tunnels, handlers,
    ticks): SAIA_HOME in their environment, and not a step of the Slurm job."""
    marker = f"SAIA_HOME={home}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        env = b"\0" + _read(f"/proc/{entry}/environ")
        if b"\0" + marker in env and b"\0SLURM_JOB_ID=" not in env:
            found.append(int(entry))
    return found


def login_tunnels(home: Path) -> list[int]:
    """The login node's tunnel processes of this run (the handler's interpreter)."""
    out = []
    for pid in home_processes(home):
        env = b"\0" + _read(f"/proc/{pid}/environ")
        cmd = _read(f"/proc/{pid}/cmdline")
        if b"\0SSH_ORIGINAL_COMMAND=tunnel\0" in env and any(m in cmd for m in ENTRY_MARKS):
            out.append(pid)
    return out


def proxy_tunnels(proxy_pid: int) -> list[int]:
    """The proxy's ssh client processes running a tunnel session."""
    out = []
    for pid, parent in _parents().items():
        if parent == proxy_pid:
            argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
            if argv[-2:-1] == [b"tunnel"] or argv[-1:] == [b"tunnel"]:
                out.append(pid)
    return out


def started(pid: int) -> int:
    """When the process started (clock ticks since boot; 0 if it is gone)."""
    stat = _read(f"/proc/{pid}/stat")
    return int(stat.rsplit(b")", 1)[1].split()[19]) if stat else 0


def ssh_processes(control_dir: str) -> list[int]:
    """The proxy's ssh processes (clients and ControlPersist masters) of this run."""
    mark = control_dir.encode()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and mark in _read(f"/proc/{e}/cmdline")]


def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


# --- the load ----------------------------------------------------------------------------


@dataclass
class Sent:
    iid: str
    kind: str  # plain, stream, hangup
    outcome: str = "?"  # ok, hung-up, cut, refused (no answer head), http-NNN
    status: int = 0
    started: float = 0.0


class Load:
    """Clients sending requests through the proxy until ``stop`` is set."""

    KINDS = ("plain",) * 10 + ("stream",) * 7 + ("hangup",) * 3

    def __init__(self, port: int, clients: int, run_id: str) -> None:
        self.port = port
        self.clients = clients
        self.run_id = run_id
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._ids = itertools.count(1)
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float = 120.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        while not self.stop.is_set():
            kind = rng.choice(self.KINDS)
            rec = Sent(f"{self.run_id}-{next(self._ids)}", kind)
            with self.lock:
                self.sent.append(rec)
            rec.started = time.monotonic()
            try:
                self.one(rec, rng)
            except (OSError, http.client.HTTPException, ValueError) as e:
                rec.outcome = "refused" if rec.status == 0 else "cut"
                rec.outcome += f" ({type(e).__name__})" if rec.status == 0 else ""

    def one(self, rec: Sent, rng: random.Random) -> None:
        stream = rec.kind != "plain"
        tokens = {"plain": rng.randint(4, 24), "stream": rng.randint(10, 40), "hangup": 200}[rec.kind]
        body: dict[str, Any] = {
            "model": SERVICE,
            "messages": [{"role": "user", "content": f"soak {rec.iid} one two three"}],
            "max_tokens": tokens,
            "token_delay": 0.01 if rec.kind == "plain" else 0.02,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=90)
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                json.dumps(body).encode(),
                {"Content-Type": "application/json", "inference-id": rec.iid},
            )
            resp = conn.getresponse()
            rec.status = resp.status
            if resp.status != 200:
                resp.read()
                rec.outcome = f"http-{resp.status}"
                return
            if not stream:
                data = resp.read()
                complete = json.loads(data).get("usage", {}).get("completion_tokens") == tokens
                rec.outcome = "ok" if complete else "cut"
                return
            events = 0
            while True:
                line = resp.readline()
                if not line:
                    rec.outcome = "cut"
                    return
                if line.startswith(b"data: "):
                    events += 1
                    if line.strip() == b"data: [DONE]":
                        rec.outcome = "ok"
                        return
                    if rec.kind == "hangup" and events >= 5:
                        if conn.sock is not None:
                            conn.sock.shutdown(socket.SHUT_RDWR)  # gone mid-answer, no goodbye
                        rec.outcome = "hung-up"
                        return
        finally:
            conn.close()


# --- the run -----------------------------------------------------------------------------


@dataclass
class Soak:
    opts: argparse.Namespace
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="saia-ts-")))
    run_id: str = field(default_factory=lambda: f"ts{uuid.uuid4().hex[:8]}")
    kills: list[tuple[float, str, int]] = field(default_factory=list)  # (time, side, pid)
    strays: list[int] = field(default_factory=list)  # login tunnels with no proxy session, before each kill
    login_seen: set[int] = field(default_factory=set)
    proxy_seen: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        os.chmod(self.root, 0o755)
        self.home = self.root / "home"
        self.home.mkdir()
        self.control_dir = tempfile.mkdtemp(prefix="sts", dir="/tmp")  # socket paths must stay short
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sshd_pid = 0
        self.cluster: Any = None

    # -- set-up ---------------------------------------------------------------------------
    def prepare_home(self) -> None:
        low = 30000 + random.randrange(0, 300) * 100
        minutes = int(self.opts.minutes) + 10
        script = self.root / "test-llm.sbatch"
        text = (REPO / "sbatch" / "test-llm.sbatch").read_text()
        text = text.replace("--time=00:30:00", f"--time={minutes // 60:02d}:{minutes % 60:02d}:00")
        # The job's environment is the tick's, begot by sshd's nearly empty one: name the
        # server and its interpreter here (after the #SBATCH lines, which end at the first command).
        text = text.replace(
            "set -euo pipefail\n",
            "set -euo pipefail\n"
            f"export TEST_LLM_SERVER={REPO / 'sbatch' / 'test_llm_server.py'}\n"
            f"export SAIA_TEST_PYTHON={PYTHON}\n",
            1,
        )
        script.write_text(text)
        script.chmod(0o755)
        (self.home / "saia.conf").write_text(
            f"SAIA_JOB_PREFIX={self.run_id}\nSAIA_PORT_RANGE={low}-{low + 99}\n"
            f"SAIA_SLURM_CONF={self.cluster.slurm_conf}\nSAIA_TICK_INTERVAL=2\nSAIA_PYTHON={PYTHON}\n"
        )
        svc = {
            "name": "Tunnel soak",
            "id": SERVICE,
            "owned_by": "bench",
            "input": ["text"],
            "output": ["text"],
            "sbatch": str(script),
            "inferences_per_instance": 1000,
            "minimum_number_instances": 1,
            "maximum_number_instances": 1,
            "job_expiry_time": f"{minutes}:00",
            "request_hold_time": 0,
        }
        (self.home / "config.json").write_text(json.dumps({"services": [svc]}))
        env = {**os.environ, "SAIA_HOME": str(self.home), "SLURM_CONF": self.cluster.slurm_conf}
        saia = str(VENV_BIN / "saia-ctl") if (VENV_BIN / "saia-ctl").exists() else "saia-ctl"
        for args in (["db", "upgrade"], ["init", "--config", str(self.home / "config.json")]):
            subprocess.run([saia, *args], env=env, check=True, capture_output=True, timeout=120)

    def start_proxy(self, sshd_port: int, key: Path) -> tuple[subprocess.Popen[bytes], int]:
        proc, port = start_proxy(  # bench/tunnel.py's, with a keep-alive that drives the ticks
            self.cluster, sshd_port, key, self.control_dir, self.root / "proxy.log", SESSIONS,
            keepalive_interval=2, log_level="warning", default_user="soak@uni", extra=("--timeout", "60"),
        )  # fmt: skip
        self.procs.append(proc)
        return proc, port

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.home / 'saia.db'}?mode=ro", uri=True, timeout=30)

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with closing(self.db()) as c:
                if c.execute("SELECT count(*) FROM jobs WHERE state='ready'").fetchone()[0]:
                    return
            time.sleep(1)
        raise RuntimeError(f"no backend job became ready within {timeout:g} s")

    # -- the killer and the watcher -----------------------------------------------------
    def watch(self, proxy_pid: int, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self.login_seen.update(login_tunnels(self.home))
            self.proxy_seen.update(proxy_tunnels(proxy_pid))

    def kill_times(self, start: float) -> list[float]:
        """When the kills fall: every ``kill_every`` s, the last one at least half an
        interval before the end, so the proxy has time to show it recovered."""
        every = self.opts.kill_every
        n = max(0, int((self.opts.minutes * 60 - every / 2) // every))
        return [start + k * every for k in range(1, n + 1)]

    def killer(self, proxy_pid: int, stop: threading.Event, times: list[float]) -> None:
        sides = itertools.cycle(("proxy", "login"))
        for at in times:
            if stop.wait(max(0.0, at - time.monotonic())):
                return
            # Strays: login-node tunnels beyond the proxy's live sessions, a kill interval
            # after the last kill (a session's shutdown waits for its handlers, a few s).
            self.strays.append(max(0, len(login_tunnels(self.home)) - len(proxy_tunnels(proxy_pid))))
            side = next(sides)
            for _ in range(50):  # a session may be reopening this instant
                pids = proxy_tunnels(proxy_pid) if side == "proxy" else login_tunnels(self.home)
                # The oldest session: the proxy fills the oldest one first, so it carries the
                # requests in flight (a newer one only the overflow, often nothing).
                victim = min(pids, key=started) if pids else 0
                if victim and kill(victim):
                    self.kills.append((time.monotonic(), side, victim))
                    break
                time.sleep(0.1)
            else:
                self.notes.append(f"no {side} tunnel to kill at {at:.0f}")

    # -- the whole -------------------------------------------------------------------------
    def run(self) -> list[Figure]:
        from tests.support.cluster import cluster_at, cluster_running

        given = Path(self.opts.cluster or os.environ.get("SAIA_TEST_CLUSTER") or "/tmp/saia-dev-cluster")
        if not cluster_running(given):
            print("bench/tunnel_soak.py: the dev cluster is not running; nothing measured", file=sys.stderr)
            return [Figure("tunnel_soak", "skipped: no dev cluster", None)]
        self.cluster = cluster_at(given.resolve(), owned=False)
        self.prepare_home()
        key = self.cluster.add_forced_key(f"SAIA_HOME={self.home} {REPO}/cloud_interface.sh")
        self.sshd_pid, sshd_port = start_sshd(self.cluster, self.root)  # bench/tunnel.py's
        proxy, port = self.start_proxy(sshd_port, key)
        t0 = time.monotonic()
        self.wait_ready()
        print(f"tunnel_soak: backend ready after {time.monotonic() - t0:.0f} s", file=sys.stderr)
        load = Load(port, self.opts.clients, self.run_id)
        stop = threading.Event()
        duration = self.opts.minutes * 60
        start = time.monotonic()
        times = self.kill_times(start)
        helpers = [
            threading.Thread(target=self.watch, args=(proxy.pid, stop), daemon=True),
            threading.Thread(target=self.killer, args=(proxy.pid, stop, times), daemon=True),
        ]
        load.start()
        for t in helpers:
            t.start()
        while time.monotonic() - start < duration:
            time.sleep(1)
        live_at_end = len(proxy_tunnels(proxy.pid))
        stop.set()
        load.join()
        for t in helpers:
            t.join(30)
        # The rows of a killed tunnel process are closed by a tick (the keep-alive's).
        open_rows = self.open_rows()
        deadline = time.monotonic() + 60
        while open_rows and time.monotonic() < deadline:
            time.sleep(1)
            open_rows = self.open_rows()
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
        left = home_processes(self.home)
        deadline = time.monotonic() + 40  # a tunnel waits up to 30 s for its handlers
        while (left or ssh_processes(self.control_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
            left = home_processes(self.home)
        left_ssh = ssh_processes(self.control_dir)
        for pid in left + left_ssh:
            self.notes.append(f"left behind: {_describe(pid)}")
        print(
            f"tunnel_soak: load ended; checks took {time.monotonic() - start - duration:.0f} s",
            file=sys.stderr,
        )
        return self.figures(load.sent, live_at_end, left, left_ssh, start, len(times))

    def open_rows(self) -> int:
        with closing(self.db()) as c:
            return int(c.execute("SELECT count(*) FROM requests WHERE ended_at IS NULL").fetchone()[0])

    def figures(
        self,
        sent: list[Sent],
        live_at_end: int,
        left: list[int],
        left_ssh: list[int],
        start: float,
        expected_kills: int,
    ) -> list[Figure]:
        with closing(self.db()) as c:
            rows = c.execute(
                "SELECT inference_id, outcome, ended_at, handler_pid, error FROM requests"
            ).fetchall()
        by_id: dict[str, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_id.setdefault(r[0], []).append(r)
        ids = {s.iid for s in sent}
        lost = [s for s in sent if s.status == 200 and s.iid not in by_id]
        phantom = [i for i in by_id if i not in ids]
        doubled = [i for i, rs in by_id.items() if len(rs) > 1]
        still_open = sum(1 for r in rows if r[2] is None)
        cross = Counter(
            (s.kind, s.outcome.split(" ")[0], (by_id[s.iid][0][1] or "open") if s.iid in by_id else "no row")
            for s in sent
        )
        last_kill = max((k[0] for k in self.kills), default=start)
        ok_after_last_kill = sum(1 for s in sent if s.outcome == "ok" and s.started > last_kill + 2)
        handler_pids = {r[3] for r in rows}
        closed_by_tick = sum(1 for r in rows if (r[4] or "").startswith("handler process gone"))
        kills = Counter(side for _, side, _ in self.kills)
        for (kind, outcome, row), n in sorted(cross.items()):
            print(f"tunnel_soak: {kind:6s} client {outcome:8s} row {row:8s} {n}", file=sys.stderr)
        for note in self.notes:
            print(f"tunnel_soak: {note}", file=sys.stderr)
        for s in lost[:5]:
            print(f"tunnel_soak: lost: {s}", file=sys.stderr)
        b = "tunnel_soak"
        client = Counter(s.outcome.split(" ")[0] for s in sent)
        seconds = self.opts.minutes * 60
        return [
            Figure(b, "requests sent", len(sent), "", goal=None),
            Figure(b, "requests per second", round(len(sent) / seconds, 1), "req/s"),
            Figure(b, "client: complete", client["ok"], ""),
            Figure(b, "client: hung up on purpose", client["hung-up"], ""),
            Figure(b, "client: cut or refused by a kill", client["cut"] + client["refused"], ""),
            Figure(b, "client: other HTTP status", sum(n for k, n in client.items() if k.startswith("http-")), ""),
            Figure(b, "sessions killed", len(self.kills), "", goal=f">= {expected_kills}",
                   ok=len(self.kills) >= expected_kills),
            Figure(b, "  of which ssh clients on the proxy's side", kills["proxy"], ""),
            Figure(b, "  of which tunnel processes on the login node", kills["login"], ""),
            Figure(b, "tunnel processes seen (login node)", len(self.login_seen), "",
                   goal=f">= {SESSIONS} + kills", ok=len(self.login_seen) >= SESSIONS + len(self.kills)),
            Figure(b, "handler pids in rows", len(handler_pids), ""),
            Figure(b, "proxy sessions live at the end", live_at_end, "", goal=f"= {SESSIONS}",
                   ok=live_at_end == SESSIONS),
            Figure(b, "requests complete after the last kill", ok_after_last_kill, "", goal=">= 1",
                   ok=ok_after_last_kill >= 1),
            Figure(b, "rows lost (answered 200, no row)", len(lost), "", goal="0", ok=not lost),
            Figure(b, "rows with no request sent, or doubled", len(phantom) + len(doubled), "", goal="0",
                   ok=not phantom and not doubled),
            Figure(b, "rows closed by the tick (handler gone)", closed_by_tick, ""),
            Figure(b, "rows left open", still_open, "", goal="0", ok=still_open == 0),
            Figure(b, "stray tunnel processes before a kill (max)", max(self.strays, default=0), "",
                   goal="0", ok=max(self.strays, default=0) == 0),
            Figure(b, "login-node processes left behind", len(left), "", goal="0", ok=not left),
            Figure(b, "proxy-side ssh processes left behind", len(left_ssh), "", goal="0", ok=not left_ssh),
        ]  # fmt: skip

    def cleanup(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.sshd_pid:
            for pid in [self.sshd_pid, *descendants(self.sshd_pid)]:
                kill(pid)
        if self.cluster is not None:
            env = {**os.environ, "SLURM_CONF": self.cluster.slurm_conf}
            try:
                out = subprocess.run(
                    ["squeue", "-h", "-o", "%i %j"], env=env, capture_output=True, text=True, timeout=60
                ).stdout
                ids = [
                    ln.split()[0]
                    for ln in out.splitlines()
                    if ln.split()[1:2] and ln.split()[1].startswith(self.run_id)
                ]
                if ids:
                    subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                pass
            self.cluster.remove_test_keys()
        if self.opts.keep:
            print(f"tunnel_soak: state kept in {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)


def _describe(pid: int) -> str:
    cmd = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return f"{pid} {cmd[:100]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    ap.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills (default 30)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--cluster", help="a running dev cluster's directory (default: $SAIA_TEST_CLUSTER)")
    ap.add_argument("--keep", action="store_true", help="keep the run's state directory")
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last")
    opts = ap.parse_args(argv)
    if opts.minutes <= 0 or opts.kill_every <= 0 or opts.clients < 1:
        ap.error("--minutes and --kill-every must be positive, --clients at least 1")
    soak = Soak(opts)
    try:
        figures = soak.run()
    finally:
        soak.cleanup()
    report(figures, opts.json)
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
