"""``rawdb.begin_polling``: the tunnel's batcher waits for another process's write
lock in short steps (SQLite's own busy handler backs off to 100 ms sleeps, and
a batcher that writes again and again starved the other for seconds)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saia_ctl import rawdb


def _db(tmp_path: Path) -> str:
    path = str(tmp_path / "x.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    return path


def test_waits_in_short_steps_and_takes_the_lock_once_it_is_free(tmp_path: Path) -> None:
    path = _db(tmp_path)
    holder = rawdb.connect(path, journal_mode="delete", busy_timeout=5)
    waiter = rawdb.connect(path, journal_mode="delete", busy_timeout=5)
    holder.execute("BEGIN IMMEDIATE")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 20:
            holder.execute("COMMIT")  # the other writer is done

    rawdb.begin_polling(waiter, 5.0, sleep=sleep, clock=lambda: 0.0)
    assert waiter.in_transaction
    waiter.execute("INSERT INTO t VALUES (1)")
    waiter.execute("COMMIT")
    assert len(sleeps) == 20  # it looked again after every step, and got the lock on the first look after
    assert max(sleeps) <= rawdb.POLL_STEP
    # the connection's own busy timeout is back for the rest of the transaction
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_gives_up_after_the_busy_timeout_with_sqlites_error(tmp_path: Path) -> None:
    path = _db(tmp_path)
    holder = rawdb.connect(path, journal_mode="delete", busy_timeout=5)
    waiter = rawdb.connect(path, journal_mode="delete", busy_timeout=2)
    holder.execute("BEGIN IMMEDIATE")
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(rawdb.Error, match="locked"):
        rawdb.begin_polling(waiter, 0.5, sleep=sleep, clock=lambda: now[0])
    assert 0.5 <= now[0] <= 0.5 + rawdb.POLL_STEP
    assert not waiter.in_transaction
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 500
    holder.execute("ROLLBACK")


def test_immediate_with_poll_commits_and_rolls_back(tmp_path: Path) -> None:
    path = _db(tmp_path)
    conn = rawdb.connect(path, journal_mode="delete", busy_timeout=5)
    with rawdb.immediate(conn, poll=1.0):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError), rawdb.immediate(conn, poll=1.0):
        conn.execute("INSERT INTO t VALUES (2)")
        _ = 1 / 0
    assert [r[0] for r in conn.execute("SELECT x FROM t")] == [1]
