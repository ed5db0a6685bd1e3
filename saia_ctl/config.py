"""Import of the original SAIA ``config.json`` (see ``docs/config.md``).

Validation happens in full before anything is written: a bad file changes
nothing, and every error names the service and the key. Unknown keys are kept
(in ``services.config_json``) and reported as warnings. Importing again
updates services in place; services no longer in the file are disabled, never
deleted, so the history of their jobs and requests stays.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import wire_spec
from .durations import DurationError, parse_duration
from .errors import SaiaError
from .models import Service, ServiceState

# A service id is line 3 of the wire protocol: its charset and length.
ID_RE = re.compile(f"^{wire_spec.regex_class(wire_spec.ID_CHARS)}{{1,{wire_spec.MAX_FIELD}}}$")
# Upper bound of every number and duration (seconds): fits a database INTEGER
# with room to spare; infinity, NaN and 10**30 are refused here, by name, not
# by SQLite later with a message that names nothing.
MAX_NUMBER = 2**31 - 1

# As the original `scheduler.py init` required them; input/output default to [] there too.
REQUIRED_KEYS = (
    "name",
    "id",
    "owned_by",
    "sbatch",
    "inferences_per_instance",
    "maximum_number_instances",
    "minimum_number_instances",
    "job_expiry_time",
)


@dataclass(frozen=True)
class OptionalKey:
    """A key saia-ctl adds to the original format: optional, with a default."""

    name: str
    default: float
    help: str
    is_duration: bool = True


# Defaults reproduce the original where it had the behaviour; the README documents each.
OPTIONAL_KEYS: tuple[OptionalKey, ...] = (
    OptionalKey(
        "ready_timeout",
        1800,
        "How long a started job may take to answer GET / before it is cancelled and replaced.",
    ),
    OptionalKey(
        "idle_timeout",
        900,
        "With minimum_number_instances 0: idle time (no request in flight) before scaling to zero.",
    ),
    OptionalKey(
        "scale_down_cooldown",
        120,
        "How long the wanted number of jobs must stay below the running number before one is drained.",
    ),
    OptionalKey(
        "health_failures",
        3,
        "Failed GET /health probes in a row before a ready job is replaced.",
        is_duration=False,
    ),
    OptionalKey(
        "request_hold_time",
        30,
        "How long a request waits for a starting job before it is answered 503.",
    ),
)
_OPTIONAL = {k.name: k for k in OPTIONAL_KEYS}

# Optional Slurm placement keys, each passed to sbatch as its option (overriding the
# script's #SBATCH line); absent: the script's own line or the cluster's default.
SLURM_KEYS: dict[str, str] = {
    "account": "Slurm account the service's jobs are charged to (`sbatch --account`).",
    "partition": "Slurm partition the jobs run in (`sbatch --partition`).",
    "qos": "Slurm quality of service of the jobs (`sbatch --qos`).",
    "reservation": "Slurm reservation the jobs run in (`sbatch --reservation`).",
}
# What Slurm accepts in such a name (no spaces, commas allowed for lists of partitions).
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_.,:@+-]{1,128}$")


def slurm_options(raw: Any) -> tuple[str, ...]:
    """``--account=...`` etc. for a service's stored config (``services.config_json``);
    keys that are absent or not valid names give nothing (import refuses them first)."""
    if not isinstance(raw, dict):
        return ()
    return tuple(
        f"--{key}={raw[key]}"
        for key in SLURM_KEYS
        if isinstance(raw.get(key), str) and SLURM_NAME_RE.match(raw[key])
    )


class ConfigError(SaiaError, ValueError):
    """config.json cannot be imported; the message names service and key."""


@dataclass
class ServiceConfig:
    id: str
    name: str
    owned_by: str
    input: list[Any]
    output: list[Any]
    sbatch: str
    inferences_per_instance: int
    maximum_number_instances: int
    minimum_number_instances: int
    job_expiry_time: int
    options: dict[str, float]
    raw: dict[str, Any]


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _where(index: int, raw: Any) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        return f"service {raw['id']!r}"
    return f"service #{index + 1}"


def _int(where: str, key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: key {key!r} must be a whole number, not {json.dumps(value)}")
    if value < minimum:
        raise ConfigError(f"{where}: key {key!r} must be at least {minimum}, not {value}")
    if value > MAX_NUMBER:
        raise ConfigError(f"{where}: key {key!r} must be at most {MAX_NUMBER}, not {value}")
    return value


def _text(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: key {key!r} must be a non-empty string, not {json.dumps(value)}")
    return value


def _duration(where: str, key: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except DurationError as e:
            raise ConfigError(f"{where}: key {key!r}: {e}") from None
        if seconds is None:
            raise ConfigError(f"{where}: key {key!r} must be a finite duration, not {value!r}")
        if seconds > MAX_NUMBER:
            raise ConfigError(f"{where}: key {key!r} must be at most {MAX_NUMBER} seconds, not {value!r}")
        return seconds
    raise ConfigError(
        f"{where}: key {key!r} must be a duration string (MM:SS, H:MM:SS or D-HH:MM:SS), "
        f"not {json.dumps(value)}"
    )


def _option(where: str, key: OptionalKey, value: Any) -> float:
    if key.is_duration and isinstance(value, str):
        return float(_duration(where, key.name, value))
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= MAX_NUMBER  # also refuses NaN
    ):
        kind = "a duration string or a number of seconds" if key.is_duration else "a whole number"
        raise ConfigError(
            f"{where}: key {key.name!r} must be {kind} (0 to {MAX_NUMBER}), not {json.dumps(value)}"
        )
    if not key.is_duration and not isinstance(value, int):
        raise ConfigError(f"{where}: key {key.name!r} must be a whole number, not {json.dumps(value)}")
    return float(value)


def parse_service(index: int, raw: Any, base_dir: str, warnings: list[str]) -> ServiceConfig:
    where = _where(index, raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be an object, not {json.dumps(raw)[:60]}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r}")
    sid = raw["id"]
    if not isinstance(sid, str) or not ID_RE.match(sid):
        raise ConfigError(
            f"{where}: key 'id' must be 1-{wire_spec.MAX_FIELD} characters of {wire_spec.ID_CHARS_TEXT}, "
            f"not {json.dumps(sid)}"
        )
    name = _text(where, "name", raw["name"])
    owned_by = _text(where, "owned_by", raw["owned_by"])
    for key in ("input", "output"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{where}: key {key!r} must be a list of strings, not {json.dumps(value)}")
    sbatch = _text(where, "sbatch", raw["sbatch"])
    path = sbatch if os.path.isabs(sbatch) else os.path.join(base_dir, sbatch)
    path = os.path.normpath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: key 'sbatch': no such file: {path}")
    ipi = _int(where, "inferences_per_instance", raw["inferences_per_instance"], 1)
    maximum = _int(where, "maximum_number_instances", raw["maximum_number_instances"])
    minimum = _int(where, "minimum_number_instances", raw["minimum_number_instances"])
    if minimum > maximum:
        raise ConfigError(
            f"{where}: key 'minimum_number_instances' ({minimum}) is above "
            f"'maximum_number_instances' ({maximum})"
        )
    expiry = _duration(where, "job_expiry_time", raw["job_expiry_time"])
    options: dict[str, float] = {}
    for opt in OPTIONAL_KEYS:
        options[opt.name] = _option(where, opt, raw[opt.name]) if opt.name in raw else opt.default
    if options["health_failures"] < 1:
        raise ConfigError(f"{where}: key 'health_failures' must be at least 1")
    for key in SLURM_KEYS:
        if key in raw and not (isinstance(raw[key], str) and SLURM_NAME_RE.match(raw[key])):
            raise ConfigError(
                f"{where}: key {key!r} must be a Slurm name (1-128 of letters, digits and _.,:@+-), "
                f"not {json.dumps(raw[key])}"
            )
    for key in raw:
        if (
            key not in REQUIRED_KEYS
            and key not in _OPTIONAL
            and key not in SLURM_KEYS
            and key not in ("input", "output")
        ):
            warnings.append(f"{where}: unknown key {key!r} kept as it is")
    return ServiceConfig(
        id=sid,
        name=name,
        owned_by=owned_by,
        input=list(raw.get("input", [])),
        output=list(raw.get("output", [])),
        sbatch=path,
        inferences_per_instance=ipi,
        maximum_number_instances=maximum,
        minimum_number_instances=minimum,
        job_expiry_time=expiry,
        options=options,
        raw=raw,
    )


def load_config(path: str) -> tuple[list[ServiceConfig], list[str]]:
    """Read and validate a config.json; returns the services and warnings."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be an object with a 'services' list")
    if "services" not in doc:
        raise ConfigError(f"{path}: missing required key 'services'")
    if not isinstance(doc["services"], list):
        raise ConfigError(f"{path}: key 'services' must be a list")
    warnings = [f"{path}: unknown top-level key {k!r} ignored" for k in doc if k != "services"]
    base_dir = os.path.dirname(os.path.abspath(path))
    services = [parse_service(i, raw, base_dir, warnings) for i, raw in enumerate(doc["services"])]
    seen: set[str] = set()
    for s in services:
        if s.id in seen:
            raise ConfigError(f"service {s.id!r}: key 'id' appears twice in {path}")
        seen.add(s.id)
    return services, warnings


def job_spec(sbatch: str) -> str:
    """Fingerprint of what shapes a service's jobs: its batch script's path and content.
    A change replaces the service's running jobs rolling (scheduler/plan.py, ``rolling_step``)."""
    import hashlib

    h = hashlib.sha256(sbatch.encode("utf-8", "surrogateescape") + b"\0")
    try:
        with open(sbatch, "rb") as f:
            h.update(f.read())
    except OSError:
        h.update(b"unreadable")
    return h.hexdigest()[:32]


def _columns(cfg: ServiceConfig) -> dict[str, Any]:
    return {
        "name": cfg.name,
        "owned_by": cfg.owned_by,
        "input": json.dumps(cfg.input),
        "output": json.dumps(cfg.output),
        "sbatch": cfg.sbatch,
        "inferences_per_instance": cfg.inferences_per_instance,
        "minimum_number_instances": cfg.minimum_number_instances,
        "maximum_number_instances": cfg.maximum_number_instances,
        "job_expiry_time": cfg.job_expiry_time,
        "ready_timeout": int(cfg.options["ready_timeout"]),
        "idle_timeout": int(cfg.options["idle_timeout"]),
        "scale_down_cooldown": int(cfg.options["scale_down_cooldown"]),
        "health_failures": int(cfg.options["health_failures"]),
        "request_hold_time": cfg.options["request_hold_time"],
        "enabled": True,
        "config_json": json.dumps(cfg.raw, sort_keys=True),
        "spec": job_spec(cfg.sbatch),
    }


def apply_config(
    session: Session, services: list[ServiceConfig], now: datetime | None = None
) -> ImportResult:
    """Create or update services in place (caller owns the transaction)."""
    now = now or datetime.now(UTC)
    result = ImportResult()
    existing = {s.id: s for s in session.scalars(select(Service))}
    for cfg in services:
        values = _columns(cfg)
        row = existing.get(cfg.id)
        if row is None:
            session.add(Service(id=cfg.id, created_at=now, updated_at=now, **values))
            session.add(ServiceState(service_id=cfg.id, load_avg=0.0, target=0))
            result.created.append(cfg.id)
            continue
        changed = [k for k, v in values.items() if getattr(row, k) != v]
        for k in changed:
            setattr(row, k, values[k])
        if changed:
            row.updated_at = now
            result.updated.append(cfg.id)
        else:
            result.unchanged.append(cfg.id)
        if session.get(ServiceState, cfg.id) is None:
            session.add(ServiceState(service_id=cfg.id, load_avg=0.0, target=0))
    wanted = {cfg.id for cfg in services}
    for sid, row in existing.items():
        if sid not in wanted and row.enabled:
            row.enabled = False
            row.updated_at = now
            result.disabled.append(sid)
    return result
