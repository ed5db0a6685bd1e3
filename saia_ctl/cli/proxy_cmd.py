"""`saia-ctl proxy`: the cloud-side OpenAI-compatible gateway (needs the `[proxy]` extra).

It runs on the cloud server, not on the cluster: no SAIA_HOME, no database.
Its options are made from ``proxy/config.py``, where each is declared once
(flag, ``SAIA_PROXY_*`` variable, default, help).
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Annotated, Any

import typer

from ..proxy.config import OPTIONS, Option, from_options
from . import common

INSTALL_HINT = "the proxy needs aiohttp, which this installation lacks: pip install 'saia-ctl[proxy]'"
# What the `[proxy]` extra brings (and aiohttp's own dependencies).
_EXTRA_MODULES = ("aiohttp", "multidict", "yarl")


def proxy(**values: Any) -> None:
    """Serve the OpenAI API on HTTP and pass each request to the cluster over forced-command SSH."""
    try:
        from ..proxy.server import serve
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _EXTRA_MODULES:
            raise
        raise common.CLIError(INSTALL_HINT) from None
    cfg = from_options(values)
    cfg.check()
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s saia-proxy: %(message)s",
    )
    serve(cfg)


def _parameter(o: Option) -> inspect.Parameter:
    typ, default = o.type, o.default
    if o.repeatable:  # typer: a list option, several values per occurrence of the env var
        typ, default = list[str] | None, None
    info = typer.Option(o.flag, envvar=o.env, help=o.help)
    return inspect.Parameter(
        o.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[typ, info]
    )


# Typer reads a command's options from its signature: give `proxy` the declared ones.
_PARAMETERS = [_parameter(o) for o in OPTIONS]
proxy.__signature__ = inspect.Signature(_PARAMETERS, return_annotation=None)  # type: ignore[attr-defined]
proxy.__annotations__ = {p.name: p.annotation for p in _PARAMETERS} | {"return": None}


def register(app: typer.Typer) -> None:
    app.command("proxy")(common.command(proxy))
