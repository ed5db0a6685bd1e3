"""What every command shares: the state directory, the engine, output formats, errors.

Commands stay thin: parse, call the library, format. Errors, by kind:

- expected (``saia_ctl.errors.SaiaError`` and its subclasses): one line
  ``Error: ...``, exit status 1;
- the environment failing (a file or the database cannot be used) and a
  ``ValueError`` (the library's word for a bad value): the same one line, and
  the traceback in the CLI's log, in case it was a bug after all;
- anything else is a bug: one line naming its type and where the traceback
  is — the CLI's log ``$SAIA_HOME/logs/cli.log`` when the state directory is
  known, else stderr.

``SAIA_DEBUG=1`` also prints the traceback on stderr, whatever the error.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ..errors import SaiaError
from ..settings import Settings, SettingsError

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Set by the top-level callback (`--home`).
_STATE: dict[str, str | None] = {"home": None}


class CLIError(SaiaError):
    """A user-facing error: printed as one line, exit status 1."""


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def set_home(home: str | None) -> None:
    _STATE["home"] = home


def settings() -> Settings:
    return Settings(home=_STATE["home"])


def engine(*, migrated: bool = True) -> Engine:
    """The database engine; refuses a database that is not at the newest migration."""
    from ..db import engine_for
    from ..migrate import require_current

    eng = engine_for(settings())
    if migrated:
        require_current(eng)
    return eng


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    typer.echo(f"Warning: {message}", err=True)


def _message(exc: BaseException) -> str:
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    if isinstance(exc, OperationalError):
        text = str(exc.orig) if exc.orig is not None else str(exc)
        return f"database: {text}"
    if isinstance(exc, SQLAlchemyError):
        return f"database: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0] if len(text.splitlines()) == 1 else " ".join(text.split())


def _environmental(exc: BaseException) -> bool:
    """Not a SaiaError, but said in one line all the same (see the module docstring)."""
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, (OSError, ValueError, OperationalError))


def cli_log() -> str | None:
    """``$SAIA_HOME/logs/cli.log``, if the state directory is known and exists."""
    home = _STATE["home"] or os.environ.get("SAIA_HOME")
    if not home or not os.path.isdir(home):
        return None
    return os.path.join(os.path.abspath(home), "logs", "cli.log")


def _log_traceback(exc: BaseException) -> str | None:
    """Append the traceback to the CLI's log; its path, or None if there is none."""
    path = cli_log()
    if path is None:
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    command = " ".join(["saia-ctl", *sys.argv[1:]])
    text = "".join(traceback.format_exception(exc))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} pid {os.getpid()}: {command}\n{text}\n")
    except OSError:
        return None
    return path


def report_error(exc: BaseException) -> int:
    """Say what went wrong in one line on stderr (the traceback where it belongs); the exit status."""
    debug = os.environ.get("SAIA_DEBUG") == "1"
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, SaiaError):
        typer.echo(f"Error: {_message(exc)}", err=True)
        return 1
    where = _log_traceback(exc)
    if _environmental(exc):
        typer.echo(f"Error: {_message(exc)}", err=True)
        return 1
    if where is None:
        if not debug:
            traceback.print_exception(exc, file=sys.stderr)
        where = "printed above"
    else:
        where = f"in {where}"
    typer.echo(
        f"Error: unexpected {type(exc).__name__}: {_message(exc)} (a bug; the traceback is {where})",
        err=True,
    )
    return 1


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn exceptions into one line on stderr and exit status 1 (see the module docstring)."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise typer.Exit(report_error(exc)) from None


def render(rows: Sequence[dict[str, Any]], fmt: Format, columns: Sequence[str] | None = None) -> str:
    """Rows as a table, a JSON list of objects, or CSV (one shared --format for every listing)."""
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    if fmt is Format.json:
        return json.dumps(list(rows), indent=2, default=str)
    if fmt is Format.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in cols})
        return buf.getvalue().rstrip("\n")
    if not rows:
        return "(none)"
    from tabulate import tabulate

    return tabulate([[_cell(row.get(c)) for c in cols] for row in rows], headers=cols)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run a command body with errors turned into messages."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with errors_as_messages():
            return func(*args, **kwargs)

    return wrapper


def echo(text: str) -> None:
    typer.echo(text)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


__all__ = [
    "CLIError",
    "Format",
    "FormatOption",
    "SaiaError",
    "SettingsError",
    "command",
    "echo",
    "engine",
    "fail",
    "render",
    "report_error",
    "settings",
    "warn",
]
