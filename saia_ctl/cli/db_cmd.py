"""`saia-ctl db ...`: schema migrations."""

from __future__ import annotations

import typer

from . import common

app = typer.Typer(
    help="Database schema: upgrade to the newest migration, show the current one.", no_args_is_help=True
)


@app.command("upgrade")
@common.command
def upgrade() -> None:
    """Create the database or migrate it to the newest schema (safe to run again)."""
    from ..migrate import current_revision, head_revision
    from ..migrate import upgrade as do_upgrade

    eng = common.engine(migrated=False)
    before = current_revision(eng)
    do_upgrade(eng)
    after = current_revision(eng)
    if before == after:
        common.echo(f"database already at {after} (newest)")
    else:
        common.echo(f"database upgraded from {before or 'empty'} to {after}")
    assert after == head_revision()


@app.command("current")
@common.command
def current() -> None:
    """Print the migration the database is at, and whether it is the newest."""
    from ..migrate import current_revision, head_revision

    eng = common.engine(migrated=False)
    rev = current_revision(eng)
    head = head_revision()
    if rev is None:
        common.echo(f"empty (newest is {head}): run `saia-ctl db upgrade`")
    elif rev == head:
        common.echo(f"{rev} (newest)")
    else:
        common.echo(f"{rev} (newest is {head}): run `saia-ctl db upgrade`")


@app.command("prune")
@common.command
def prune(
    before: str = typer.Option(
        ..., "--before", help="Delete request rows of the months before this one (YYYY-MM)."
    ),
    tz: str = typer.Option(
        "UTC", "--tz", help="Time zone the months are cut in (as in `saia-ctl report --tz`)."
    ),
) -> None:
    """Keep each month's report figures in rollup tables, then delete its request rows."""
    import time

    from ..accounting.prune import prune as do_prune

    result = do_prune(common.engine(), before, tz, time.time())
    rolled = ", ".join(result.months) if result.months else "none"
    common.echo(f"rolled up: {rolled}; deleted {result.deleted} request rows")
