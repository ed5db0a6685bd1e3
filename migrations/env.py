"""Alembic environment: batch mode on SQLite, one transaction per migration.

The connection comes from the caller (``saia_ctl.migrate`` passes one in
``config.attributes["connection"]``) or, for the plain ``alembic`` command,
from saia-ctl's settings.
"""

from alembic import context

from saia_ctl.db import engine_for
from saia_ctl.models import Base
from saia_ctl.settings import Settings

target_metadata = Base.metadata


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        transaction_per_migration=True,
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_for(Settings())
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run_migrations_online()
