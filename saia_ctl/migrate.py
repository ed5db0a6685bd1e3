"""Schema migrations: upgrade, current revision, and the guard every command uses."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect, text

from .db import DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _config(engine: Engine | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest revision in migrations/ (there is exactly one head)."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_config()).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"migrations have {len(heads)} heads, expected one: {heads}")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        conn.rollback()
    return row[0] if row else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    cfg = _config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = _config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        conn.commit()


def require_current(engine: Engine) -> None:
    """Refuse to work on a database that is not at the newest migration."""
    current = current_revision(engine)
    head = head_revision()
    if current is None:
        raise DatabaseError("the database is empty: run `saia-ctl db upgrade` first")
    if current != head:
        raise DatabaseError(
            f"the database is at migration {current}, not the newest ({head}): run `saia-ctl db upgrade`"
        )
