"""Global settings, declared once: name, default, help.

Standard library only: the request path (``request_path/``) imports this module on
every request, so it must stay cheap. A value comes from, in order:

1. the process environment (``SAIA_*``);
2. ``$SAIA_HOME/saia.conf`` — ``KEY=VALUE`` lines, ``#`` comments. sshd starts
   the forced command with an almost empty environment, so this file is how an
   operator configures the request path on a login node;
3. the default below.

Per-service knobs (ready timeout, idle time, hold time, ...) live in
``config.json`` instead; see ``saia_ctl/config.py``.
"""

from __future__ import annotations

import os


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


class Setting:
    """One setting: name, default, help. (Not a dataclass: importing dataclasses
    pulls in ``inspect``, ~15 ms on every request through the request path.)"""

    __slots__ = ("default", "help", "name")

    def __init__(self, name: str, default: str, help: str) -> None:
        self.name = name
        self.default = default
        self.help = help

    def __repr__(self) -> str:
        return f"Setting({self.name!r}, {self.default!r})"


SETTINGS: tuple[Setting, ...] = (
    Setting("SAIA_HOME", "", "State directory (database, logs, job output). `--home` wins."),
    Setting("SAIA_DB_URL", "", "Database URL; default sqlite:///$SAIA_HOME/saia.db."),
    Setting(
        "SAIA_JOURNAL_MODE",
        "delete",
        "SQLite journal mode: delete/truncate/persist (safe on shared storage) or wal "
        "(only when every process shares one host's local disk).",
    ),
    Setting("SAIA_BUSY_TIMEOUT", "30", "Seconds a connection waits for the SQLite write lock."),
    Setting("SAIA_SLURM_BIN", "", "Folder holding sbatch/squeue/scancel/scontrol; default: PATH."),
    Setting(
        "SAIA_SLURM_CONF",
        "",
        "slurm.conf for the Slurm commands (exported as SLURM_CONF); default: Slurm's own lookup.",
    ),
    Setting("SAIA_SLURM_TIMEOUT", "30", "Seconds before a Slurm command is given up."),
    Setting(
        "SAIA_JOB_PREFIX",
        "saia",
        "Prefix of the Slurm job names this installation submits; jobs are found by it.",
    ),
    Setting("SAIA_PORT_RANGE", "61001-62000", "Ports handed to backend jobs, inclusive."),
    Setting(
        "SAIA_TICK_INTERVAL", "10", "`tick --if-due` runs only if the last tick began this many seconds ago."
    ),
    Setting("SAIA_TICK_TIMEOUT", "60", "Time bound of one tick, in seconds."),
    Setting("SAIA_LEASE_TTL", "90", "Seconds after which a scheduler lease left by a killed tick expires."),
    Setting("SAIA_PROBE_TIMEOUT", "2", "Seconds a readiness or health probe may take."),
    Setting(
        "SAIA_CONNECT_TIMEOUT",
        "5",
        "Seconds the request path waits to connect to a backend job (then 502/504).",
    ),
    Setting(
        "SAIA_BACKEND_TIMEOUT",
        "600",
        "Seconds the request path waits for a backend's answer headers, and between two pieces of "
        "its answer (a long non-streaming answer sends nothing until it is done).",
    ),
    Setting("SAIA_PYTHON", "", "Interpreter that runs background ticks; default: the running one."),
    Setting(
        "SAIA_ACCOUNTING_TZ",
        "UTC",
        "Zone (IANA name) the accounting months and days are cut in: the default of `report --tz` "
        "and `db prune --tz`, and the zone the tick keeps the report ledger in.",
    ),
    Setting(
        "SAIA_FORWARDER",
        "off",
        "on: keep-alive keeps a long-lived forwarder running on the login node (python -m "
        "saia_ctl.request_path.forwarder, local Unix socket) and cloud_interface.sh hands requests to it, "
        "saving the interpreter start; without it, the one-process path. off: never.",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _read_conf_file(home: str) -> dict[str, str]:
    path = os.path.join(home, "saia.conf")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise SettingsError(f"cannot read {path}: {e.strerror}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or key not in _BY_NAME:
            raise SettingsError(f"{path}:{number}: not a known SAIA_ setting: {key!r}")
        values[key] = value.strip().strip('"').strip("'")
    return values


class Settings:
    """Resolved settings of one process."""

    def __init__(self, home: str | None = None, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        home = home or env.get("SAIA_HOME") or ""
        if not home:
            raise SettingsError("no state directory: set SAIA_HOME or pass --home")
        self.home = os.path.abspath(home)
        conf = _read_conf_file(self.home)
        self._values: dict[str, str] = {}
        for s in SETTINGS:
            value = env.get(s.name)
            if value is None or value == "":
                value = conf.get(s.name, s.default)
            self._values[s.name] = value
        self._values["SAIA_HOME"] = self.home

    def raw(self, name: str) -> str:
        return self._values[name]

    def _number(self, name: str, minimum: float = 0.0) -> float:
        text = self._values[name]
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {text!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum:g}, not {text!r}")
        return value

    @property
    def db_url(self) -> str:
        return self._values["SAIA_DB_URL"] or f"sqlite:///{os.path.join(self.home, 'saia.db')}"

    @property
    def db_path(self) -> str:
        """Filesystem path of the SQLite database (the only backend supported)."""
        return sqlite_path(self.db_url)

    @property
    def journal_mode(self) -> str:
        mode = self._values["SAIA_JOURNAL_MODE"].lower()
        if mode not in ("delete", "truncate", "persist", "wal"):
            raise SettingsError(f"SAIA_JOURNAL_MODE must be delete, truncate, persist or wal, not {mode!r}")
        return mode

    @property
    def busy_timeout(self) -> float:
        return self._number("SAIA_BUSY_TIMEOUT")

    @property
    def slurm_bin(self) -> str:
        return self._values["SAIA_SLURM_BIN"]

    @property
    def slurm_conf(self) -> str:
        return self._values["SAIA_SLURM_CONF"]

    @property
    def slurm_timeout(self) -> float:
        return self._number("SAIA_SLURM_TIMEOUT", 1)

    @property
    def job_prefix(self) -> str:
        prefix = self._values["SAIA_JOB_PREFIX"]
        if not prefix or not all(c.isalnum() or c in "-." for c in prefix):
            raise SettingsError(f"SAIA_JOB_PREFIX must be letters, digits, '-' or '.', not {prefix!r}")
        return prefix

    @property
    def port_range(self) -> tuple[int, int]:
        text = self._values["SAIA_PORT_RANGE"]
        low, sep, high = text.partition("-")
        try:
            lo, hi = int(low), int(high)
        except ValueError:
            raise SettingsError(f"SAIA_PORT_RANGE must look like 61001-62000, not {text!r}") from None
        if not sep or not (1024 <= lo <= hi <= 65535):
            raise SettingsError(f"SAIA_PORT_RANGE must be LOW-HIGH within 1024-65535, not {text!r}")
        return lo, hi

    @property
    def accounting_tz(self) -> str:
        from .accounting.months import TimeError, zone  # stdlib only; not on the request path

        name = self._values["SAIA_ACCOUNTING_TZ"]
        try:
            zone(name)
        except TimeError:
            raise SettingsError(
                f"SAIA_ACCOUNTING_TZ must be a time zone such as UTC or Europe/Berlin, not {name!r}"
            ) from None
        return name

    @property
    def tick_interval(self) -> float:
        return self._number("SAIA_TICK_INTERVAL")

    @property
    def tick_timeout(self) -> float:
        return self._number("SAIA_TICK_TIMEOUT", 1)

    @property
    def lease_ttl(self) -> float:
        return self._number("SAIA_LEASE_TTL", 1)

    @property
    def probe_timeout(self) -> float:
        return self._number("SAIA_PROBE_TIMEOUT", 0.05)

    @property
    def connect_timeout(self) -> float:
        return self._number("SAIA_CONNECT_TIMEOUT", 0.05)

    @property
    def backend_timeout(self) -> float:
        return self._number("SAIA_BACKEND_TIMEOUT", 0.05)

    @property
    def python(self) -> str:
        import sys

        return self._values["SAIA_PYTHON"] or sys.executable

    @property
    def log_dir(self) -> str:
        return os.path.join(self.home, "logs")

    @property
    def jobs_dir(self) -> str:
        """Where backend jobs run and write their Slurm output."""
        return os.path.join(self.home, "jobs")


def sqlite_path(url: str) -> str:
    """Path of a ``sqlite:///PATH`` URL; other databases are not supported."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise SettingsError(f"SAIA_DB_URL must be sqlite:///PATH, not {url!r}")
    path = url[len(prefix) :].split("?", 1)[0]
    return path
