"""The `saia-ctl` command: one Typer app, one module per command group."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import (
    common,
    db_cmd,
    doctor_cmd,
    init_cmd,
    jobs_cmd,
    limits_cmd,
    metrics_cmd,
    proxy_cmd,
    report_cmd,
    requests_cmd,
    services_cmd,
    ssh_cmd,
    tick_cmd,
)

app = typer.Typer(
    name="saia-ctl",
    help="Host web services (OpenAI-compatible LLM inference) on Slurm GPU nodes, reached through a "
    "forced SSH command, with per-user and per-service accounting. Check an installation with "
    "`saia-ctl doctor`.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def main(
    home: Annotated[
        str | None,
        typer.Option("--home", help="State directory (database, logs, job output); overrides SAIA_HOME."),
    ] = None,
) -> None:
    """saia-ctl: a Slurm-native control plane for LLM inference services."""
    common.set_home(home)


app.add_typer(db_cmd.app, name="db")
app.command("init")(init_cmd.init)
app.add_typer(services_cmd.app, name="services")

# The scheduler, accounting and proxy command groups.
for _module in (tick_cmd, jobs_cmd, report_cmd, requests_cmd, metrics_cmd, proxy_cmd, ssh_cmd, limits_cmd):
    _module.register(app)
doctor_cmd.register(app)


def run() -> None:
    """Console-script entry point: whatever escapes a command is still one line (``common.report_error``)."""
    try:
        app()
    except Exception as exc:
        sys.exit(common.report_error(exc))
