"""`saia-ctl init --config`: the original format, validation, idempotence."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import service_config
from tests.support.paths import REPO

SAIA = str(REPO / ".venv" / "bin" / "saia-ctl")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAIA, *args], capture_output=True, text=True, timeout=60)


def dump(home: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "saia.db") as conn:
        rows = conn.execute("SELECT * FROM services ORDER BY id").fetchall()
        rows += conn.execute("SELECT * FROM service_states ORDER BY service_id").fetchall()
    return rows


def test_original_example_config_imports_unchanged(home: Path, tmp_path: Path) -> None:
    example = tmp_path / "saia"
    shutil.copytree(REPO / "examples" / "saia", example)
    original = (example / "config.json").read_bytes()
    r = run("init", "--config", str(example / "config.json"))
    assert r.returncode == 0, r.stderr
    assert "1 created" in r.stdout
    assert (example / "config.json").read_bytes() == original
    r = run("services", "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    [svc] = json.loads(r.stdout)
    assert svc["id"] == "example-service"
    assert svc["name"] == "Example Service"
    assert svc["owned_by"] == "gwdg-examples"
    assert (svc["minimum_number_instances"], svc["maximum_number_instances"]) == (1, 3)
    assert svc["inferences_per_instance"] == 1
    assert svc["job_expiry_time"] == "9:00"
    # relative to the config file's folder, not the caller's cwd
    assert svc["sbatch"] == str(example / "sbatch" / "example-service.sbatch")


def test_import_is_idempotent_and_updates_in_place(home: Path, write_config: Any) -> None:
    path = write_config(service_config("a"), service_config("b"))
    assert run("init", "--config", str(path)).returncode == 0
    first = dump(home)
    r = run("init", "--config", str(path))
    assert r.returncode == 0 and "2 unchanged" in r.stdout
    assert dump(home) == first
    path = write_config(service_config("a", maximum_number_instances=7))
    r = run("init", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "1 updated" in r.stdout and "1 disabled (b)" in r.stdout
    rows = {row["id"]: row for row in json.loads(run("services", "list", "-f", "json").stdout)}
    assert rows["a"]["maximum_number_instances"] == 7
    assert rows["b"]["enabled"] is False  # kept with its history, not deleted


def test_unknown_keys_are_warned_about_and_kept(home: Path, write_config: Any) -> None:
    path = write_config(service_config("a", chunk_size=8, type="LLM"))
    r = run("init", "--config", str(path))
    assert r.returncode == 0
    assert "unknown key 'chunk_size'" in r.stderr and "unknown key 'type'" in r.stderr
    with sqlite3.connect(home / "saia.db") as conn:
        (raw,) = conn.execute("SELECT config_json FROM services WHERE id='a'").fetchone()
    assert json.loads(raw)["chunk_size"] == 8


def test_slurm_keys_are_known_and_kept(home: Path, write_config: Any) -> None:
    path = write_config(service_config("a", account="saia_a", partition="gpu,debug", qos="high"))
    r = run("init", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "unknown key" not in r.stderr
    with sqlite3.connect(home / "saia.db") as conn:
        (raw,) = conn.execute("SELECT config_json FROM services WHERE id='a'").fetchone()
    assert json.loads(raw)["account"] == "saia_a"


def test_input_output_are_optional_as_in_the_original(home: Path, write_config: Any) -> None:
    svc = service_config("a")
    del svc["input"], svc["output"]
    assert run("init", "--config", str(write_config(svc))).returncode == 0


BAD = [
    ("bad duration", {"job_expiry_time": "9 minutes"}, "job_expiry_time"),
    ("bad duration seconds", {"job_expiry_time": "9:75"}, "job_expiry_time"),
    ("duration as number", {"job_expiry_time": 540}, "job_expiry_time"),
    (
        "min above max",
        {"minimum_number_instances": 4, "maximum_number_instances": 2},
        "minimum_number_instances",
    ),
    ("missing key", {"sbatch": None}, "sbatch"),
    ("missing sbatch file", {"sbatch": "/nonexistent/x.sbatch"}, "sbatch"),
    ("wrong type", {"inferences_per_instance": "1"}, "inferences_per_instance"),
    ("zero divisor", {"inferences_per_instance": 0}, "inferences_per_instance"),
    ("negative", {"maximum_number_instances": -1}, "maximum_number_instances"),
    ("bad id", {"id": "a b;rm -rf"}, "id"),
    ("bad optional key", {"ready_timeout": "soon"}, "ready_timeout"),
    ("account with a space", {"account": "a b"}, "account"),
    ("partition not a string", {"partition": 3}, "partition"),
    ("empty qos", {"qos": ""}, "qos"),
    ("reservation option", {"reservation": "--x=1 y"}, "reservation"),
]


@pytest.mark.parametrize(("case", "change", "key"), BAD, ids=[b[0] for b in BAD])
def test_invalid_config_names_service_and_key_and_changes_nothing(
    home: Path, write_config: Any, case: str, change: dict[str, Any], key: str
) -> None:
    assert run("init", "--config", str(write_config(service_config("good-one")))).returncode == 0
    before = dump(home)
    svc = service_config("broken")
    for k, v in change.items():
        if v is None:
            del svc[k]
        else:
            svc[k] = v
    # the good service first: a half-applied import would change it
    path = write_config(service_config("good-one", maximum_number_instances=9), svc)
    r = run("init", "--config", str(path))
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert repr(key) in r.stderr
    assert "service" in r.stderr
    assert dump(home) == before


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"services": {}}', '{"nothing": []}', '{"services": [42]}', "\xff\xfe"],
)
def test_malformed_files_are_one_line_errors(home: Path, tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(text.encode("latin-1"))
    r = run("init", "--config", str(path))
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_duplicate_ids_are_rejected(home: Path, write_config: Any) -> None:
    r = run("init", "--config", str(write_config(service_config("a"), service_config("a"))))
    assert r.returncode == 1 and "appears twice" in r.stderr
