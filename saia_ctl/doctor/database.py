"""Database checks: reachable, writable, at the newest migration, journal mode, free space.

Doctor never creates or changes the database: it reads the file's header,
opens it read-only, and proves it writable with a write that is rolled back.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.pool import NullPool

from ..db import DatabaseError
from ..migrate import current_revision, head_revision
from ..models import LIVE_JOB_STATES, Job, Service
from .filesystems import existing_folder, is_network_fs, mount_of
from .result import CheckResult, failed, passed

SQLITE_MAGIC = b"SQLite format 3\x00"
_WAL_VERSION = 2  # header bytes 18 and 19: 1 = rollback journal, 2 = WAL

FIX_LOCATION = "point SAIA_HOME (or --home, or SAIA_DB_URL) at this installation's state directory"


def _uri(path: str, mode: str) -> str:
    quoted = os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode={mode}"


def read_header(path: str) -> bytes:
    """The first 100 bytes of the file (SQLite's header)."""
    with open(path, "rb") as f:
        return f.read(100)


def header_is_wal(header: bytes) -> bool:
    """True when an SQLite header says the file is in WAL mode."""
    return len(header) >= 20 and header[18] == _WAL_VERSION and header[19] == _WAL_VERSION


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_reachable(path: str) -> CheckResult:
    """The file exists, is SQLite and opens (read-only)."""
    name = "database"
    if not os.path.exists(path):
        return failed(
            name, f"no database at {path}", f"run `saia-ctl db upgrade` to create it, or {FIX_LOCATION}"
        )
    if not os.path.isfile(path):
        return failed(name, f"{path} is not a file", FIX_LOCATION)
    try:
        header = read_header(path)
    except OSError as e:
        return failed(
            name, f"cannot read {path}: {e.strerror}", "give this account read and write access to it"
        )
    size = os.path.getsize(path)
    if size == 0:
        return passed(name, f"{path} (empty file)")
    if not header.startswith(SQLITE_MAGIC):
        return failed(name, f"{path} is not an SQLite database", FIX_LOCATION)
    try:
        conn = sqlite3.connect(_uri(path, "ro"), uri=True, timeout=5)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return failed(name, f"{path} cannot be read: {e}", "restore it from a backup, or " + FIX_LOCATION)
    return passed(name, f"{path} (SQLite, {_size(size)})")


def check_writable(path: str, busy_timeout: float) -> CheckResult:
    """A write transaction (BEGIN IMMEDIATE, a table created, ROLLBACK) succeeds.

    The rollback journal is created next to the file, so this also proves the
    folder writable; nothing is left behind.
    """
    name = "database writable"
    try:
        conn = sqlite3.connect(_uri(path, "rw"), uri=True, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as e:
        return failed(name, f"cannot open {path} for writing: {e}", _fix_writable(path))
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE saia_doctor_probe (x INTEGER)")
        conn.execute("INSERT INTO saia_doctor_probe VALUES (1)")
        conn.execute("ROLLBACK")
    except sqlite3.Error as e:
        if "locked" in str(e) or "busy" in str(e):
            return failed(
                name,
                f"the write lock was not free within {busy_timeout:g} s: {e}",
                "find the process that holds it (a stuck tick or report: `saia-ctl ticks list`, `fuser`)",
            )
        return failed(name, f"a write to {path} failed: {e}", _fix_writable(path))
    finally:
        conn.close()
    return passed(name, "a write transaction succeeded (rolled back)")


def _fix_writable(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return (
        f"make {path} and its folder {folder} writable for this account "
        "(SQLite writes its journal next to the file), on a filesystem mounted read-write"
    )


@contextmanager
def readonly_engine(path: str) -> Iterator[Engine]:
    """An engine on the existing file, read-only (the migration helpers take an engine)."""
    uri = _uri(path, "ro")
    engine = create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=5), poolclass=NullPool
    )
    try:
        yield engine
    finally:
        engine.dispose()


def check_migration(path: str) -> CheckResult:
    """The database is saia-ctl's and at the newest migration of this installation."""
    name = "database migration"
    try:
        head = head_revision()
    except (DatabaseError, OSError) as e:
        return failed(name, f"cannot read this installation's migrations: {e}", "reinstall saia-ctl")
    with readonly_engine(path) as engine:
        current = current_revision(engine)
        if current is None:
            with engine.connect() as conn:
                tables = [
                    r[0]
                    for r in conn.exec_driver_sql(
                        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                    )
                ]
            if tables:
                shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
                return failed(
                    name,
                    f"not a saia-ctl database (no alembic_version table; it has: {shown})",
                    FIX_LOCATION,
                )
            return failed(
                name, f"the database is empty (newest migration: {head})", "run `saia-ctl db upgrade`"
            )
    if current != head:
        return failed(name, f"at migration {current}, not the newest ({head})", "run `saia-ctl db upgrade`")
    return passed(name, f"at {head} (newest)")


def enabled_services(path: str) -> list[tuple[str, str]]:
    """(service id, batch script) of every enabled service."""
    with readonly_engine(path) as engine, engine.connect() as conn:
        rows = conn.execute(select(Service.id, Service.sbatch).where(Service.enabled).order_by(Service.id))
        return [(str(r[0]), str(r[1])) for r in rows]


def live_ports(path: str) -> set[int]:
    """Ports held by live jobs."""
    states = [s.value for s in LIVE_JOB_STATES]
    with readonly_engine(path) as engine, engine.connect() as conn:
        rows = conn.execute(select(Job.port).where(Job.ended_at.is_(None), Job.state.in_(states)))
        return {int(r[0]) for r in rows}


def journal_verdict(configured: str, file_is_wal: bool, folder: str, fs_type: str | None) -> CheckResult:
    """Whether the journal mode fits the filesystem (pure: the caller found the facts)."""
    name = "journal mode"
    where = f"{folder} is on {fs_type}" if fs_type else f"the filesystem of {folder} is unknown"
    if fs_type is not None and is_network_fs(fs_type):
        wal = [
            w
            for w, on in (
                ("configured (SAIA_JOURNAL_MODE)", configured == "wal"),
                ("the file's", file_is_wal),
            )
            if on
        ]
        if wal:
            return failed(
                name,
                f"{' and '.join(wal)} journal mode is wal, but {where}, a network filesystem: WAL keeps "
                "its index in shared memory, which a network filesystem does not share across hosts "
                "(concurrent writers on two hosts can corrupt the database)",
                "set SAIA_JOURNAL_MODE=delete (in $SAIA_HOME/saia.conf); the next saia-ctl command "
                "switches the file back",
            )
        return passed(name, f"{configured} ({where}, a network filesystem: a rollback journal is right)")
    note = " (wal: safe only while every process uses this host's disk)" if configured == "wal" else ""
    file_note = (
        " (the file is in wal mode until the next connection switches it)"
        if file_is_wal and configured != "wal"
        else ""
    )
    return passed(name, f"{configured}{note}{file_note}; {where}, local")


def check_journal_mode(path: str, configured: str, mounts_text: str) -> CheckResult:
    folder = existing_folder(path)
    mount = mount_of(folder, mounts_text)
    try:
        file_is_wal = os.path.isfile(path) and header_is_wal(read_header(path))
    except OSError:
        file_is_wal = False
    return journal_verdict(configured, file_is_wal, folder, mount.fs_type if mount else None)


def check_free_space(path: str, min_free: int) -> CheckResult:
    """Free space on the database's filesystem: at least ``min_free`` plus the database's size
    (a large transaction's journal, or a VACUUM, can take as much as the database)."""
    name = "free space"
    folder = existing_folder(path)
    try:
        st = os.statvfs(folder)
    except OSError as e:
        return failed(name, f"cannot read the free space of {folder}: {e.strerror}", FIX_LOCATION)
    free = st.f_bavail * st.f_frsize
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    need = min_free + size
    detail = f"{_size(free)} free in {folder}"
    if free < need:
        return failed(
            name,
            f"{detail}, less than {_size(need)} (the database's size + {_size(min_free)}): writes will "
            "fail with 'database or disk is full' and requests get 503",
            "free space on that filesystem, or move the state directory to a larger one",
        )
    return passed(name, detail)
