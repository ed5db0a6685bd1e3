"""What every command shares: the state directory, the engine, output formats, errors.

Commands stay thin: parse, call the library, format. Library exceptions
become one-line ``Error: ...`` messages with exit status 1 (``SAIA_DEBUG=1``
shows the traceback).
"""

from __future__ import annotations

import csv
import enum
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ..settings import Settings, SettingsError

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Set by the top-level callback (`--home`).
_STATE: dict[str, str | None] = {"home": None}


class CLIError(Exception):
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


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn library exceptions into one line on stderr and exit status 1."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if os.environ.get("SAIA_DEBUG") == "1":
            raise
        fail(_message(exc))


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
    "SettingsError",
    "command",
    "echo",
    "engine",
    "fail",
    "render",
    "settings",
    "warn",
]
