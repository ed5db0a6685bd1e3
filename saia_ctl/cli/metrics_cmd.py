"""`saia-ctl metrics`: live figures in the Prometheus text format."""

from __future__ import annotations

import time

import typer

from . import common


@common.command
def metrics() -> None:
    """In-flight requests, jobs per state, request and token counters, last tick age (Prometheus text)."""
    from ..accounting.metrics import metrics as collect
    from ..db import read_session

    with read_session(common.engine()) as s:
        text = collect(s, time.time())
    typer.echo(text, nl=False)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
