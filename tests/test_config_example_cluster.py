"""The original SAIA example (config.json + ./sbatch/example-service.sbatch) runs for real."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from saia_ctl.config import apply_config, load_config
from saia_ctl.db import write_session
from saia_ctl.scheduler import run_tick
from saia_ctl.scheduler.tick import make_slurm
from saia_ctl.settings import Settings
from tests.support.paths import REPO


@pytest.mark.cluster
def test_original_example_service_comes_up_ready(
    cluster: Any, home: Path, settings: Settings, engine: Any, tmp_path: Path
) -> None:
    # In place: the example's script serves the test backend from the checkout's sbatch/.
    services, _ = load_config(str(REPO / "examples" / "saia" / "config.json"))
    with write_session(engine) as s:
        apply_config(s, services)
    slurm = make_slurm(settings)
    deadline = time.monotonic() + 90
    row = None
    while time.monotonic() < deadline:
        result = run_tick(engine, settings, slurm, watch=False)
        assert result.error is None, result.text()
        with engine.connect() as c:
            row = c.execute(text("SELECT * FROM jobs WHERE ended_at IS NULL")).mappings().first()
            c.rollback()
        if row is not None and row["state"] == "ready":
            break
        time.sleep(1)
    assert row is not None and row["state"] == "ready", f"example-service never became ready: {row}"
    assert row["gpus"] == 1  # the script's #SBATCH --gres=gpu:1
    with urllib.request.urlopen(f"http://{row['node']}:{row['port']}/health", timeout=5) as r:
        assert r.status == 200
