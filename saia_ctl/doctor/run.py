"""All checks in order; each one a line. Checks that need what an earlier one found
(a usable database, the Slurm commands) are reported as skipped, with the reason."""

from __future__ import annotations

import getpass
import os
import pwd
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial

from ..install_paths import forced_command_path
from ..settings import Settings, SettingsError
from . import account, database, ports, slurm_checks
from .filesystems import read_mounts
from .result import CheckResult, failed, passed, skipped

MIN_FREE = 1 << 30  # bytes free beyond the database's size
FIX_DB_FIRST = "fix the database check above first"
FIX_SETTING = "correct it in $SAIA_HOME/saia.conf or the environment"
FIX_SLURM_FIRST = "fix the slurm commands check above first"


@dataclass(frozen=True)
class Options:
    """What doctor checks; every default is what the running installation uses."""

    home: str | None = None  # --home; else SAIA_HOME
    environ: dict[str, str] | None = None  # default: os.environ
    settings: Callable[[], Settings] | None = None  # default: Settings(home, environ)
    account_home: str | None = None  # the forced-command account's home; default: this user's
    shell: str | None = None  # its login shell; default: this user's (password database)
    authorized_keys: str | None = None  # default: ACCOUNT_HOME/.ssh/authorized_keys
    forced_command: str | None = None  # default: this installation's cloud_interface.sh
    shell_threshold: float = account.SHELL_THRESHOLD
    min_free: int = MIN_FREE
    mounts_text: str | None = None  # default: /proc/mounts


def _timed(func: Callable[[], CheckResult], name: str) -> CheckResult:
    """Run one check; its time goes into the result, a bug in it becomes a ✗ line."""
    start = time.monotonic()
    try:
        result = func()
    except SettingsError as e:  # a setting the check needs has a value that cannot be used
        result = failed(name, str(e), FIX_SETTING)
    except Exception as exc:
        if os.environ.get("SAIA_DEBUG") == "1":
            raise
        text = " ".join(str(exc).split()) or exc.__class__.__name__
        result = failed(
            name,
            f"the check itself failed: {exc.__class__.__name__}: {text}",
            "a bug: run with SAIA_DEBUG=1 for the traceback and report it",
        )
    return CheckResult(result.name, result.ok, result.detail, result.fix, round(time.monotonic() - start, 4))


def run_checks(opts: Options | None = None) -> Iterator[CheckResult]:
    """Every check, one result each, in order (a generator: print them as they come)."""
    opts = opts or Options()
    environ = dict(os.environ if opts.environ is None else opts.environ)
    make_settings = opts.settings or (lambda: Settings(home=opts.home, environ=environ))
    settings: Settings | None = None
    try:
        settings = make_settings()
        db_path = settings.db_path
    except SettingsError as e:
        no_home = settings is None and not (opts.home or environ.get("SAIA_HOME"))
        settings = None
        yield failed("settings", str(e), "set SAIA_HOME or pass --home" if no_home else FIX_SETTING)
        reason = "the settings are not usable (see above)"
        for name in (
            "database",
            "journal mode",
            "free space",
            "slurm commands",
            "batch scripts",
            "port range",
        ):
            yield skipped(name, reason, "fix the settings first")
    else:
        yield passed("settings", f"SAIA_HOME={settings.home}")
        if settings.retired:
            yield _retired(settings.retired)
        db_problem = yield from _database_checks(settings, db_path, opts)
        yield from _slurm_checks(settings, db_path, db_problem)
    yield from _account_checks(opts, environ, settings.home if settings is not None else None)


def _retired(names: list[str]) -> CheckResult:
    """Settings no longer read: harmless (ignored), but the operator should know why."""
    from ..settings import RETIRED

    return failed(
        "retired settings",
        "; ".join(f"{name} is no longer read: {RETIRED[name]}" for name in names),
        f"delete {', '.join(names)} from $SAIA_HOME/saia.conf and the environment",
    )


def _database_checks(
    settings: Settings, db_path: str, opts: Options
) -> Generator[CheckResult, None, str | None]:
    """The database's checks; returns why the database cannot be used (None when it can)."""
    reach = _timed(lambda: database.check_reachable(db_path), "database")
    yield reach
    problem = None if reach.ok else reach.detail
    if problem is not None:
        yield skipped("database writable", problem, FIX_DB_FIRST)
        yield skipped("database migration", problem, FIX_DB_FIRST)
    else:
        yield _timed(
            lambda: database.check_writable(db_path, min(settings.busy_timeout, 10.0)), "database writable"
        )
        migration = _timed(lambda: database.check_migration(db_path), "database migration")
        yield migration
        problem = None if migration.ok else migration.detail
    mounts = opts.mounts_text if opts.mounts_text is not None else read_mounts()
    yield _timed(lambda: _journal(settings, db_path, mounts), "journal mode")
    yield _timed(lambda: database.check_free_space(db_path, opts.min_free), "free space")
    return problem


def _slurm_checks(settings: Settings, db_path: str, db_problem: str | None) -> Iterator[CheckResult]:
    commands = _timed(lambda: slurm_checks.check_commands(settings), "slurm commands")
    yield commands
    if commands.ok:
        yield _timed(lambda: slurm_checks.check_controller(settings), "slurm controller")
    else:
        yield skipped("slurm controller", "the Slurm commands are not usable", FIX_SLURM_FIRST)
    yield from _batch_scripts(settings, db_path, db_problem, commands.ok)
    yield _timed(lambda: _ports(settings, db_path, db_problem), "port range")


def _account_checks(opts: Options, environ: dict[str, str], saia_home: str | None) -> Iterator[CheckResult]:
    """The forced-command account: by default this user, as the password database has it
    (sshd uses that home and shell, whatever $HOME and $SHELL say)."""
    user = getpass.getuser()
    try:
        entry = pwd.getpwuid(os.getuid())
        pw_home, pw_shell = entry.pw_dir, entry.pw_shell
    except KeyError:
        pw_home, pw_shell = environ.get("HOME", "/"), environ.get("SHELL", "/bin/sh")
    home = opts.account_home or pw_home
    shell = opts.shell or pw_shell or "/bin/sh"
    yield _timed(
        lambda: account.check_shell_startup(shell, home, user, opts.shell_threshold), "shell start-up"
    )
    keys = opts.authorized_keys or os.path.join(home, ".ssh", "authorized_keys")
    forced = opts.forced_command or str(forced_command_path())
    yield _timed(lambda: account.check_authorized_keys(keys, forced, saia_home), "authorized_keys")


def _journal(settings: Settings, db_path: str, mounts: str) -> CheckResult:
    try:
        configured = settings.journal_mode
    except SettingsError as e:
        return failed("journal mode", str(e), "set SAIA_JOURNAL_MODE=delete in $SAIA_HOME/saia.conf")
    return database.check_journal_mode(db_path, configured, mounts)


def _batch_scripts(
    settings: Settings, db_path: str, db_problem: str | None, slurm_ok: bool
) -> Iterator[CheckResult]:
    if db_problem is not None:
        yield skipped("batch scripts", f"the enabled services are not known: {db_problem}", FIX_DB_FIRST)
        return
    try:
        services = database.enabled_services(db_path)
    except Exception as e:  # the migration check passed, so this is unexpected
        if os.environ.get("SAIA_DEBUG") == "1":
            raise
        yield failed("batch scripts", f"cannot read the services: {e}", FIX_DB_FIRST)
        return
    if not services:
        yield failed(
            "batch scripts", "no enabled service", "import the services: `saia-ctl init config.json`"
        )
        return
    try:
        port = settings.port_range[0]
    except SettingsError:
        port = 61001
    for service_id, script in services:
        name = f"batch script {service_id}"
        if not slurm_ok:
            exists = "exists" if os.path.isfile(script) else "is missing"
            yield skipped(name, f"{script} {exists}; sbatch is not usable", FIX_SLURM_FIRST)
            continue
        yield _timed(partial(slurm_checks.check_batch_script, settings, service_id, script, port), name)


def _ports(settings: Settings, db_path: str, db_problem: str | None) -> CheckResult:
    try:
        port_range = settings.port_range
    except SettingsError as e:
        return failed("port range", str(e), "set SAIA_PORT_RANGE=LOW-HIGH in $SAIA_HOME/saia.conf")
    if db_problem is not None:
        return ports.check_port_range(port_range, set(), " (live jobs not read: the database is not usable)")
    return ports.check_port_range(port_range, database.live_ports(db_path))
