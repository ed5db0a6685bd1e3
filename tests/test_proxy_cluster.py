"""The proxy against the real thing: openai client → proxy → real sshd → cloud_interface.sh → Slurm job.

Each test imports its services into its own state directory (``home``) and
reaches it with a forced-command key of its own. The failure test runs a
private sshd (same host key and authorized_keys as the cluster's, its own
port) so stopping it never disturbs other tests sharing the dev cluster.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from saia_ctl.proxy.config import ProxyConfig
from saia_ctl.proxy.server import Proxy, running_in_thread
from tests.support.fixtures import service_config
from tests.support.net import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parent.parent


def _options(argv: list[str]) -> tuple[str, ...]:
    return tuple(argv[i + 1] for i, w in enumerate(argv) if w == "-o")


@pytest.fixture
def forced_key(cluster: Any, home: Path) -> Path:
    key: Path = cluster.add_forced_key(f"SAIA_HOME={home} {REPO}/cloud_interface.sh")
    return key


@pytest.fixture
def control_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="spx", dir="/tmp")  # socket paths must stay short
    yield d
    for name in os.listdir(d):
        subprocess.run(["rm", "-f", os.path.join(d, name)], check=False)
    os.rmdir(d)


def proxy_config(cluster: Any, key: Path, control_dir: str, **kw: Any) -> ProxyConfig:
    argv = cluster.ssh_argv(key)
    base: dict[str, Any] = {
        "ssh_host": "127.0.0.1",
        "port": 0,
        "ssh_port": cluster.ssh_port,
        "ssh_user": cluster.ssh_user,
        "ssh_key": str(key),
        "ssh_options": tuple(o for o in _options(argv) if not o.startswith(("BatchMode", "IdentitiesOnly"))),
        "control_dir": control_dir,
        "pool_size": 2,
        "keepalive_interval": 1.0,
        "timeout": 60,
        "models_ttl": 0.0,
    }
    base.update(kw)
    return ProxyConfig(**base)


@contextmanager
def running(cfg: ProxyConfig) -> Iterator[tuple[Proxy, str]]:
    with running_in_thread(cfg) as pb:
        yield pb


def client(base: str, user: str = "alice@uni.de") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base + "/v1",
        api_key="none",
        default_headers={"X-Consumer-Custom-ID": user},
        max_retries=0,
        timeout=90,
    )


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def model_status(c: openai.OpenAI, sid: str) -> str:
    for m in c.models.list():
        if m.id == sid:
            return str((m.model_extra or {})["status"])
    return "absent"


def rows(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(home / "saia.db", timeout=30)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def cancel_jobs(home: Path, cluster: Any) -> None:
    """Cancel every Slurm job of this test home (its unique job-name prefix)."""
    prefix = next(
        line.split("=", 1)[1]
        for line in (home / "saia.conf").read_text().splitlines()
        if line.startswith("SAIA_JOB_PREFIX=")
    )
    env = {**os.environ, **cluster.env}
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j"], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    ids = [
        i
        for i, _, name in (line.partition(" ") for line in out.splitlines())
        if name.startswith(prefix + "_")
    ]
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=60)


@pytest.fixture
def jobs_cancelled(cluster: Any, home: Path) -> Iterator[None]:
    yield
    cancel_jobs(home, cluster)


def test_keepalive_status_and_models_through_real_sshd(
    cluster: Any, home: Path, import_services: Any, forced_key: Path, control_dir: str, jobs_cancelled: None
) -> None:
    import_services(service_config("idle-svc", minimum_number_instances=0, maximum_number_instances=0))
    with running(proxy_config(cluster, forced_key, control_dir)) as (p, base):
        c = client(base)
        wait_for(lambda: p.keepalive.ok is True, 30, "a keep-alive OK")
        models = list(c.models.list())
        assert [(m.id, (m.model_extra or {})["status"], m.owned_by) for m in models] == [
            ("idle-svc", "offline", "saia-tests")
        ]
        wait_for(lambda: all(s.alive for s in p.pool.slots), 30, "every slot's master")
        # every slot multiplexes: its control socket exists and answers -O check
        for slot in p.pool.slots:
            check = subprocess.run(
                p.pool.argv(slot, None, "-O", "check"), capture_output=True, text=True, timeout=10
            )
            assert check.returncode == 0 and "Master running" in check.stderr
        # an unknown service is the cluster's 404, in the proxy's hands a plain pass-through
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def _master_pid(p: Proxy, n: int) -> int | None:
    """The pid of slot n's master (None: no master, or one that does not answer)."""
    try:
        check = subprocess.run(
            p.pool.argv(p.pool.slots[n], None, "-O", "check"), capture_output=True, text=True, timeout=3
        )
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"pid=(\d+)", check.stderr)
    return int(m.group(1)) if m else None


def test_dead_and_hung_masters_are_replaced(
    cluster: Any, home: Path, import_services: Any, forced_key: Path, control_dir: str, jobs_cancelled: None
) -> None:
    import_services(service_config("idle-svc", minimum_number_instances=0, maximum_number_instances=0))
    cfg = proxy_config(
        cluster, forced_key, control_dir, pool_size=1, keepalive_interval=0.5, control_timeout=3.0
    )
    with running(cfg) as (p, base):
        c = client(base)
        slot = p.pool.slots[0]
        wait_for(lambda: slot.alive is True and _master_pid(p, 0) is not None, 30, "the master")
        # a master killed outright leaves a stale socket: the next session still gets through
        first = _master_pid(p, 0)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert model_status(c, "idle-svc") == "offline"
        wait_for(lambda: _master_pid(p, 0) not in (None, first), 20, "a new master")
        # a master that hangs (link gone, no RST): keep-alive times out, the slot is reset
        hung = _master_pid(p, 0)
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        try:
            wait_for(lambda: p.keepalive.ok is False, 20, "keep-alive to notice")
            # meanwhile sessions bypass the slot being reset, so requests keep working
            assert model_status(c, "idle-svc") == "offline"
            wait_for(lambda: not p.pool.resetting(slot) and slot.alive is True, 30, "the slot to be replaced")
            assert model_status(c, "idle-svc") == "offline"
            assert p.keepalive.ok is True
            assert _master_pid(p, 0) not in (None, hung)
        finally:
            os.kill(hung, signal.SIGKILL)
            os.kill(hung, signal.SIGCONT)


# -- a private sshd that can be stopped -------------------------------------------------


class PrivateSshd:
    def __init__(self, cluster: Any, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.config = root / "sshd_config"
        self.pidfile = root / "sshd.pid"
        self.log = root / "sshd.log"
        lines = []
        for line in (cluster.dir / "ssh" / "sshd_config").read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key in ("Port", "PidFile"):
                continue
            lines.append(line)
        lines += [f"Port {self.port}", f"PidFile {self.pidfile}"]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        subprocess.run(
            ["/usr/sbin/sshd", "-f", str(self.config), "-E", str(self.log)], check=True, timeout=30
        )
        wait_for(self.listening, 10, "sshd to listen")

    def listening(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """As a reboot would: the listener and every session it serves."""
        if not self.pidfile.exists():
            return
        pid = int(self.pidfile.read_text().split()[0])
        victims = [pid, *_descendants(pid)]
        for v in victims:
            try:
                os.kill(v, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pidfile.unlink(missing_ok=True)
        wait_for(lambda: not self.listening(), 10, "sshd to stop")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.fixture
def private_sshd(cluster: Any, tmp_path: Path) -> Iterator[PrivateSshd]:
    sshd = PrivateSshd(cluster, tmp_path)
    sshd.start()
    try:
        yield sshd
    finally:
        sshd.stop()


def test_sshd_down_is_502_within_the_timeout_then_recovers(
    cluster: Any,
    home: Path,
    import_services: Any,
    forced_key: Path,
    control_dir: str,
    private_sshd: PrivateSshd,
    caplog: pytest.LogCaptureFixture,
    jobs_cancelled: None,
) -> None:
    import_services(service_config("idle-svc", minimum_number_instances=0, maximum_number_instances=0))
    cfg = proxy_config(
        cluster, forced_key, control_dir, ssh_port=private_sshd.port, connect_timeout=5, timeout=20
    )
    with running(cfg) as (p, base):
        c = client(base)
        wait_for(lambda: all(s.alive for s in p.pool.slots), 30, "every master")
        with pytest.raises(openai.NotFoundError):  # the link works: the cluster answers (404)
            c.chat.completions.create(model="nope", messages=[])
        private_sshd.stop()
        with caplog.at_level(logging.WARNING, logger="saia_ctl.proxy"):
            for _ in range(3):  # each slot, and again
                t0 = time.monotonic()
                with pytest.raises(openai.InternalServerError) as e:
                    c.chat.completions.create(model="nope", messages=[])
                assert e.value.status_code == 502 and time.monotonic() - t0 < cfg.connect_timeout + 5
                assert "Connection refused" in str(e.value) or "closed" in str(e.value)
        assert any("ssh" in r.getMessage().lower() and r.levelno >= logging.WARNING for r in caplog.records)
        private_sshd.start()
        wait_for(lambda: p.keepalive.ok is True, 30, "keep-alive back")
        with pytest.raises(openai.NotFoundError):  # through again, same proxy
            c.chat.completions.create(model="nope", messages=[])
        assert model_status(c, "idle-svc") == "offline"


# -- with real backend jobs ---------------------------------------------------------------------


def _expected_prompt_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_openai_client_end_to_end_with_records(
    cluster: Any, home: Path, import_services: Any, forced_key: Path, control_dir: str, jobs_cancelled: None
) -> None:
    import_services(service_config("e2e-llm", minimum_number_instances=1, maximum_number_instances=1))
    with running(proxy_config(cluster, forced_key, control_dir)) as (_p, base):
        c = client(base, "alice@uni.de")
        wait_for(lambda: model_status(c, "e2e-llm") == "ready", 120, "the job to be ready", step=0.5)
        msgs = [{"role": "user", "content": "one two three"}]
        plain = c.chat.completions.with_raw_response.create(
            model="e2e-llm",
            messages=msgs,
            max_tokens=5,
            extra_headers={"inference-id": "e2e-plain-1"},  # type: ignore[arg-type]
        )
        answer = plain.parse()
        assert answer.usage is not None
        streamed = list(
            c.chat.completions.create(
                model="e2e-llm",
                messages=msgs,
                max_tokens=7,
                stream=True,
                extra_headers={"inference-id": "e2e-stream-1"},  # type: ignore[arg-type]
            )
        )
        with_usage = list(
            client(base, "bob").chat.completions.create(
                model="e2e-llm",
                messages=msgs,
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[arg-type]
                extra_headers={"inference-id": "e2e-stream-2"},
            )
        )
    assert answer.choices[0].message.content
    assert all(ch.choices for ch in streamed)  # no usage-only chunk: the client did not ask
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed)
    assert text
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    got = {
        r[0]: r[1:]
        for r in rows(
            home,
            "SELECT inference_id, user_id, service_id, status, outcome, input_tokens, output_tokens, job_id"
            " FROM requests WHERE inference_id LIKE 'e2e-%'",
        )
    }
    prompt = _expected_prompt_tokens(msgs)
    assert got["e2e-plain-1"][:6] == (
        "alice@uni.de",
        "e2e-llm",
        200,
        "ok",
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    # tokens of a stream the client asked no usage for are still recorded (the proxy asked for it)
    assert got["e2e-stream-1"][:6] == ("alice@uni.de", "e2e-llm", 200, "ok", prompt, 7)
    assert got["e2e-stream-2"][:6] == (
        "bob",
        "e2e-llm",
        200,
        "ok",
        with_usage[-1].usage.prompt_tokens,
        with_usage[-1].usage.completion_tokens,
    )
    assert all(v[6] is not None for v in got.values())
    # the monthly report agrees with what the clients saw
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from saia_ctl.cli.main import run; run()",
            "report",
            "--by",
            "user",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "SAIA_HOME": str(home)},
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout[out.stdout.index("{") : out.stdout.rindex("}") + 1])
    per_user = {u.get("user") or u.get("user_id"): u for u in doc["users"]}
    alice = (answer.usage.prompt_tokens + prompt, answer.usage.completion_tokens + 7)
    assert (
        per_user["alice@uni.de"]["requests"],
        per_user["alice@uni.de"]["input_tokens"],
        per_user["alice@uni.de"]["output_tokens"],
    ) == (2, *alice)
    assert per_user["bob"]["output_tokens"] == with_usage[-1].usage.completion_tokens


def test_scale_to_zero_first_request_waits_and_models_show_the_start(
    cluster: Any, home: Path, import_services: Any, forced_key: Path, control_dir: str, jobs_cancelled: None
) -> None:
    import_services(
        service_config(
            "cold-llm", minimum_number_instances=0, maximum_number_instances=1, request_hold_time=60
        )
    )
    with running(proxy_config(cluster, forced_key, control_dir, keepalive_interval=1.0)) as (_, base):
        c = client(base)
        assert model_status(c, "cold-llm") == "offline"
        seen: list[str] = []
        result: dict[str, Any] = {}

        def first_request() -> None:
            try:
                result["answer"] = c.chat.completions.create(
                    model="cold-llm", messages=[{"role": "user", "content": "wake up"}], max_tokens=3
                )
            except Exception as e:  # reported below
                result["error"] = e

        t = threading.Thread(target=first_request)
        t0 = time.monotonic()
        t.start()
        while t.is_alive() and time.monotonic() - t0 < 120:
            state = model_status(c, "cold-llm")
            if not seen or seen[-1] != state:
                seen.append(state)
            time.sleep(0.1)
        t.join(5)
        final = model_status(c, "cold-llm")
        if seen[-1] != final:
            seen.append(final)
    assert "error" not in result, result.get("error")
    assert result["answer"].choices[0].message.content
    assert "starting" in seen and seen[-1] == "ready", seen
    assert seen.index("starting") < seen.index("ready")


def test_fifty_concurrent_streaming_clients(
    cluster: Any, home: Path, import_services: Any, forced_key: Path, control_dir: str, jobs_cancelled: None
) -> None:
    import_services(
        service_config(
            "many-llm", minimum_number_instances=1, maximum_number_instances=1, inferences_per_instance=100
        )
    )
    with running(proxy_config(cluster, forced_key, control_dir, pool_size=4)) as (p, base):
        c = client(base)
        wait_for(lambda: model_status(c, "many-llm") == "ready", 120, "the job to be ready", step=0.5)

        def one(n: int) -> tuple[str, int]:
            iid = f"many-{n:03d}"
            stream = client(base, f"user{n % 5}").chat.completions.create(
                model="many-llm",
                messages=[{"role": "user", "content": "a b"}],
                max_tokens=8,
                stream=True,
                extra_headers={"inference-id": iid},
            )
            chunks = [ch for ch in stream if ch.choices]
            return iid, len(chunks)

        with concurrent.futures.ThreadPoolExecutor(50) as ex:
            results = list(ex.map(one, range(50)))
    assert len(results) == 50 and all(n >= 8 for _, n in results)
    recorded = rows(
        home,
        "SELECT count(*), sum(outcome = 'ok'), sum(output_tokens) FROM requests WHERE inference_id LIKE 'many-%'",
    )[0]
    assert recorded == (50, 50, 50 * 8)
    body = json.dumps(p.pool.snapshot())
    assert body
