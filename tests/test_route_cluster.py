"""The request path through the real sshd (forced command ``cloud_interface.sh``)
into a real Slurm job of the test service (``sbatch/test-llm.sbatch``).

The job is submitted here (as the scheduler would: row first, name
``{prefix}_{id}_{service}``, secret in the environment) and marked ready once
``GET /`` answers, so these tests do not depend on the scheduler.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import service_config
from tests.support.net import free_block
from tests.support.paths import REPO
from tests.support.wire import chat_body, command, parse_as_proxy, rows

pytestmark = pytest.mark.cluster

SERVICE = "llm-route"


class LiveJob:
    def __init__(self, db: Path, job_id: int, slurm_id: int, node: str, port: int, secret: str) -> None:
        self.db, self.id, self.slurm_id, self.node, self.port, self.secret = (
            db,
            job_id,
            slurm_id,
            node,
            port,
            secret,
        )


def _submit(home: Path, settings: Any, port: int) -> LiveJob:
    from saia_ctl.scheduler.names import job_name
    from saia_ctl.slurm import RealSlurm

    db = home / "saia.db"
    secret = secrets.token_urlsafe(32)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        cur = conn.execute(
            "INSERT INTO jobs (name, service_id, state, port, secret, submitted_at, gpus, health_failures)"
            " VALUES (?, ?, 'submitting', ?, ?, ?, 0, 0)",
            (f"tmp-{uuid.uuid4().hex}", SERVICE, port, secret, time.time()),
        )
        job_id = cur.lastrowid
        assert job_id is not None
        name = job_name(settings.job_prefix, job_id, SERVICE)
        conn.execute("UPDATE jobs SET name = ? WHERE id = ?", (name, job_id))
    finally:
        conn.close()
    (home / "jobs").mkdir(exist_ok=True)
    slurm_id = RealSlurm(settings).submit(
        str(REPO / "sbatch" / "test-llm.sbatch"),
        name=name,
        port=port,
        env={"SAIA_API_KEY": secret, "SAIA_TEST_PYTHON": sys.executable, "TEST_LLM_TOKEN_DELAY": "0.002"},
        workdir=str(home / "jobs"),
        output=str(home / "jobs" / "%j.out"),
    )
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("UPDATE jobs SET slurm_job_id = ?, state = 'pending' WHERE id = ?", (slurm_id, job_id))
    finally:
        conn.close()
    return LiveJob(db, job_id, slurm_id, "", port, secret)


def _job_state(job: LiveJob) -> str:
    """What Slurm says of the job and the tail of its output (why it never answered)."""
    conf = job.db.parent / "saia.conf"
    slurm_conf = [
        ln.partition("=")[2] for ln in conf.read_text().splitlines() if ln.startswith("SAIA_SLURM_CONF=")
    ]
    env = {**os.environ, **({"SLURM_CONF": slurm_conf[0]} if slurm_conf else {})}
    try:
        show = subprocess.run(
            ["scontrol", "show", "job", "-o", str(job.slurm_id)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        state = (show.stdout or show.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        state = f"(scontrol: {e})"
    out = job.db.parent / "jobs" / f"{job.slurm_id}.out"
    try:
        tail = "\n".join(out.read_text(errors="replace").splitlines()[-20:])
    except OSError as e:
        tail = f"({e})"
    return f"scontrol: {state}\n--- {out.name} ---\n{tail}"


def _wait_ready(job: LiveJob, node: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{node}:{job.port}/", timeout=2) as r:
                if r.status < 500:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        raise AssertionError(f"job {job.slurm_id} did not answer GET / in {timeout} s\n{_job_state(job)}")
    job.node = node
    conn = sqlite3.connect(job.db, isolation_level=None)
    try:
        conn.execute(
            "UPDATE jobs SET state = 'ready', node = ?, started_at = ?, ready_at = ? WHERE id = ?",
            (node, time.time(), time.time(), job.id),
        )
    finally:
        conn.close()


def _cancel(job: LiveJob, cluster: Any) -> None:
    subprocess.run(
        ["scancel", str(job.slurm_id)], env={**os.environ, "SLURM_CONF": cluster.slurm_conf}, check=False
    )


@pytest.fixture(scope="module")
def world(
    cluster: Any, tmp_path_factory: pytest.TempPathFactory, template_db: Path
) -> Iterator[dict[str, Any]]:
    """A state dir with the test service, one ready real job, and an SSH key forced to our interface."""
    from saia_ctl.config import apply_config, load_config
    from saia_ctl.db import engine_for, write_session
    from saia_ctl.settings import Settings

    home = tmp_path_factory.mktemp("route-cluster") / "home"
    home.mkdir()
    shutil.copy(template_db, home / "saia.db")
    low = free_block()  # a job's server binds all interfaces: outside the ephemeral range
    (home / "saia.conf").write_text(
        f"SAIA_JOB_PREFIX=r{uuid.uuid4().hex[:8]}\nSAIA_PORT_RANGE={low}-{low + 49}\n"
        f"SAIA_SLURM_CONF={cluster.slurm_conf}\nSAIA_PYTHON=/bin/true\n"  # no real tick: it would scale max-0 jobs down
    )
    settings = Settings(home=str(home), environ={})
    engine = engine_for(settings)
    cfg = home / "config.json"
    cfg.write_text(
        json.dumps(
            {"services": [service_config(SERVICE, minimum_number_instances=0, maximum_number_instances=0)]}
        )
    )
    services, _ = load_config(str(cfg))
    with write_session(engine) as s:
        apply_config(s, services)
    job = _submit(home, settings, low)
    jobs = [job]
    try:
        _wait_ready(job, cluster.node)
        key = cluster.add_forced_key(f"SAIA_HOME={home} {REPO}/cloud_interface.sh")
        yield {"home": home, "settings": settings, "job": job, "key": key, "jobs": jobs, "port": low}
    finally:
        for j in jobs:
            _cancel(j, cluster)


def ssh(cluster: Any, world: dict[str, Any], cmd: bytes, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*cluster.ssh_argv(world["key"]), cmd.decode()],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def test_direct_request_without_the_secret_is_refused(cluster: Any, world: dict[str, Any]) -> None:
    job = world["job"]
    url = f"http://{job.node}:{job.port}/v1/chat/completions"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
            urllib.request.Request(url, data=chat_body(), headers={"content-type": "application/json"})
        )
    assert e.value.code == 401
    ok = urllib.request.Request(
        url,
        data=chat_body(),
        headers={"content-type": "application/json", "Authorization": f"Bearer {job.secret}"},
    )
    with urllib.request.urlopen(ok) as r:
        assert r.status == 200


def test_chat_completions_through_ssh_arrive_intact_and_are_recorded(
    cluster: Any, world: dict[str, Any]
) -> None:
    home, job = world["home"], world["job"]
    headers = {"content-type": "application/json", "authorization": "Bearer the-users-key"}
    iid = f"c-{uuid.uuid4().hex}"
    r = ssh(
        cluster,
        world,
        command(
            iid,
            "alice@uni-x.de",
            SERVICE,
            "/v1/chat/completions",
            headers=headers,
            body=chat_body(max_tokens=12),
        ),
    )
    status, _, body = parse_as_proxy(r.stdout)
    doc = json.loads(body)
    assert status == 200 and doc["usage"]["completion_tokens"] == 12
    [row] = rows(home / "saia.db", "inference_id = ?", (iid,))
    assert (row["user_id"], row["service_id"], row["job_id"], row["status"], row["outcome"]) == (
        "alice@uni-x.de", SERVICE, job.id, 200, "ok",
    )  # fmt: skip
    assert (row["input_tokens"], row["output_tokens"]) == (doc["usage"]["prompt_tokens"], 12)
    assert row["bytes_out"] == len(body) and row["bytes_in"] == len(chat_body(max_tokens=12))

    iid = f"s-{uuid.uuid4().hex}"
    body_s = chat_body(True, max_tokens=9, stream_options={"include_usage": True})
    r = ssh(
        cluster, world, command(iid, "bob", SERVICE, "/v1/chat/completions", headers=headers, body=body_s)
    )
    status, _hdrs, out = parse_as_proxy(r.stdout)
    events = [e[6:] for e in out.split(b"\n\n") if e]
    assert status == 200 and events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 9 and not chunks[-1]["choices"]
    assert len([c for c in chunks if c["choices"]]) >= 9
    [row] = rows(home / "saia.db", "inference_id = ?", (iid,))
    assert (row["outcome"], row["output_tokens"], row["bytes_out"]) == ("ok", 9, len(out))


def test_sse_chunks_arrive_through_ssh_before_the_answer_ends(cluster: Any, world: dict[str, Any]) -> None:
    body = chat_body(True, max_tokens=10, token_delay=0.2)
    cmd = command(
        f"t-{uuid.uuid4().hex}",
        "u",
        SERVICE,
        "/v1/chat/completions",
        headers={"content-type": "application/json"},
        body=body,
    )
    start = time.monotonic()
    p = subprocess.Popen(
        [*cluster.ssh_argv(world["key"]), cmd.decode()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert p.stdout is not None
    buf, first = b"", None
    while chunk := os.read(p.stdout.fileno(), 65536):
        buf += chunk
        if first is None and b"data: " in buf:
            first = time.monotonic() - start
    p.wait(30)
    total = time.monotonic() - start
    assert first is not None and total >= 2.0
    assert first < total - 1.5, (first, total)  # 10 tokens x 0.2 s: the first came long before the end


def test_ssh_client_killed_mid_stream_closes_the_row_as_aborted(cluster: Any, world: dict[str, Any]) -> None:
    home = world["home"]
    iid = f"k-{uuid.uuid4().hex}"
    body = chat_body(True, max_tokens=200, token_delay=0.05)
    cmd = command(
        iid, "u", SERVICE, "/v1/chat/completions", headers={"content-type": "application/json"}, body=body
    )
    p = subprocess.Popen(
        [*cluster.ssh_argv(world["key"]), cmd.decode()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert p.stdout is not None
    assert os.read(p.stdout.fileno(), 65536).startswith(b"HTTP/1.1 200")
    p.kill()
    p.wait(10)
    deadline = time.time() + 15
    while time.time() < deadline:
        [row] = rows(home / "saia.db", "inference_id = ?", (iid,))
        if row["ended_at"] is not None:
            break
        time.sleep(0.1)
    assert (
        row["outcome"] == "aborted" and row["ended_at"] - row["started_at"] < 9
    )  # not the whole 10 s answer


def test_backend_job_cancelled_mid_stream_truncates_and_records_error(
    cluster: Any, world: dict[str, Any]
) -> None:
    home, settings = world["home"], world["settings"]
    # A second job of the same service; the first is made to look busy so this one is chosen.
    job = _submit(home, settings, world["port"] + 1)
    world["jobs"].append(job)
    _wait_ready(job, cluster.node)
    conn = sqlite3.connect(home / "saia.db", isolation_level=None)
    conn.execute("UPDATE jobs SET state = 'draining' WHERE id = ?", (world["job"].id,))
    try:
        iid = f"x-{uuid.uuid4().hex}"
        body = chat_body(True, max_tokens=100, token_delay=0.05)
        cmd = command(
            iid, "u", SERVICE, "/v1/chat/completions", headers={"content-type": "application/json"}, body=body
        )
        p = subprocess.Popen(
            [*cluster.ssh_argv(world["key"]), cmd.decode()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert p.stdout is not None
        got = os.read(p.stdout.fileno(), 65536)
        assert got.startswith(b"HTTP/1.1 200")
        _cancel(job, cluster)
        rest = p.stdout.read()
        p.wait(30)
    finally:
        # What the scheduler's next tick records: the cancelled job ended, the first one back.
        conn.execute("UPDATE jobs SET state = 'ended', ended_at = ? WHERE id = ?", (time.time(), job.id))
        conn.execute("UPDATE jobs SET state = 'ready' WHERE id = ?", (world["job"].id,))
        conn.close()
    out = (got + rest).partition(b"\r\n\r\n")[2]
    assert b"[DONE]" not in out and out.count(b"data: ") < 100
    [row] = rows(home / "saia.db", "inference_id = ?", (iid,))
    assert (row["job_id"], row["status"], row["outcome"]) == (job.id, 200, "error")
    assert "mid-answer" in row["error"]


def test_keep_alive_and_status_through_ssh(cluster: Any, world: dict[str, Any]) -> None:
    r = ssh(cluster, world, b"status")
    doc = json.loads(r.stdout)
    [svc] = [s for s in doc["services"] if s["id"] == SERVICE]
    assert svc["state"] == "ready" and svc["ready"] >= 1
    r = ssh(cluster, world, b"keep-alive")  # bench/request_path.py times it
    assert r.stdout == b"OK\n"
    r = ssh(cluster, world, b"id\nuser\nsvc\n/../x\n -X GET -d ")
    assert parse_as_proxy(r.stdout)[0] == 400


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_32_clients_x_50_requests_through_ssh(cluster: Any, world: dict[str, Any], tmp_path: Path) -> None:
    """The load test once more through the real sshd (one multiplexed SSH connection per client)."""
    import threading

    home = world["home"]
    clients, per_client = 32, 50
    prefix = f"ssh-load-{uuid.uuid4().hex[:8]}"
    failures: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def mux(c: int) -> list[str]:
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={tmp_path}/cm-{c}", "-o", "ControlPersist=60"]

    def client(c: int) -> None:
        for i in range(per_client):
            body = chat_body(i % 5 == 0, max_tokens=3, stream_options={"include_usage": True})
            cmd = command(f"{prefix}-{c}-{i}", f"user{c}", SERVICE, "/v1/chat/completions",
                          headers={"content-type": "application/json"}, body=body)  # fmt: skip
            try:
                r = subprocess.run([*cluster.ssh_argv(world["key"], *mux(c)), cmd.decode()],
                                   capture_output=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
                status = parse_as_proxy(r.stdout)[0]
            except Exception as e:  # collected and reported below
                with lock:
                    failures.append(f"{c}-{i}: {e!r}")
                continue
            with lock:
                statuses.append(status)
                # Only our own lines count: root's login shell on this machine (pyenv in
                # .bashrc, which bash reads under sshd) may print its own noise.
                if b"saia-ctl" in r.stderr or b"Traceback" in r.stderr or b"locked" in r.stderr:
                    failures.append(f"{c}-{i}: stderr {r.stderr[:200]!r}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in range(clients):
            subprocess.run(
                [*cluster.ssh_argv(world["key"], *mux(c), "-O", "exit")], capture_output=True, timeout=30
            )
    assert failures == [], failures[:5]
    assert len(statuses) == clients * per_client and set(statuses) == {200}
    got = rows(home / "saia.db", "inference_id LIKE ?", (f"{prefix}-%",))
    assert len(got) == clients * per_client
    assert {r["outcome"] for r in got} == {"ok"} and all(r["output_tokens"] == 3 for r in got)
    log = home / "logs" / "route.log"
    assert not log.exists() or "locked" not in log.read_text()
