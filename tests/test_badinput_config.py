"""Bad config.json files: a generated corpus (extends tests/test_config_import.py).

Every malformed file must be refused by validation (``ConfigError``, one line
naming what is wrong) before anything is written; through the real
``saia-ctl init`` it is one ``Error:`` line on stderr, exit 1, no traceback,
and the database is unchanged.
"""

from __future__ import annotations

import functools
import json
import math
import random
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

from saia_ctl.config import ConfigError, load_config
from tests.support.fixtures import service_config
from tests.support.paths import REPO

SAIA = str(REPO / ".venv" / "bin" / "saia-ctl")
SBATCH = str(REPO / "examples" / "saia" / "sbatch" / "example-service.sbatch")

INF, NAN = math.inf, math.nan
# Per key: values that must be refused (each alone, in an otherwise valid service).
BAD_VALUES: dict[str, list[Any]] = {
    "name": [None, 1, "", "   ", [], {}, True, ["a"]],
    "owned_by": [None, 0, "", " ", [], {"a": 1}, False],
    "id": [
        None,
        1,
        "",
        "a b",
        "a;b",
        "$(touch x)",
        "`id`",
        "../x",
        "a/b",
        "a" * 257,
        "é",
        "a\nb",
        "a\u0000b",
        [],
        {},
    ],
    "sbatch": [
        None,
        1,
        "",
        " ",
        "/nonexistent/x.sbatch",
        "../../nonexistent.sbatch",
        str(REPO),
        "a\u0000b",
        [],
    ],
    "inferences_per_instance": [0, -1, "1", 1.5, True, None, [], INF, NAN, 10**30, -(10**30)],
    "maximum_number_instances": [-1, "3", 1.5, True, None, {}, INF, NAN, 10**30],
    "minimum_number_instances": [-1, "1", 0.5, False, None, [], NAN, 10**30],
    "job_expiry_time": [
        540,
        0,
        None,
        True,
        "",
        "9 minutes",
        "9:75",
        "-1:00",
        "UNLIMITED",
        "1:2:3:4",
        "x:00",
        "99999999999999999999:00",
        [],
        INF,
        NAN,
    ],
    "input": ["text", [1], {}, [None], 5, [["text"]]],
    "output": ["text", [True], {"a": "b"}, 0],
    "ready_timeout": ["soon", -1, INF, NAN, True, [], {}, 1e300, -0.5, "9 minutes"],
    "idle_timeout": ["x", -5, INF, None, 1e300],
    "scale_down_cooldown": [-1, NAN, "1:99", [], 1e300],
    "health_failures": [0, 1.5, "3", NAN, INF, True, -1, None, 10**30],
    "request_hold_time": [-1, "forever", INF, NAN, {}, 1e300],
}


def good(sid: str = "good-one", **over: Any) -> dict[str, Any]:
    return service_config(sid, sbatch=SBATCH, **over)


def dumps(doc: Any) -> str:
    return json.dumps(doc, allow_nan=True)  # Infinity/NaN: what json.loads accepts


def corpus(seed: int = 4242) -> list[tuple[str, bytes]]:
    """(kind, file content) of malformed config files."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    # every bad value of every key, alone, with a good service before it
    for key, values in BAD_VALUES.items():
        for v in values:
            svc = good("broken")
            svc[key] = v
            out.append((f"value:{key}", dumps({"services": [good(), svc]}).encode()))
    # missing required keys
    for key in (
        "name",
        "id",
        "owned_by",
        "sbatch",
        "inferences_per_instance",
        "maximum_number_instances",
        "minimum_number_instances",
        "job_expiry_time",
    ):
        svc = good("broken")
        del svc[key]
        out.append((f"missing:{key}", dumps({"services": [svc]}).encode()))
    # structure
    for text in [
        "",
        " ",
        "null",
        "0",
        '"x"',
        "[]",
        "[{}]",
        "{}",
        '{"services": null}',
        '{"services": {}}',
        '{"services": "a"}',
        '{"services": 1}',
        '{"services": [1]}',
        '{"services": [null]}',
        '{"services": [[]]}',
        '{"services": ["x"]}',
        '{"Services": []}',
        '{"services": [], "services": 5}',
        "{'services': []}",
        '{"services": [],}',
        '\ufeff{"services": []}',
        '{"services": [NaN]}',
        '{"services": [' + "1" * 5000 + "]}",
    ]:
        out.append(("structure", text.encode("utf-8")))
    # min above max, duplicate ids
    out.append(
        (
            "min>max",
            dumps({"services": [good("a", minimum_number_instances=3, maximum_number_instances=2)]}).encode(),
        )
    )
    out.append(("duplicate", dumps({"services": [good("a"), good("b"), good("a")]}).encode()))
    # invalid UTF-8 and truncation at random places of a valid file
    valid = json.dumps({"services": [good("a"), good("b")]}, indent=2).encode()
    for _ in range(60):
        i = rng.randrange(len(valid))
        out.append(("utf8", valid[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xfe"]) + valid[i:]))
    for _ in range(60):
        out.append(("truncated", valid[: rng.randrange(1, len(valid) - 1)]))
    flipped = 0
    while flipped < 40:  # a byte turned into a structural character: kept when it breaks the JSON
        b = bytearray(valid)
        b[rng.randrange(len(b))] = rng.choice(b'{}[]:,"\x00')
        try:
            json.loads(bytes(b))
        except ValueError:
            out.append(("flipped", bytes(b)))
            flipped += 1
    # deep nesting, in the services list and in a value
    for depth in (1000, 100_000):
        out.append(("deep", b'{"services": ' + b"[" * depth + b"]" * depth + b"}"))
        svc = good("deep")
        out.append(
            (
                "deep",
                dumps({"services": [svc]}).encode()[:-2] + b', "x": ' + b"[" * depth + b"]" * depth + b"}]}",
            )
        )
    # a huge file: 20,000 good services, then one bad (validation must see it before writing)
    many = [good(f"s{i}") for i in range(20_000)] + [good("last", job_expiry_time="soon")]
    out.append(("huge", json.dumps({"services": many}).encode()))
    out.append(("huge", b'{"services": [], "pad": "' + b"x" * (30 << 20) + b'"'))  # 30 MB, unterminated
    return out


def dump(home: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(home / "saia.db")) as conn, conn:
        rows = conn.execute("SELECT * FROM services ORDER BY id").fetchall()
        rows += conn.execute("SELECT * FROM service_states ORDER BY service_id").fetchall()
    return rows


def test_every_malformed_config_is_refused_by_validation(tmp_path: Path) -> None:
    cases = _cached_corpus()
    assert len(cases) >= 300
    path = tmp_path / "config.json"
    wrong = []
    for kind, data in cases:
        path.write_bytes(data)
        try:
            load_config(str(path))
        except ConfigError as e:
            msg = str(e)
            if "\n" in msg or not msg.strip():
                wrong.append((kind, "message is not one line", msg[:200]))
            if kind.startswith(("value:", "missing:")) and repr(kind.split(":")[1]) not in msg:
                wrong.append((kind, "message does not name the key", msg[:200]))
            continue
        except Exception as e:
            wrong.append((kind, f"{type(e).__name__}: {str(e)[:150]}", data[:120]))
            continue
        wrong.append((kind, "accepted", data[:200]))
    assert not wrong, f"{len(wrong)} of {len(cases)} malformed configs not refused cleanly:\n" + "\n".join(
        map(repr, wrong[:30])
    )


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAIA, *args], capture_output=True, text=True, timeout=120)


CLI_KINDS = [
    "value:inferences_per_instance",
    "value:ready_timeout",
    "value:job_expiry_time",
    "value:id",
    "structure",
    "utf8",
    "truncated",
    "deep",
    "huge",
    "duplicate",
    "missing:sbatch",
]


def test_malformed_configs_through_the_cli_change_nothing(home: Path, tmp_path: Path) -> None:
    assert (
        run(
            "init", "--config", str(_write(tmp_path / "ok.json", json.dumps({"services": [good()]})))
        ).returncode
        == 0
    )
    before = dump(home)
    cases = _cached_corpus()
    for kind in CLI_KINDS:
        data = [d for k, d in cases if k == kind][-1]  # the last of a kind is its most extreme
        path = tmp_path / "bad.json"
        path.write_bytes(data)
        r = run("init", "--config", str(path))
        assert r.returncode == 1, (kind, r.stdout[:200], r.stderr[:300])
        assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, (
            kind,
            r.stderr[:500],
        )
        assert "Traceback" not in r.stderr + r.stdout
        assert dump(home) == before, kind


@functools.lru_cache(maxsize=1)
def _cached_corpus() -> list[tuple[str, bytes]]:
    return corpus()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
