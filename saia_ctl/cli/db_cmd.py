"""`saia-ctl db ...`: schema migrations, retention (prune) and the accounting ledger.

The long ones (`prune`, `ledger`) show a progress bar on stderr when it is a terminal."""

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
    tz: str | None = typer.Option(
        None,
        "--tz",
        help="Time zone the months are cut in (as in `saia-ctl report --tz`; default: SAIA_ACCOUNTING_TZ).",
    ),
) -> None:
    """Keep each month's report figures in rollup tables, then delete its request rows."""
    import time

    from ..accounting.prune import prune as do_prune
    from .progress import shown

    zone = tz or common.settings().accounting_tz
    with shown("rolling up and pruning months") as progress:
        result = do_prune(common.engine(), before, zone, time.time(), progress=progress)
    rolled = ", ".join(result.months) if result.months else "none"
    common.echo(f"rolled up: {rolled}; deleted {result.deleted} request rows")


@app.command("ledger")
@common.command
def ledger() -> None:
    """Fold every due piece into the report ledger now (the tick folds one piece per tick).

    A closed day is folded whole, the open day up to its last whole hour that ended 15
    minutes ago, never past a request still open; a month's report reads the folded part
    and scans only the rows of the rest.
    """
    import time

    from ..accounting.figures import dbapi
    from ..accounting.ledger import cursor, fold_engine
    from ..accounting.zones import iso_utc
    from ..db import read_session
    from .progress import shown

    tz = common.settings().accounting_tz
    engine = common.engine()
    with shown("folding into the ledger") as progress:
        result = fold_engine(engine, tz, time.time(), progress=progress)
    with read_session(engine) as s:
        at = cursor(dbapi(s), tz)
    upto = f"folded up to {iso_utc(at)} ({tz})" if at is not None else "nothing to fold yet"
    days = result.days
    if days:
        common.echo(
            f"folded {len(result.pieces)} piece(s) of {len(days)} day(s), {days[0]} to {days[-1]},"
            f" in {result.seconds:.1f} s (longest write {max(result.writes) * 1000:.0f} ms); {upto}"
        )
    else:
        common.echo(f"nothing due to fold; {upto}")
