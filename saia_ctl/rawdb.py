"""Raw SQL on the database: one way to open a connection and run a transaction.

Standard library only, because the request path (one interpreter per request)
uses it; so do the ledger and the scheduler's observe step. SQLAlchemy
(``saia_ctl.db``) keeps the schema, the migrations and the ORM-shaped CLI
work, and sets its connections up with ``apply_pragmas`` from here, so the
pragmas are declared once.

- ``connect`` opens an existing database (never creates one) in autocommit
  mode (``isolation_level=None``: we say BEGIN ourselves) with rows readable
  by column name (``row["id"]``).
- ``immediate(conn)`` is one write unit of work: ``BEGIN IMMEDIATE`` takes the
  write lock up front, so it never fails half-way on a lock upgrade; COMMIT
  at the end, ROLLBACK on an exception. ``deferred(conn)`` is a read
  transaction (one consistent snapshot), rolled back at the end.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms per request; mypy still sees these
if TYPE_CHECKING:
    import sqlite3
    from typing import Any
else:
    import sys

    def _load_sqlite3():  # type: ignore[no-untyped-def]
        """The C module ``_sqlite3`` (``sqlite3`` adds datetime adapters we never use).

        Its init imports ``functools`` only for ``lru_cache`` (the statement
        cache), which drags in ``collections`` & co: ~3 ms of every request.
        When nothing has loaded ``functools`` yet, it gets a stand-in built on
        the same C ``_lru_cache_wrapper`` for the duration of that import,
        and the stand-in is removed right after: a later ``import functools``
        gets the real module. Any surprise: the plain import.
        """
        if "functools" in sys.modules or "_sqlite3" in sys.modules:
            import _sqlite3

            return _sqlite3
        try:
            import _functools

            stand_in = type(sys)("functools")

            def lru_cache(maxsize=128, typed=False):  # type: ignore[no-untyped-def]
                return lambda f: _functools._lru_cache_wrapper(f, maxsize, typed, tuple)

            stand_in.lru_cache = lru_cache  # type: ignore[attr-defined]
            sys.modules["functools"] = stand_in
            try:
                import _sqlite3
            finally:
                del sys.modules["functools"]
            return _sqlite3
        except Exception:  # pragma: no cover - another CPython's internals
            sys.modules.pop("_sqlite3", None)
            import sqlite3

            return sqlite3

    sqlite3 = _load_sqlite3()

Error = sqlite3.Error
IntegrityError = sqlite3.IntegrityError
Connection = sqlite3.Connection
Row = sqlite3.Row


class DatabaseUnavailable(Exception):
    """The database file cannot be opened or set up (missing, unreadable, not SQLite)."""


def apply_pragmas(conn: Any, journal_mode: str, busy_timeout: float) -> None:
    """The pragmas of every connection, raw or SQLAlchemy's (one declaration).

    The journal mode is only set when it differs: switching costs a write
    lock, and a rollback-journal mode is per connection anyway. ``synchronous``
    is NORMAL under WAL (safe there) and SQLite's default FULL otherwise.
    """
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    row = conn.execute("PRAGMA journal_mode").fetchone()
    if row is None or str(row[0]).lower() != journal_mode:
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
    if journal_mode == "wal":
        conn.execute("PRAGMA synchronous = NORMAL")


def _uri(path: str) -> str:
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode=rw"


def connect(path: str, *, journal_mode: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the existing database at ``path`` with the pragmas; rows by name."""
    try:
        conn = sqlite3.connect(
            _uri(path), uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as e:
        raise DatabaseUnavailable(f"cannot open the database {path}: {e}") from None
    try:
        apply_pragmas(conn, journal_mode, busy_timeout)
    except sqlite3.Error as e:
        conn.close()
        raise DatabaseUnavailable(f"cannot use the database {path}: {e}") from None
    conn.row_factory = sqlite3.Row
    return conn


SQLITE_BUSY = 5
POLL_FIRST = 0.0005  # seconds: the first wait for another writer's lock in ``begin_polling``
POLL_STEP = 0.002  # seconds: the longest


def begin_polling(
    conn: sqlite3.Connection,
    busy_timeout: float,
    sleep: Any = None,
    clock: Any = None,
) -> None:
    """BEGIN IMMEDIATE, waiting for another writer in steps of at most ``POLL_STEP``.

    SQLite's own busy handler backs off to sleeps of 100 ms: a process that
    writes again and again (another tunnel session's batcher) takes the lock
    back long before such a sleeper looks again, and its requests stall for
    up to seconds. Polling in short steps keeps the waiter's turn near the
    moment the lock is free. Gives up after ``busy_timeout`` seconds with
    SQLite's own error (the caller's 503); the connection's busy timeout is
    restored for the rest of the transaction (COMMIT waits for readers).
    """
    if sleep is None or clock is None:
        import time

        sleep = sleep or time.sleep
        clock = clock or time.monotonic
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = clock() + busy_timeout
        delay = POLL_FIRST
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", SQLITE_BUSY) & 0xFF != SQLITE_BUSY or clock() >= deadline:
                    raise
            sleep(delay)
            delay = min(POLL_STEP, delay * 2)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")


class immediate:
    """One write transaction: BEGIN IMMEDIATE, COMMIT, ROLLBACK on error.

    ``poll``: wait for the write lock with ``begin_polling`` (this busy timeout,
    in seconds) rather than SQLite's busy handler.
    A class, not ``contextlib.contextmanager``: contextlib costs the request
    path a few milliseconds of imports.
    """

    def __init__(self, conn: sqlite3.Connection, poll: float | None = None) -> None:
        self.conn = conn
        self.poll = poll

    def __enter__(self) -> sqlite3.Connection:
        if self.poll is None:
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            begin_polling(self.conn, self.poll)
        return self.conn

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                _rollback(self.conn)
                raise
        else:
            _rollback(self.conn)


class deferred:
    """One read transaction (a consistent snapshot), rolled back at the end."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN DEFERRED")
        return self.conn

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        _rollback(self.conn)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # a failed COMMIT may have rolled back already
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
