"""Global settings, declared once: name, default, parser, help.

Standard library only: the request path (``request_path/``) imports this module on
every request, so it must stay cheap. A value comes from, in order:

1. the process environment (``SAIA_*``);
2. ``$SAIA_HOME/saia.conf`` — ``KEY=VALUE`` lines, ``#`` comments. sshd starts
   the forced command with an almost empty environment, so this file is how an
   operator configures the request path on a login node;
3. the default below.

Every value is parsed and checked when the settings are loaded: a bad one is a
one-line ``SettingsError`` naming the setting and the value, before any work.
The registry below also makes the README's settings table
(``python -m saia_ctl.settings --markdown``; ``tests/test_docs.py`` holds the
two equal).

Per-service knobs (ready timeout, idle time, hold time, ...) live in
``config.json`` instead; see ``saia_ctl/config.py``.
"""

from __future__ import annotations

import os
import sys

from .errors import SaiaError

TYPE_CHECKING = False  # typing costs milliseconds per request; mypy still sees these
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    Parser: TypeAlias = Callable[[str, str], Any]


class SettingsError(SaiaError, ValueError):
    """A setting has a value that cannot be used."""


# --- parsers: (setting name, text) -> value, or SettingsError ----------------


def text(name: str, value: str) -> str:
    return value


def number(minimum: float) -> Parser:
    """A number of at least ``minimum`` (seconds, mostly)."""

    def parse(name: str, value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {value!r}") from None
        if not result >= minimum:  # also refuses nan
            raise SettingsError(f"{name} must be at least {minimum:g}, not {value!r}")
        return result

    parse.__doc__ = f"a number ≥ {minimum:g}"
    return parse


def choice(*words: str) -> Parser:
    """One of ``words``, any case; the value is lower-cased."""

    def parse(name: str, value: str) -> str:
        word = value.strip().lower()
        if word not in words:
            listed = ", ".join(words[:-1]) + " or " + words[-1]
            raise SettingsError(f"{name} must be {listed}, not {value!r}")
        return word

    return parse


def job_prefix(name: str, value: str) -> str:
    if not value or not all(c.isalnum() or c in "-." for c in value):
        raise SettingsError(f"{name} must be letters, digits, '-' or '.', not {value!r}")
    return value


def port_range(name: str, value: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise SettingsError(f"{name} must look like 61001-62000, not {value!r}") from None
    if not sep or not (1024 <= lo <= hi <= 65535):
        raise SettingsError(f"{name} must be LOW-HIGH within 1024-65535, not {value!r}")
    return lo, hi


def db_url(name: str, value: str) -> str:
    if value:
        sqlite_path(value)  # only SQLite is supported
    return value


def zone_name(name: str, value: str) -> str:
    """Only that a name is given: the zone itself is looked up when first used
    (``Settings.accounting_tz``), because importing zoneinfo costs ~10 ms and the
    request path, which never needs it, loads the settings on every request."""
    if not value.strip():
        raise SettingsError(f"{name} must be a time zone such as UTC or Europe/Berlin, not {value!r}")
    return value.strip()


class Setting:
    """One setting: name, default, parser, help, and the ``Settings`` attribute it
    fills. (Not a dataclass: importing dataclasses pulls in ``inspect``, ~15 ms on
    every request through the request path.)"""

    __slots__ = ("attr", "default", "help", "name", "parse")

    def __init__(self, name: str, default: str, parse: Parser, help: str, attr: str = "") -> None:
        self.name = name
        self.default = default
        self.parse = parse
        self.help = help
        self.attr = attr or name.removeprefix("SAIA_").lower()

    def __repr__(self) -> str:
        return f"Setting({self.name!r}, {self.default!r})"


SETTINGS: tuple[Setting, ...] = (
    Setting("SAIA_HOME", "", text, "State directory (database, logs, job output). `--home` wins."),
    Setting(
        "SAIA_DB_URL",
        "",
        db_url,
        "Database URL (sqlite:///PATH); default sqlite:///$SAIA_HOME/saia.db.",
        attr="_db_url",
    ),
    Setting(
        "SAIA_JOURNAL_MODE",
        "delete",
        choice("delete", "truncate", "persist", "wal"),
        "SQLite journal mode: delete/truncate/persist (safe on shared storage) or wal "
        "(only when every process shares one host's local disk).",
    ),
    Setting("SAIA_BUSY_TIMEOUT", "30", number(0), "Seconds a connection waits for the SQLite write lock."),
    Setting(
        "SAIA_TUNNEL_CPUS",
        "one",
        choice("one", "all"),
        "CPUs a `tunnel` session's process runs on: `one` (of those allowed, chosen by its PID: "
        "its threads share one interpreter lock, which passed between cores costs more CPU "
        "than the work) or `all`.",
    ),
    Setting("SAIA_SLURM_BIN", "", text, "Folder holding sbatch/squeue/scancel/scontrol; default: PATH."),
    Setting(
        "SAIA_SLURM_CONF",
        "",
        text,
        "slurm.conf for the Slurm commands (exported as SLURM_CONF); default: Slurm's own lookup.",
    ),
    Setting("SAIA_SLURM_TIMEOUT", "30", number(1), "Seconds before a Slurm command is given up."),
    Setting(
        "SAIA_JOB_PREFIX",
        "saia",
        job_prefix,
        "Prefix of the Slurm job names this installation submits; jobs are found by it.",
    ),
    Setting("SAIA_PORT_RANGE", "61001-62000", port_range, "Ports handed to backend jobs, inclusive."),
    Setting(
        "SAIA_TICK_INTERVAL",
        "10",
        number(0),
        "`tick --if-due` runs only if the last tick began this many seconds ago.",
    ),
    Setting("SAIA_TICK_TIMEOUT", "60", number(1), "Time bound of one tick, in seconds."),
    Setting(
        "SAIA_LEASE_TTL",
        "90",
        number(1),
        "Seconds after which a scheduler lease left by a killed tick expires.",
    ),
    Setting("SAIA_PROBE_TIMEOUT", "2", number(0.05), "Seconds a readiness or health probe may take."),
    Setting(
        "SAIA_CONNECT_TIMEOUT",
        "5",
        number(0.05),
        "Seconds the request path waits to connect to a backend job (then 502/504).",
    ),
    Setting(
        "SAIA_BACKEND_TIMEOUT",
        "600",
        number(0.05),
        "Seconds the request path waits for a backend's answer headers, and between two pieces of "
        "its answer (a long non-streaming answer sends nothing until it is done).",
    ),
    Setting(
        "SAIA_PYTHON",
        "",
        text,
        "Interpreter that runs background ticks; default: the running one.",
        attr="_python",
    ),
    Setting(
        "SAIA_ACCOUNTING_TZ",
        "UTC",
        zone_name,
        "Zone (IANA name) the accounting months and days are cut in: the default of `report --tz` "
        "and `db prune --tz`, and the zone the tick keeps the report ledger in.",
        attr="_accounting_tz",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}

# Settings that once existed: a saia.conf or an environment that still sets one keeps
# working (the value is ignored), and `saia-ctl doctor` names it with the reason.
RETIRED = {
    "SAIA_FORWARDER": "the optional forwarder was removed: the tunnel "
    "(saia-ctl proxy --tunnel-sessions) replaces it",
}


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
        if not sep or (key not in _BY_NAME and key not in RETIRED):
            raise SettingsError(f"{path}:{number}: not a known SAIA_ setting: {key!r}")
        values[key] = value.strip().strip('"').strip("'")
    return values


class Settings:
    """Resolved settings of one process: every value parsed and checked here, once.

    The attributes are the registry's ``attr`` names (a test holds the two equal).
    """

    home: str
    _db_url: str
    journal_mode: str
    busy_timeout: float
    tunnel_cpus: str
    slurm_bin: str
    slurm_conf: str
    slurm_timeout: float
    job_prefix: str
    port_range: tuple[int, int]
    tick_interval: float
    tick_timeout: float
    lease_ttl: float
    probe_timeout: float
    connect_timeout: float
    backend_timeout: float
    _python: str
    _accounting_tz: str

    def __init__(self, home: str | None = None, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        home = home or env.get("SAIA_HOME") or ""
        if not home:
            raise SettingsError("no state directory: set SAIA_HOME or pass --home")
        home = os.path.abspath(home)
        conf = _read_conf_file(home)
        self._values: dict[str, str] = {}
        for s in SETTINGS:
            value = home if s.name == "SAIA_HOME" else env.get(s.name)
            if value is None or value == "":
                value = conf.get(s.name, s.default)
            parsed = s.parse(s.name, value)
            setattr(self, s.attr, parsed)
            self._values[s.name] = value
        # RETIRED names set in saia.conf or the environment (ignored; doctor names them)
        self.retired: list[str] = [name for name in RETIRED if env.get(name) is not None or name in conf]

    def raw(self, name: str) -> str:
        """The text of a setting as given."""
        return self._values[name]

    @property
    def db_url(self) -> str:
        return self._db_url or f"sqlite:///{os.path.join(self.home, 'saia.db')}"

    @property
    def db_path(self) -> str:
        """Filesystem path of the SQLite database (the only backend supported)."""
        return sqlite_path(self.db_url)

    @property
    def accounting_tz(self) -> str:
        """The accounting zone, looked up now (see ``zone_name``)."""
        from .accounting.zones import TimeError, zone  # stdlib only; zoneinfo only off UTC

        try:
            zone(self._accounting_tz)
        except TimeError:
            raise SettingsError(
                f"SAIA_ACCOUNTING_TZ must be a time zone such as UTC or Europe/Berlin, "
                f"not {self._accounting_tz!r}"
            ) from None
        return self._accounting_tz

    @property
    def python(self) -> str:
        return self._python or sys.executable

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


def markdown() -> str:
    """The README's settings table, made from the registry."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else ""
        lines.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m saia_ctl.settings --markdown  (prints the README's settings table)")
    sys.stdout.write(markdown())
