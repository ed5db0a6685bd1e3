"""`saia-ctl doctor`: check this installation, one line per check."""

from __future__ import annotations

import enum
import json
import sys
from typing import Annotated

import typer

from . import common


class DoctorFormat(enum.StrEnum):
    table = "table"
    json = "json"


NAME_WIDTH = 20


def _marks() -> tuple[str, str]:
    """✓ and ✗, or OK and FAIL where the terminal's encoding has no such characters."""
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "OK  ", "FAIL"
    return "✓", "✗"


def doctor(
    fmt: Annotated[
        DoctorFormat, typer.Option("--format", "-f", help="Output format: a line per check, or JSON.")
    ] = DoctorFormat.table,
    authorized_keys: Annotated[
        str | None,
        typer.Option(
            "--authorized-keys",
            help="authorized_keys file sshd reads for the forced-command account "
            "(default: .ssh/authorized_keys in the account's home).",
        ),
    ] = None,
    account_home: Annotated[
        str | None,
        typer.Option(
            "--account-home",
            help="Home of the forced-command account, whose shell start-up files are measured "
            "(default: this user's home).",
        ),
    ] = None,
) -> None:
    """Check this installation: database, journal mode, free space, Slurm, batch scripts, ports,
    and the forced-command account. One line per check, ✓ or ✗ with the fix; exit 1 on any ✗."""
    from ..doctor import Options, run_checks

    opts = Options(settings=common.settings, authorized_keys=authorized_keys, account_home=account_home)
    results = []
    good, bad = _marks()
    for result in run_checks(opts):
        results.append(result)
        if fmt is DoctorFormat.table:
            line = f"{good if result.ok else bad} {result.name:<{NAME_WIDTH}} {result.detail}"
            common.echo(line if result.ok else f"{line} — fix: {result.fix}")
    failed = [r for r in results if not r.ok]
    if fmt is DoctorFormat.json:
        common.echo(json.dumps([r.as_dict() for r in results], indent=2))
    if failed:
        common.fail(f"{len(failed)} of {len(results)} checks failed: {', '.join(r.name for r in failed)}")
    if fmt is DoctorFormat.table:
        common.echo(f"all {len(results)} checks passed")


def register(app: typer.Typer) -> None:
    app.command("doctor")(common.command(doctor))
