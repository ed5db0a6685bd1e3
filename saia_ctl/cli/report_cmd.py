"""`saia-ctl report --month YYYY-MM`: who used what, how much, how well served, at what GPU cost."""

from __future__ import annotations

import enum
import gc
import os
import time
from typing import Annotated

import typer

from . import common


class ReportFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
    html = "html"


class By(enum.StrEnum):
    user = "user"
    service = "service"
    project = "project"
    account = "account"


@common.command
def report(
    month: Annotated[
        str | None, typer.Option("--month", "-m", help="Month YYYY-MM (default: the current month in --tz).")
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option("--tz", help="Time zone the month is cut in (IANA name; default: SAIA_ACCOUNTING_TZ)."),
    ] = None,
    by: Annotated[
        By | None,
        typer.Option(
            "--by",
            help="Only the per-user or the per-service part, the projects (billing), or GPU-hours "
            "per Slurm account (account, then its services: sreport AccountUtilizationByUser's shape).",
        ),
    ] = None,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="Only the reconciliation with Slurm's accounting (sacct): per service, saia-ctl's "
            "GPU-hours against Slurm's for the same jobs, and jobs one side only has.",
        ),
    ] = False,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's requests.")] = None,
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="Output format.")] = ReportFormat.table,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="The table with every column (default: requests, errors, tokens, p50/p95 time and "
            "GPU-hours, to fit 120 columns).",
        ),
    ] = False,
    columns: Annotated[
        str | None,
        typer.Option(
            "--columns",
            help="Only these columns of the table or Markdown, by JSON/CSV key, e.g. "
            "requests,errors_5xx,gpu_hours (the user or service id is always shown).",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder for report.json, the CSV files and report.html "
            "(default: $SAIA_HOME/reports/YYYY-MM/).",
        ),
    ] = None,
    files: Annotated[
        bool,
        typer.Option("--files/--no-files", help="Write the report files, or only print the report."),
    ] = True,
    anonymize: Annotated[
        bool,
        typer.Option(
            "--anonymize", help="Stable pseudonyms instead of user ids (key: $SAIA_HOME/anonymize.key)."
        ),
    ] = False,
    billing: Annotated[
        bool,
        typer.Option("--billing", help="With --by project: one row per project and service (for billing)."),
    ] = False,
) -> None:
    """Monthly accounting per user and per service (requests, tokens, latency, GPU-hours)."""
    from ..accounting.columns import UnknownColumn, parse
    from ..accounting.render import render, write_files
    from ..accounting.report import monthly_report
    from ..accounting.zones import month_of
    from .progress import progress_bar

    if reconcile or by is By.account:
        _slurm_report(month, tz, fmt, by_account=not reconcile, service=service)
        return
    chosen = None
    if (wide or columns is not None) and fmt not in (ReportFormat.table, ReportFormat.markdown):
        option = "--wide" if wide else "--columns"
        common.fail(f"{option} applies to --format table or markdown (JSON, CSV and HTML show every column)")
    if columns is not None:
        if wide:
            common.fail("--columns and --wide cannot be used together")
        try:
            chosen = parse(columns)
        except UnknownColumn as e:
            common.fail(str(e))
    now = time.time()
    settings = common.settings()
    tz = tz or settings.accounting_tz
    month = month or month_of(now, tz)
    if billing and by is not By.project:
        common.fail("--billing goes with --by project")
    if by is By.project:
        _projects(month, tz, now, fmt, billing, user, service, anonymize)
        return
    # A month's report builds millions of small tuples that never form cycles: the cyclic
    # garbage collector only rescans them (~12% of a 1M-request month). One-shot command.
    gc.disable()
    bar = progress_bar("reading the month's requests")  # drawn only when rows are scanned
    try:
        rep = monthly_report(
            common.engine(),
            month,
            tz=tz,
            now=now,
            user=user,
            service=service,
            by=by.value if by else None,
            anonymize_home=settings.home if anonymize else None,
            progress=bar,
        )
    finally:
        gc.enable()
        if bar is not None:
            bar.close()
    for note in rep.notes:
        typer.echo(note, err=True)
    typer.echo(render(rep.data, fmt.value, chosen, wide=wide), nl=False)
    if not files:
        return
    folder = output or os.path.join(settings.home, "reports", rep.data["month"])
    try:
        written = write_files(rep.data, folder)
    except OSError as e:
        # The report was printed; files that cannot be written are not worth a failure.
        common.warn(f"report files not written to {folder}: {e.strerror or e}")
        return
    for path in written:
        typer.echo(f"wrote {path}", err=True)


def _projects(month: str, tz: str, now: float, fmt: ReportFormat, billing: bool, *filters: object) -> None:
    """`report --by project [--billing]`: the month per project, or per project and service."""
    from ..accounting.billing import BILLING_COLUMNS, COLUMNS, by_project

    if any(filters):
        common.fail("--by project takes no --user, --service or --anonymize")
    if fmt not in (ReportFormat.table, ReportFormat.json, ReportFormat.csv):
        common.fail("--by project prints a table, JSON or CSV")
    projects, rows = by_project(common.engine(), month, tz, now)
    chosen, cols = (rows, BILLING_COLUMNS) if billing else (projects, COLUMNS)
    common.echo(common.render(chosen, common.Format(fmt.value), cols))


def _slurm_report(
    month: str | None, tz: str | None, fmt: ReportFormat, *, by_account: bool, service: str | None
) -> None:
    """``--reconcile`` and ``--by account``: saia-ctl's jobs next to Slurm's records of the month."""
    from ..accounting.months import month_window
    from ..accounting.reconcile import by_account as account_rows
    from ..accounting.reconcile import observed_jobs, read_slurm_side, reconcile, reconciliation_rows
    from ..accounting.zones import month_of
    from ..db import read_session
    from ..scheduler.tick import make_slurm

    if fmt not in (ReportFormat.table, ReportFormat.json, ReportFormat.csv):
        common.fail("--reconcile and --by account print --format table, json or csv")
    now = time.time()
    settings = common.settings()
    tz = tz or settings.accounting_tz
    window = month_window(month or month_of(now, tz), tz)
    with read_session(common.engine()) as s:
        jobs = observed_jobs(s, window)
    if service is not None:
        jobs = [j for j in jobs if j.service == service]
    side = read_slurm_side(make_slurm(settings), window)
    if side.note:
        common.warn(side.note)
    if by_account:
        records = {r.job_id: r for r in side.records}
        rows = account_rows(jobs, records, window, now)
    else:
        result = reconcile(jobs, side.records, window, now, settings.job_prefix)
        if service is not None:
            result = {k: v for k, v in result.items() if k == service}
        rows = reconciliation_rows(result, side.checked)
    common.echo(common.render(rows, common.Format(fmt.value)))


def register(app: typer.Typer) -> None:
    app.command("report")(report)
