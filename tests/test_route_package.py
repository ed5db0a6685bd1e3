"""The request path as a package: standard library only, no import cycle, and a
bug keeps its traceback (in ``logs/route.log``) while the client gets one line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.request_path import handler
from tests.support.backend import BackendProcess as Backend
from tests.support.fixtures import service_config
from tests.support.paths import REPO
from tests.support.wire import add_job, command, rows, run_inproc
from tests.support.wire import parse_as_proxy as parse_http

PACKAGE = REPO / "saia_ctl" / "request_path"
MODULES = sorted(f"saia_ctl.request_path.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_the_package_holds_the_whole_request_path() -> None:
    """What cloud_interface.sh needs is where it looks for it."""
    assert (PACKAGE / "entry.py").is_file()
    assert "saia_ctl.request_path.tunnel" in MODULES and "saia_ctl.request_path.handler" in MODULES
    script = (REPO / "cloud_interface.sh").read_text()
    assert "saia_ctl/request_path/entry.py" in script


def test_every_module_loads_only_the_standard_library() -> None:
    """Imported in a fresh ``-I -S`` interpreter (as cloud_interface.sh runs it), all
    modules of the package together load nothing outside the standard library but
    saia_ctl's own standard-library modules."""
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(out.split())
    assert set(MODULES) <= loaded
    outside = {m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names and m != "__main__"}
    ours = {m for m in outside if m == "saia_ctl" or m.startswith("saia_ctl.")}
    assert outside == ours, outside - ours
    # saia_ctl's modules loaded are the request path's and its stdlib-only helpers.
    helpers = {m for m in ours if not m.startswith("saia_ctl.request_path")}
    assert helpers <= {
        "saia_ctl",
        "saia_ctl.request_path",
        "saia_ctl.rawdb",
        "saia_ctl.settings",
        "saia_ctl.walltime",
        "saia_ctl.wire_spec",
    }, helpers


def _imports(path: Path) -> set[str]:
    """saia_ctl modules a module imports anywhere in its body (lazy imports too)."""
    found: set[str] = set()
    package = "saia_ctl.request_path"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("saia_ctl")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("saia_ctl"):
                continue
            if node.module is None or target == package:  # `from . import x`: x is a module
                found |= {f"{target}.{a.name}" for a in node.names}
            else:
                found.add(target)
    return found


def test_no_import_cycle_among_the_modules() -> None:
    graph = {f"saia_ctl.request_path.{p.stem}": _imports(p) for p in PACKAGE.glob("*.py")}
    assert graph["saia_ctl.request_path.tunnel"] >= {"saia_ctl.request_path.store"}  # the walk sees it
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 2 or module not in graph:
            return
        assert state.get(module) != 1, " -> ".join([*path, module])
        state[module] = 1
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


@pytest.fixture
def served(home: Path, import_services: Any) -> Any:
    import_services(
        service_config("svc", minimum_number_instances=0, maximum_number_instances=0, request_hold_time=1)
    )
    b = Backend()
    add_job(home / "saia.db", "svc", b.port, b.secret)
    yield home / "saia.db"
    b.stop()


def test_a_bug_answers_one_line_and_logs_its_traceback(
    home: Path, served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise ZeroDivisionError("provoked for the test")

    monkeypatch.setattr(handler, "_forward", broken)
    raw = run_inproc(command("bug1", "u", "svc", "/echo", body=b"{}"), home)
    status, _headers, body = parse_http(raw)
    assert status == 502 and b"internal error of the request path" in body
    assert b"Traceback" not in raw
    [row] = rows(served)
    assert row["outcome"] == "error" and "ZeroDivisionError: provoked for the test" in row["error"]
    log = (home / "logs" / "route.log").read_text()
    assert "Traceback (most recent call last)" in log
    assert "in handle_request" in log and "in broken" in log
    assert "ZeroDivisionError: provoked for the test" in log


def test_a_bug_before_the_request_logs_its_traceback(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug outside a request's own handling (here: in parsing) is not answered
    (nothing valid to say), logged with its traceback."""

    def broken(_raw: bytes) -> None:
        raise KeyError("provoked in parsing")

    monkeypatch.setattr(handler.wire, "parse_command", broken)
    raw = run_inproc(b"keep-alive", home)
    assert raw == b""
    log = (home / "logs" / "route.log").read_text()
    assert "internal error: KeyError" in log
    assert "Traceback (most recent call last)" in log and "in run" in log and "in broken" in log
