"""`saia-ctl init --config FILE`: import the original SAIA config.json."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common


@common.command
def init(
    config: Annotated[
        str,
        typer.Option("--config", "-c", help="The SAIA config.json to import (unchanged format)."),
    ],
) -> None:
    """Import services from a SAIA config.json; run again to update them in place.

    Validates the whole file first: on any error nothing changes. Unknown keys
    are kept and reported. Services no longer in the file are disabled (their
    jobs drained), never deleted.
    """
    from ..config import apply_config, load_config
    from ..db import write_session

    services, warnings = load_config(config)
    for w in warnings:
        common.warn(w)
    eng = common.engine()
    with write_session(eng) as s:
        result = apply_config(s, services)
    parts = [
        f"{len(result.created)} created",
        f"{len(result.updated)} updated",
        f"{len(result.unchanged)} unchanged",
    ]
    if result.disabled:
        parts.append(f"{len(result.disabled)} disabled ({', '.join(result.disabled)})")
    common.echo(f"imported {len(services)} services from {config}: " + ", ".join(parts))
