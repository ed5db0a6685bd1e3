"""The general fixtures (wired in by ``conftest.py``): a migrated temporary state
directory, its settings and engine, a controllable clock, service configs."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.db import engine_for
from saia_ctl.migrate import upgrade
from saia_ctl.settings import Settings
from tests.support.net import free_block
from tests.support.paths import REPO

__all__ = [
    "Clock",
    "clock",
    "engine",
    "home",
    "import_services",
    "service_config",
    "settings",
    "template_db",
    "write_config",
]


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated to head once per session; tests get copies."""
    home = tmp_path_factory.mktemp("template-home")
    settings = Settings(home=str(home), environ={})
    upgrade(engine_for(settings))
    return home / "saia.db"


class Clock:
    """A controllable clock (epoch seconds)."""

    def __init__(self, start: float = 1_780_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def home(tmp_path: Path, template_db: Path) -> Iterator[Path]:
    """A migrated state directory; SAIA_HOME points at it for the test.

    It has its own job-name prefix and port block (in ``saia.conf``), and the
    real cluster's SLURM_CONF when a cluster is up.
    """
    h = tmp_path / "home"
    h.mkdir()
    shutil.copy(template_db, h / "saia.db")
    # 50 ports per test home, free now and below the ephemeral range (a real job binds them)
    low = free_block()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    lines = [f"SAIA_JOB_PREFIX={prefix}", f"SAIA_PORT_RANGE={low}-{low + 49}"]
    slurm_conf = os.environ.get("SLURM_CONF")
    if slurm_conf:
        lines.append(f"SAIA_SLURM_CONF={slurm_conf}")
    (h / "saia.conf").write_text("\n".join(lines) + "\n")
    old = os.environ.get("SAIA_HOME")
    os.environ["SAIA_HOME"] = str(h)
    try:
        yield h
    finally:
        if old is None:
            os.environ.pop("SAIA_HOME", None)
        else:
            os.environ["SAIA_HOME"] = old
        if slurm_conf and os.path.exists(slurm_conf):
            _wait_for_ticks_of(h)
            # A test may have broken saia.conf on purpose: the clean-up uses the home's own.
            (h / "saia.conf").write_text("\n".join(lines) + "\n")
            _cancel_jobs_of(h)


def _wait_for_ticks_of(home: Path, timeout: float = 30.0) -> None:
    """Wait for ticks that keep-alive spawned for this home (detached; they may still submit)."""
    marker = f"SAIA_HOME={home}".encode() + b"\0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = False
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if (
                    b"saia_ctl.scheduler" in (proc / "cmdline").read_bytes()
                    and marker in (proc / "environ").read_bytes()
                ):
                    running = True
                    break
            except OSError:
                continue
        if not running:
            return
        time.sleep(0.2)


def _cancel_jobs_of(home: Path) -> None:
    """Cancel, on the real cluster, every live job named with this home's prefix."""
    import warnings

    from saia_ctl.slurm import RealSlurm, SlurmError

    settings = Settings(home=str(home))
    slurm = RealSlurm(settings)
    try:
        for job in slurm.queue(settings.job_prefix):
            if not job.is_finished:
                slurm.cancel(job.job_id)
    except SlurmError as e:
        warnings.warn(f"could not cancel the jobs of {settings.job_prefix}: {e}", stacklevel=1)


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=str(home))


@pytest.fixture
def engine(settings: Settings) -> Any:
    return engine_for(settings)


def service_config(sid: str = "example-service", **overrides: Any) -> dict[str, Any]:
    """One service object in the original config.json format."""
    svc: dict[str, Any] = {
        "name": f"Service {sid}",
        "id": sid,
        "owned_by": "saia-tests",
        "input": ["text"],
        "output": ["text"],
        "sbatch": str(REPO / "sbatch" / "test-llm.sbatch"),
        "inferences_per_instance": 1,
        "maximum_number_instances": 3,
        "minimum_number_instances": 1,
        "job_expiry_time": "9:00",
    }
    svc.update(overrides)
    return svc


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config.json with the given service objects; returns its path."""

    def write(*services: dict[str, Any], name: str = "config.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"services": list(services)}, indent=2))
        return path

    return write


@pytest.fixture
def import_services(engine: Any, write_config: Callable[..., Path]) -> Callable[..., None]:
    """Import service objects into the test database, as `saia-ctl init` does."""
    from saia_ctl.config import apply_config, load_config
    from saia_ctl.db import write_session

    def do(*services: dict[str, Any]) -> None:
        cfgs, _ = load_config(str(write_config(*services)))
        with write_session(engine) as s:
            apply_config(s, cfgs)

    return do
