"""`saia-ctl proxy`: the cloud-side OpenAI-compatible gateway (needs the `[proxy]` extra).

It runs on the cloud server, not on the cluster: no SAIA_HOME, no database.
Every option can also be set with an environment variable ``SAIA_PROXY_*``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Annotated

import typer

from . import common


def _env(name: str) -> str:
    return f"SAIA_PROXY_{name}"


def proxy(
    ssh_host: Annotated[
        str,
        typer.Option(
            "--ssh-host", envvar=_env("SSH_HOST"), help="Login node to reach (host name or address)."
        ),
    ] = "",
    host: Annotated[
        str,
        typer.Option(
            "--host", envvar=_env("HOST"), help="Address to listen on (keep 127.0.0.1 behind a gateway)."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", envvar=_env("PORT"), help="Port to listen on (0: any free).")
    ] = 8080,
    ssh_port: Annotated[
        int | None, typer.Option("--ssh-port", envvar=_env("SSH_PORT"), help="sshd port of the login node.")
    ] = None,
    ssh_user: Annotated[
        str | None,
        typer.Option(
            "--ssh-user", envvar=_env("SSH_USER"), help="Account whose key runs the forced command."
        ),
    ] = None,
    ssh_key: Annotated[
        str | None,
        typer.Option("--ssh-key", envvar=_env("SSH_KEY"), help="Private key file (IdentitiesOnly)."),
    ] = None,
    ssh_option: Annotated[
        list[str] | None,
        typer.Option(
            "--ssh-option",
            envvar=_env("SSH_OPTIONS"),
            help="Extra ssh -o Name=value (repeatable; the env var takes several separated by spaces). "
            "They take precedence over the proxy's defaults.",
        ),
    ] = None,
    ssh_binary: Annotated[
        str, typer.Option("--ssh-binary", envvar=_env("SSH_BINARY"), help="The ssh client to run.")
    ] = "ssh",
    control_dir: Annotated[
        str | None,
        typer.Option(
            "--control-dir",
            envvar=_env("CONTROL_DIR"),
            help="Folder for the ControlMaster sockets (short path, this proxy only); default: a new temp dir.",
        ),
    ] = None,
    pool_size: Annotated[
        int, typer.Option("--pool-size", envvar=_env("POOL_SIZE"), help="Multiplexed SSH master connections.")
    ] = 4,
    max_sessions: Annotated[
        int,
        typer.Option(
            "--max-sessions",
            envvar=_env("MAX_SESSIONS"),
            help="Sessions per master (sshd MaxSessions); beyond them a request gets its own connection.",
        ),
    ] = 10,
    keepalive_interval: Annotated[
        float,
        typer.Option(
            "--keepalive-interval",
            envvar=_env("KEEPALIVE_INTERVAL"),
            help="Seconds between keep-alive commands.",
        ),
    ] = 5.0,
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout", envvar=_env("CONNECT_TIMEOUT"), help="SSH connect timeout, seconds."
        ),
    ] = 10.0,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            envvar=_env("TIMEOUT"),
            help="Seconds to wait for the first byte of an answer, and the longest silence within one.",
        ),
    ] = 300.0,
    user_header: Annotated[
        str,
        typer.Option(
            "--user-header",
            envvar=_env("USER_HEADER"),
            help="Header holding the user id (set by the gateway).",
        ),
    ] = "X-Consumer-Custom-ID",
    default_user: Annotated[
        str | None,
        typer.Option(
            "--default-user",
            envvar=_env("DEFAULT_USER"),
            help="User id for requests without the user header (default: refuse them with 401).",
        ),
    ] = None,
    api_keys: Annotated[
        str | None,
        typer.Option(
            "--api-keys",
            envvar=_env("API_KEYS"),
            help="File of 'TOKEN USER-ID' lines: identity from Authorization: Bearer (the user header is ignored).",
        ),
    ] = None,
    models_ttl: Annotated[
        float, typer.Option("--models-ttl", envvar=_env("MODELS_TTL"), help="Seconds /v1/models is cached.")
    ] = 5.0,
    max_body: Annotated[
        int, typer.Option("--max-body", envvar=_env("MAX_BODY"), help="Largest JSON request body, bytes.")
    ] = 64 * 1024 * 1024,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar=_env("LOG_LEVEL"), help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Serve the OpenAI API on HTTP and pass each request to the cluster over forced-command SSH."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise ValueError(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    if importlib.util.find_spec("aiohttp") is None:
        raise ValueError("the proxy needs aiohttp: pip install 'saia-ctl[proxy]'")
    from ..proxy.config import ProxyConfig

    options: list[str] = []
    for opt in ssh_option or []:
        options += opt.split()
    cfg = ProxyConfig(
        ssh_host=ssh_host,
        host=host,
        port=port,
        ssh_port=ssh_port,
        ssh_user=ssh_user,
        ssh_key=ssh_key,
        ssh_options=tuple(options),
        ssh_binary=ssh_binary,
        control_dir=control_dir,
        pool_size=pool_size,
        max_sessions=max_sessions,
        keepalive_interval=keepalive_interval,
        connect_timeout=connect_timeout,
        timeout=timeout,
        user_header=user_header,
        default_user=default_user,
        api_keys=api_keys,
        models_ttl=models_ttl,
        max_body=max_body,
    )
    cfg.check()
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s saia-proxy: %(message)s"
    )
    from ..proxy.server import serve

    serve(cfg)


def register(app: typer.Typer) -> None:
    app.command("proxy")(common.command(proxy))
