"""The wheel is a complete installation: built from the checkout, installed into a
venv outside it, its saia-ctl migrates a database, its cloud_interface.sh (in the
venv's bin/) answers, and `ssh authorized-key` names that script.

The venv gets the dependencies from this checkout's .venv through a path entry
(no network); saia_ctl itself comes only from the wheel. The whole site-like
flow on the real cluster is scripts/wheel-check.sh, which CI runs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.migrate import head_revision
from tests.support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout's files (no stale build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    files = _run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"]).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    dist = tmp_path_factory.mktemp("dist")
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)])
    assert r.returncode == 0, r.stderr
    (found,) = dist.glob("saia_ctl-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("site") / "venv"
    assert _run([sys.executable, "-m", "venv", str(root)]).returncode == 0
    py = root / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    # The dependencies, not saia_ctl: a plain path line does not run the checkout's editable finder.
    deps = [p for p in sys.path if p.endswith("-packages") and Path(p, "sqlalchemy").is_dir()]
    Path(purelib, "deps.pth").write_text("".join(f"{p}\n" for p in deps))
    r = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", str(wheel)])
    assert r.returncode == 0, r.stderr
    yield root


def env_outside(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAIA_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "SAIA_HOME": str(home)}


def test_the_wheel_holds_everything_a_site_needs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for versions in (REPO / "migrations" / "versions").glob("*.py"):
        assert f"saia_ctl/migrations/versions/{versions.name}" in names
    for sbatch in (REPO / "sbatch").iterdir():
        assert f"saia_ctl/sbatch/{sbatch.name}" in names
    assert {
        "saia_ctl/migrations/env.py",
        "saia_ctl/migrations/script.py.mako",
        "saia_ctl/request_path/entry.py",
        "saia_ctl-0.1.0.data/scripts/cloud_interface.sh",
    } <= names
    # Nothing of the checkout's top level lands beside the package.
    assert {n.split("/")[0] for n in names} == {"saia_ctl", "saia_ctl-0.1.0.data", "saia_ctl-0.1.0.dist-info"}


def test_installed_saia_ctl_migrates_from_its_own_package(venv: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    saia = str(venv / "bin" / "saia-ctl")
    py = str(venv / "bin" / "python")
    where = _run([py, "-c", "import saia_ctl.migrate as m; print(m.MIGRATIONS_DIR)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    r = _run([saia, "db", "upgrade"], cwd=tmp_path, env=env_outside(home))
    assert r.returncode == 0 and r.stdout.strip().endswith(f"to {head_revision()}"), r.stdout + r.stderr
    r = _run([saia, "db", "current"], cwd=tmp_path, env=env_outside(home))
    assert r.returncode == 0 and head_revision() in r.stdout


def test_installed_forced_command_answers(venv: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = venv / "bin" / "cloud_interface.sh"
    assert os.access(script, os.X_OK)
    assert _run([str(venv / "bin" / "saia-ctl"), "db", "upgrade"], env=env_outside(home)).returncode == 0
    env = {**env_outside(home), "SSH_ORIGINAL_COMMAND": "status", "PATH": "/usr/bin:/bin"}
    r = _run([str(script)], cwd="/", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == {"services": []}, r.stderr
    r = _run([str(script)], cwd="/", env={**env, "SSH_ORIGINAL_COMMAND": "keep-alive"})
    assert r.stdout == "OK\n", r.stderr
    # It ran the installed handler with the venv's python, by path (-S): nothing else.
    trace = _run(["bash", "-x", str(script)], cwd="/", env=env).stderr.splitlines()[-1]
    assert trace.startswith(f"+ exec {venv}/bin/python -I -S {venv}/bin/../lib/python3"), trace
    assert trace.endswith("/site-packages/saia_ctl/request_path/entry.py"), trace


def test_installed_authorized_key_names_the_installed_script(venv: Path, tmp_path: Path) -> None:
    key = tmp_path / "k"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    home = tmp_path / "home"
    r = _run([str(venv / "bin" / "saia-ctl"), "ssh", "authorized-key", f"{key}.pub"], env=env_outside(home))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    option = r.stdout.split('"')[1]
    assert shlex.split(option) == [f"SAIA_HOME={home}", str(venv / "bin" / "cloud_interface.sh")]


def test_checkout_forced_command_still_answers(home: Path) -> None:
    env = {**env_outside(home), "SSH_ORIGINAL_COMMAND": "keep-alive", "PATH": "/usr/bin:/bin"}
    r = _run([str(REPO / "cloud_interface.sh")], cwd="/", env=env)
    assert r.stdout == "OK\n", r.stderr
    trace = _run(["bash", "-x", str(REPO / "cloud_interface.sh")], cwd="/", env=env).stderr.splitlines()[-1]
    assert trace == f"+ exec {REPO}/.venv/bin/python -I -S {REPO}/saia_ctl/request_path/entry.py", trace
