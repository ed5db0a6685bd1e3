"""`saia-ctl tick`, `saia-ctl ticks list` and `ticks show`: run the scheduler once, show what ticks did."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from . import common

ticks_app = typer.Typer(help="The scheduler's tick log.", no_args_is_help=True)


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@common.command
def tick(
    if_due: Annotated[
        bool,
        typer.Option("--if-due", help="Run only if the last tick began at least SAIA_TICK_INTERVAL ago."),
    ] = False,
) -> None:
    """Run one scheduler tick now and print what it saw, decided and did."""
    from ..scheduler.tick import make_slurm, run_tick

    settings = common.settings()
    result = run_tick(common.engine(), settings, make_slurm(settings), if_due=if_due)
    if result.summary:
        common.echo(result.summary)
    if result.error:
        if result.traceback:
            # A bug: still one line here; the traceback is in the tick's log row.
            if os.environ.get("SAIA_DEBUG") == "1":
                typer.echo(result.traceback.rstrip(), err=True)
            common.fail(f"{result.error} (traceback: saia-ctl ticks show {result.tick_id})")
        common.fail(result.error)


@ticks_app.command("list")
@common.command
def list_ticks(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many recent ticks.")] = 20,
    fmt: common.FormatOption = common.Format.table,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also the holder and the traceback of a failed tick.")
    ] = False,
) -> None:
    """Show recent ticks, newest first: when, how long, the summary, errors."""
    from ..scheduler.ticklog import recent_ticks

    rows: list[dict[str, Any]] = []
    for t in recent_ticks(common.engine(), limit):
        row = dict(t)
        if fmt is common.Format.table:
            row["started_at"] = _iso(t["started_at"])
            row["duration"] = "(unfinished)" if t["duration"] is None else f"{t['duration']:.2f}s"
        rows.append(row)
    columns: tuple[str, ...] = ("id", "started_at", "duration", "summary", "error")
    if verbose:
        columns = ("id", "started_at", "duration", "holder", "summary", "error", "traceback")
    if fmt is not common.Format.table:
        columns = ("id", "started_at", "duration", "holder", "summary", "actions", "error", "traceback")
    common.echo(common.render(rows, fmt, columns))


@ticks_app.command("show")
@common.command
def show_tick(
    tick_id: Annotated[int, typer.Argument(help="The tick's id (see `saia-ctl ticks list`).")],
    fmt: common.FormatOption = common.Format.table,
) -> None:
    """Show one tick in full: its summary, every action, the error and its traceback."""
    from ..scheduler.ticklog import get_tick

    t = get_tick(common.engine(), tick_id)
    if t is None:
        raise common.CLIError(f"no tick {tick_id}")
    if fmt is not common.Format.table:
        common.echo(common.render([t], fmt, list(t)))
        return
    duration = "(unfinished)" if t["duration"] is None else f"{t['duration']:.2f}s"
    lines = [
        f"tick {t['id']}: started {_iso(t['started_at'])}, {duration}, by {t['holder']}",
        "summary:",
        *(f"  {line}" for line in (t["summary"] or "").splitlines()),
        "actions:",
        *(f"  {json.dumps(a)}" for a in t["actions"]),
    ]
    if t["error"] is not None:
        lines.append(f"error: {t['error']}")
    if t["traceback"]:
        lines += ["traceback:", t["traceback"].rstrip()]
    common.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("tick")(tick)
    app.add_typer(ticks_app, name="ticks")
