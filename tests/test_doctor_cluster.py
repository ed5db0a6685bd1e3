"""`saia-ctl doctor` on the real cluster: all ✓ on a good set-up, and each ✗ provoked on purpose."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.doctor import CheckResult, Options, run_checks
from saia_ctl.install_paths import forced_command_path
from saia_ctl.migrate import downgrade
from saia_ctl.settings import Settings
from saia_ctl.slurm import RealSlurm
from tests.support.fixtures import service_config
from tests.support.paths import REPO

pytestmark = pytest.mark.cluster
SAIA = str(REPO / ".venv" / "bin" / "saia-ctl")
BASH = "/bin/bash"


@pytest.fixture
def site(cluster: Any, home: Path, tmp_path: Path, import_services: Callable[..., None]) -> dict[str, Any]:
    """A good set-up: a migrated database with one service, an account home whose
    .bashrc is empty, and an authorized_keys line as the README gives it."""
    import_services(service_config("doc-svc"))
    account = tmp_path / "account"
    (account / ".ssh").mkdir(parents=True)
    (account / ".bashrc").write_text("")
    keys = account / ".ssh" / "authorized_keys"
    keys.write_text(
        f'restrict,command="SAIA_HOME={home} {forced_command_path()}" ssh-ed25519 AAAAC3Nza doctor-test\n'
    )
    return {"home": home, "account": account, "keys": keys}


def check(site: dict[str, Any], environ: dict[str, str] | None = None, **kw: Any) -> dict[str, CheckResult]:
    env = {**os.environ, **(environ or {})}
    kw.setdefault("shell", BASH)
    opts = Options(environ=env, account_home=str(site["account"]), **kw)
    results = list(run_checks(opts))
    by_name = {r.name: r for r in results}
    assert len(by_name) == len(results), "check names are unique"
    return by_name


def failing(results: dict[str, CheckResult]) -> set[str]:
    return {name for name, r in results.items() if not r.ok}


def doctor_cli(
    site: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAIA, "doctor", "--account-home", str(site["account"]), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_a_good_setup_is_all_green(site: dict[str, Any]) -> None:
    results = check(site)
    assert failing(results) == set(), {n: r.detail for n, r in results.items() if not r.ok}
    assert set(results) >= {
        "settings",
        "database",
        "database writable",
        "database migration",
        "journal mode",
        "free space",
        "slurm commands",
        "slurm controller",
        "batch script doc-svc",
        "port range",
        "shell start-up",
        "authorized_keys",
    }
    assert "accepts it" in results["batch script doc-svc"].detail
    docs = (REPO / "docs" / "operations.md").read_text()
    for name in results:
        assert f"| `{name.replace('doc-svc', 'SERVICE')}` |" in docs, f"check {name!r} is not documented"
    assert " s" in results["slurm controller"].detail  # the time it took


def test_the_cli_prints_a_line_per_check_and_json(site: dict[str, Any]) -> None:
    proc = doctor_cli(site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("✓ ") for line in lines[:-1]), proc.stdout
    assert lines[-1] == f"all {len(lines) - 1} checks passed"
    assert proc.stderr == ""
    proc = doctor_cli(site, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data and all(set(d) == {"name", "ok", "detail", "fix", "seconds"} for d in data)
    assert all(d["ok"] is True for d in data)


def test_batch_script_test_submits_nothing(site: dict[str, Any]) -> None:
    check(site)
    settings = Settings(home=str(site["home"]))
    assert RealSlurm(settings).queue(settings.job_prefix) == []


def test_database_missing(site: dict[str, Any]) -> None:
    (site["home"] / "saia.db").unlink()
    results = check(site)
    assert "no database" in results["database"].detail
    assert "saia-ctl db upgrade" in results["database"].fix
    for name in ("database writable", "database migration", "batch scripts"):
        assert not results[name].ok and results[name].detail.startswith("skipped:"), name
    assert not (site["home"] / "saia.db").exists(), "doctor never creates the database"
    proc = doctor_cli(site)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "✗ database " in proc.stdout and "no database" in proc.stdout


def test_database_at_an_older_migration(site: dict[str, Any], engine: Any) -> None:
    downgrade(engine, "0002")
    results = check(site)
    assert failing(results) == {"database migration", "batch scripts"}
    assert "at migration 0002, not the newest" in results["database migration"].detail
    assert results["database migration"].fix == "run `saia-ctl db upgrade`"


@pytest.mark.parametrize("kind", ["text", "sqlite"])
def test_a_foreign_file(site: dict[str, Any], kind: str) -> None:
    db = site["home"] / "saia.db"
    db.unlink()
    if kind == "text":
        db.write_text("this is a spreadsheet, honest\n" * 10)
    else:
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE cats (name TEXT)")
        conn.commit()
        conn.close()
    results = check(site)
    if kind == "text":
        assert "is not an SQLite database" in results["database"].detail
        assert results["database migration"].detail.startswith("skipped:")
    else:
        assert results["database"].ok and results["database writable"].ok
        assert "not a saia-ctl database" in results["database migration"].detail
        assert "cats" in results["database migration"].detail
    assert results["batch scripts"].detail.startswith("skipped:")
    proc = doctor_cli(site)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == len(results)  # one line per check
    assert proc.stderr.startswith("Error: ") and "checks failed" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_database_not_writable(site: dict[str, Any]) -> None:
    if os.geteuid() == 0:
        # root writes through file modes (and a read-only mount needs privileges a test
        # should not use): another connection holds the write lock instead.
        conn = sqlite3.connect(site["home"] / "saia.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = check(site, {"SAIA_BUSY_TIMEOUT": "0.2"})
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        assert "write lock was not free" in results["database writable"].detail
    else:
        site["home"].chmod(0o500)
        try:
            results = check(site)
        finally:
            site["home"].chmod(0o700)
        assert "writable" in results["database writable"].fix
    assert not results["database writable"].ok


def test_wal_on_a_network_filesystem(site: dict[str, Any]) -> None:
    folder = os.path.realpath(site["home"])
    mounts = f"/dev/vda / ext4 rw 0 0\nfiler:/vol {folder} nfs4 rw 0 0\n"
    results = check(site, {"SAIA_JOURNAL_MODE": "wal"}, mounts_text=mounts)
    assert failing(results) == {"journal mode"}
    assert "shared memory" in results["journal mode"].detail and "nfs4" in results["journal mode"].detail
    # The rollback journal is right there; and WAL on a local disk is accepted.
    assert check(site, {"SAIA_JOURNAL_MODE": "delete"}, mounts_text=mounts)["journal mode"].ok
    assert check(site, {"SAIA_JOURNAL_MODE": "wal"})["journal mode"].ok


def test_slurm_commands_missing(site: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "no-slurm"
    empty.mkdir()
    results = check(site, {"SAIA_SLURM_BIN": str(empty)})
    assert failing(results) == {"slurm commands", "slurm controller", "batch script doc-svc"}
    assert "not found in SAIA_SLURM_BIN" in results["slurm commands"].detail
    assert "sbatch, squeue, scancel, scontrol" in results["slurm commands"].detail
    assert results["slurm controller"].detail.startswith("skipped:")


def test_slurm_controller_unreachable(site: dict[str, Any], tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    # The cluster's slurm.conf with the controller on a port where nothing listens.
    lines = Path(os.environ["SLURM_CONF"]).read_text().splitlines()
    kept = [line for line in lines if not line.startswith(("SlurmctldPort=", "MessageTimeout="))]
    conf.write_text("\n".join([*kept, "SlurmctldPort=9", "MessageTimeout=1"]) + "\n")
    results = check(site, {"SAIA_SLURM_CONF": str(conf), "SAIA_SLURM_TIMEOUT": "20"})
    assert not results["slurm controller"].ok, results["slurm controller"].detail
    assert "slurmctld" in results["slurm controller"].fix


def test_batch_script_missing(
    site: dict[str, Any], tmp_path: Path, import_services: Callable[..., None]
) -> None:
    script = tmp_path / "gone.sbatch"
    script.write_text((REPO / "sbatch" / "test-llm.sbatch").read_text())
    import_services(service_config("doc-svc"), service_config("gone", sbatch=str(script)))
    script.unlink()
    results = check(site)
    assert failing(results) == {"batch script gone"}
    assert f"no file {script}" in results["batch script gone"].detail


def test_batch_script_refused_by_sbatch(
    site: dict[str, Any], tmp_path: Path, import_services: Callable[..., None]
) -> None:
    script = tmp_path / "bad.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --partition=nonexistent\nexec sleep 60\n")
    import_services(service_config("doc-svc"), service_config("bad", sbatch=str(script)))
    results = check(site)
    assert failing(results) == {"batch script bad"}
    assert "sbatch --test-only refused" in results["batch script bad"].detail
    assert "partition" in results["batch script bad"].detail


def test_no_free_port(site: dict[str, Any]) -> None:
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        results = check(site, {"SAIA_PORT_RANGE": f"{port}-{port}"})
    assert failing(results) == {"port range"}
    assert "0 of 1 ports free" in results["port range"].detail
    assert "1 in use on this host" in results["port range"].detail
    assert "SAIA_PORT_RANGE" in results["port range"].fix


def test_a_port_held_by_a_live_job_is_not_free(site: dict[str, Any], engine: Any) -> None:
    from sqlalchemy import text

    port = Settings(home=str(site["home"])).port_range[0]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (name, service_id, state, port, secret, submitted_at, gpus, health_failures) "
                "VALUES ('x_1_doc-svc', 'doc-svc', 'pending', :p, 's', 0, 0, 0)"
            ),
            {"p": port},
        )
    results = check(site, {"SAIA_PORT_RANGE": f"{port}-{port}"})
    assert failing(results) == {"port range"}
    assert "1 held by live jobs" in results["port range"].detail


def test_a_slow_bashrc(site: dict[str, Any]) -> None:
    (site["account"] / ".bashrc").write_text("sleep 0.1\n")
    results = check(site)
    assert failing(results) == {"shell start-up"}
    r = results["shell start-up"]
    assert "ms of start-up files per request" in r.detail and "more than 20 ms" in r.detail
    assert "[[ $- == *i* ]] || return" in r.fix
    # The fix works: a .bashrc that returns early for non-interactive shells costs nothing.
    (site["account"] / ".bashrc").write_text("[[ $- == *i* ]] || return\nsleep 0.1\n")
    assert check(site)["shell start-up"].ok


def test_a_bashrc_that_prints(site: dict[str, Any]) -> None:
    (site["account"] / ".bashrc").write_text("echo welcome\n")
    r = check(site)["shell start-up"]
    assert not r.ok and "welcome" in r.detail


def test_a_shell_that_runs_nothing(site: dict[str, Any]) -> None:
    r = check(site, shell="/bin/false")["shell start-up"]
    assert not r.ok and "nologin/false" in r.fix


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('command="SAIA_HOME={home} {fc}" ssh-ed25519 AAAA', "neither restrict"),
        (
            'restrict,command="SAIA_HOME={home} /elsewhere/cloud_interface.sh" ssh-ed25519 AAAA',
            "not this installation",
        ),
        ("restrict ssh-ed25519 AAAA", "no line"),
    ],
)
def test_authorized_keys_problems(site: dict[str, Any], line: str, problem: str) -> None:
    site["keys"].write_text(line.format(home=site["home"], fc=forced_command_path()) + "\n")
    results = check(site)
    assert failing(results) == {"authorized_keys"}
    assert problem in results["authorized_keys"].detail


def test_authorized_keys_option(site: dict[str, Any], tmp_path: Path) -> None:
    other = tmp_path / "elsewhere_keys"
    other.write_text(site["keys"].read_text())
    site["keys"].unlink()
    assert not check(site)["authorized_keys"].ok
    assert check(site, authorized_keys=str(other))["authorized_keys"].ok
    proc = doctor_cli(site, "--authorized-keys", str(other), "-f", "json")
    keys = next(d for d in json.loads(proc.stdout) if d["name"] == "authorized_keys")
    assert keys["ok"], keys


def test_bad_settings_are_one_line_each(site: dict[str, Any]) -> None:
    conf = site["home"] / "saia.conf"
    good = conf.read_text()
    conf.write_text("NOT_A_SETTING=1\n")
    try:
        proc = doctor_cli(site)
    finally:
        conf.write_text(good)  # the fixture's clean-up reads it
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith("✗ settings")
    assert "not a known SAIA_ setting" in proc.stdout.splitlines()[0]
    proc = doctor_cli(site, env={"SAIA_PORT_RANGE": "9-1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "✗ port range" in proc.stdout


def test_a_bad_setting_is_the_failing_checks_reason(site: dict[str, Any]) -> None:
    """Settings are checked when loaded: the settings check names the bad value, and every
    check that needs the settings is skipped with that reason, none passes on a guess."""
    results = check(site, {"SAIA_SLURM_TIMEOUT": "soon"})
    assert not results["settings"].ok and "SAIA_SLURM_TIMEOUT" in results["settings"].detail
    for name in ("database", "journal mode", "slurm commands", "batch scripts", "port range"):
        assert not results[name].ok and "settings" in results[name].detail, results[name]


def test_no_state_directory(site: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAIA_HOME"}
    results = list(run_checks(Options(environ=env, account_home=str(site["account"]), shell=BASH)))
    assert results[0].name == "settings" and not results[0].ok
    assert results[0].fix == "set SAIA_HOME or pass --home"
    assert all(
        r.detail.startswith("skipped:")
        for r in results[1:]
        if r.name not in ("shell start-up", "authorized_keys")
    )


def test_the_line_doctor_accepts_works_through_the_real_sshd(site: dict[str, Any], cluster: Any) -> None:
    """The authorized_keys line doctor passes is one the real sshd runs: our forced command
    answers (a request that is not one gets the handler's HTTP 400, not a shell)."""
    key = cluster.add_forced_key(f"SAIA_HOME={site['home']} {forced_command_path()}")
    results = check(site, authorized_keys=str(cluster.authorized_keys))
    assert results["authorized_keys"].ok, results["authorized_keys"].detail
    proc = subprocess.run(
        [*cluster.ssh_argv(key), "echo not-a-request"],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout.startswith(b"HTTP/1.1 400"), (proc.stdout[:200], proc.stderr[-300:])
