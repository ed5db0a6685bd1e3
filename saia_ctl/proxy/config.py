"""The proxy's settings: one dataclass, and each `saia-ctl proxy` option declared once.

A field declared with ``option(default, help)`` is an option of ``saia-ctl
proxy``: its flag is ``--`` + the name with dashes, its environment variable
``SAIA_PROXY_`` + the name in capitals, its default and help are the field's.
``cli/proxy_cmd.py`` makes the Typer command from ``OPTIONS``, and the README's
table of options is ``python -m saia_ctl.proxy.config --markdown``. Fields
without ``option`` are tuning knobs the command does not offer.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import SaiaError

ENV_PREFIX = "SAIA_PROXY_"


class ProxyConfigError(SaiaError, ValueError):
    """A proxy option has a value the proxy cannot work with."""


def option(default: Any, help: str, *, flag: str = "", repeatable: bool = False) -> Any:
    """A field that is also a command-line option (see the module docstring)."""
    return field(default=default, metadata={"help": help, "flag": flag, "repeatable": repeatable})


@dataclass(frozen=True)
class ProxyConfig:
    ssh_host: str = option("", "Login node to reach (host name or address).")
    host: str = option("127.0.0.1", "Address to listen on (keep 127.0.0.1 behind a gateway).")
    port: int = option(8080, "Port to listen on (0: any free).")
    ssh_port: int | None = option(None, "sshd port of the login node.")
    ssh_user: str | None = option(None, "Account whose key runs the forced command.")
    ssh_key: str | None = option(None, "Private key file (IdentitiesOnly).")
    ssh_options: tuple[str, ...] = option(
        (),
        "Extra ssh -o Name=value (repeatable; the env var takes several separated by spaces). "
        "They take precedence over the proxy's defaults.",
        flag="--ssh-option",
        repeatable=True,
    )
    ssh_binary: str = option("ssh", "The ssh client to run.")
    control_dir: str | None = option(
        None,
        "Folder for the ControlMaster sockets (short path, this proxy only); default: a new temp dir.",
    )
    pool_size: int = option(4, "Multiplexed SSH master connections.")
    max_sessions: int = option(
        10, "Sessions per master (sshd MaxSessions); beyond them a request gets its own connection."
    )
    tunnel_sessions: int = option(
        0,
        "Long-lived SSH sessions running the 'tunnel' command that carry every request "
        "(0: one SSH session per request).",
    )
    tunnel_max_age: float = option(
        3600.0, "Seconds after which a tunnel session is replaced (the new one opens first)."
    )
    keepalive_interval: float = option(5.0, "Seconds between keep-alive commands.")
    connect_timeout: float = option(10.0, "SSH connect timeout, seconds.")
    timeout: float = option(
        300.0, "Seconds to wait for the first byte of an answer, and the longest silence within one."
    )
    control_timeout: float = 15.0
    control_persist: int = 300
    user_header: str = option("X-Consumer-Custom-ID", "Header holding the user id (set by the gateway).")
    default_user: str | None = option(
        None, "User id for requests without the user header (default: refuse them with 401)."
    )
    api_keys: str | None = option(
        None,
        "File of 'TOKEN USER-ID' lines: identity from Authorization: Bearer (the user header is ignored).",
    )
    models_ttl: float = option(5.0, "Seconds /v1/models is cached.")
    max_body: int = option(64 * 1024 * 1024, "Largest JSON request body, bytes.")
    log_level: str = option("info", "debug, info, warning or error.")
    extra: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse values the proxy cannot work with (ProxyConfigError, one line)."""
        if not self.ssh_host:
            raise ProxyConfigError(f"no SSH host: pass {flag('ssh_host')} or set {env('ssh_host')}")
        if not 0 <= self.port <= 65535:
            raise ProxyConfigError(f"{flag('port')} must be 0-65535, not {self.port}")
        if self.ssh_port is not None and not 1 <= self.ssh_port <= 65535:
            raise ProxyConfigError(f"{flag('ssh_port')} must be 1-65535, not {self.ssh_port}")
        if not 1 <= self.pool_size <= 64:
            raise ProxyConfigError(f"{flag('pool_size')} must be 1-64, not {self.pool_size}")
        if self.max_sessions < 1:
            raise ProxyConfigError(f"{flag('max_sessions')} must be at least 1")
        if not 0 <= self.tunnel_sessions <= 64:
            raise ProxyConfigError(f"{flag('tunnel_sessions')} must be 0-64, not {self.tunnel_sessions}")
        for name in ("keepalive_interval", "connect_timeout", "timeout", "control_timeout", "tunnel_max_age"):
            if not getattr(self, name) > 0:
                raise ProxyConfigError(f"{flag(name)} must be positive")
        if not self.models_ttl >= 0:
            raise ProxyConfigError(f"{flag('models_ttl')} must not be negative")
        for opt in self.ssh_options:
            if "=" not in opt or opt.startswith("-"):
                raise ProxyConfigError(f"{flag('ssh_options')} must look like Name=value, not {opt!r}")
        for text, name in ((self.ssh_host, "ssh_host"), (self.ssh_user or "", "ssh_user")):
            if text.startswith("-") or any(c.isspace() for c in text):
                raise ProxyConfigError(f"{flag(name)} must not start with '-' or hold white space: {text!r}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ProxyConfigError(
                f"{flag('log_level')} must be debug, info, warning or error, not {self.log_level!r}"
            )


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Option:
    """One `saia-ctl proxy` option, as ``ProxyConfig`` declares it."""

    name: str  # the ProxyConfig field
    flag: str
    env: str
    type: Any  # the field's type; a repeatable option takes a list of strings
    default: Any
    help: str
    repeatable: bool


def _options() -> tuple[Option, ...]:
    hints = typing.get_type_hints(ProxyConfig)
    out = []
    for f in fields(ProxyConfig):
        if "help" not in f.metadata:
            continue
        out.append(
            Option(
                name=f.name,
                flag=f.metadata["flag"] or "--" + f.name.replace("_", "-"),
                env=ENV_PREFIX + f.name.upper(),
                type=hints[f.name],
                default=f.default,
                help=f.metadata["help"],
                repeatable=bool(f.metadata["repeatable"]),
            )
        )
    return tuple(out)


OPTIONS: tuple[Option, ...] = _options()
_BY_NAME = {o.name: o for o in OPTIONS}


def flag(name: str) -> str:
    """The command-line flag of the field ``name``."""
    return _BY_NAME[name].flag if name in _BY_NAME else "--" + name.replace("_", "-")


def env(name: str) -> str:
    """The environment variable of the field ``name``."""
    return _BY_NAME[name].env


def from_options(values: dict[str, Any]) -> ProxyConfig:
    """The config from the command's option values (a repeatable option: a list of
    strings, each possibly holding several words, as its env var does)."""
    kwargs = dict(values)
    for o in OPTIONS:
        if o.repeatable:
            kwargs[o.name] = tuple(word for text in values.get(o.name) or () for word in text.split())
    return ProxyConfig(**kwargs)


def markdown() -> str:
    """The README's table of `saia-ctl proxy` options."""
    lines = ["| option | environment | default | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        shown = "" if o.default in (None, (), "") else f"`{o.default}`"
        lines.append(f"| `{o.flag}` | `{o.env}` | {shown} | {o.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m saia_ctl.proxy.config --markdown  (prints the README's proxy options)")
    sys.stdout.write(markdown())
