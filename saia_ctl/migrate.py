"""Schema migrations: upgrade, current revision, and the guard every command uses."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from .db import DatabaseError

_PACKAGE = Path(__file__).resolve().parent
# Installed from a wheel, migrations/ is inside the package (pyproject.toml maps
# it there); in a checkout it is at the top of the repository.
MIGRATIONS_DIR = next(
    (d for d in (_PACKAGE / "migrations", _PACKAGE.parent / "migrations") if d.is_dir()),
    _PACKAGE.parent / "migrations",
)


def _config(engine: Engine | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


_REVISION = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(?P<value>.+)$", re.MULTILINE)


def head_revision() -> str:
    """The newest revision in migrations/ (there must be exactly one head).

    Read from the migration files with a regular expression rather than
    through Alembic, whose import costs ~0.4 s on every command;
    ``tests/test_migrations.py`` checks that both agree.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = {m[1]: ast.literal_eval(m["value"].strip()) for m in _REVISION.finditer(path.read_text())}
        if "revision" not in found:
            continue
        revisions.add(found["revision"])
        down = found.get("down_revision")
        parents.update([down] if isinstance(down, str) else (down or ()))
    heads = sorted(revisions - parents)
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
