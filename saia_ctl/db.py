"""The only place that opens the database with SQLAlchemy: URL, transactions;
the connection pragmas are ``rawdb.apply_pragmas`` (one declaration for
SQLAlchemy's connections and the raw ones).

Transactions: the caller owns them. ``write_session`` takes SQLite's write
lock up front (``BEGIN IMMEDIATE``), so a unit of work never fails half-way
on a lock upgrade; ``read_session`` begins a deferred (read) transaction.
Never hold a write session open while calling Slurm or the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from . import rawdb
from .errors import SaiaError
from .settings import Settings


class DatabaseError(SaiaError):
    """The database cannot be used (missing, not migrated, unreadable)."""


@lru_cache(maxsize=8)
def _engine(url: str, journal_mode: str, busy_timeout: float) -> Engine:
    engine = create_engine(url, connect_args={"timeout": busy_timeout})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's own implicit BEGIN is off.
        dbapi_conn.isolation_level = None
        rawdb.apply_pragmas(dbapi_conn, journal_mode, busy_timeout)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def engine_for(settings: Settings) -> Engine:
    """The engine of this installation's database; creates the state directory."""
    path = settings.db_path
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DatabaseError(f"cannot create {folder}: {e.strerror}") from None
    return _engine(settings.db_url, settings.journal_mode, settings.busy_timeout)


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write unit of work: BEGIN IMMEDIATE, commit on success, rollback on error."""
    with Session(engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False) as s:
        with s.begin():
            yield s


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only unit of work (a deferred transaction, rolled back at the end)."""
    with Session(engine, expire_on_commit=False) as s:
        yield s  # closing the session rolls the read transaction back
