"""``python -m saia_ctl.scheduler [--if-due]``: one tick, without the CLI's imports.

The request path spawns this detached (from ``keep-alive`` and on demand).
Exit status 0 on success, also when the tick is not due or another tick holds
the lease; 1 when the tick failed (the error is in the tick's log row too; for
an unexpected exception, its traceback follows the error, here and there).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
import traceback
from typing import TextIO


def _emit(text: str, stream: TextIO) -> None:
    """Print; into a log file (keep-alive's ``logs/tick.log``) each line gets a UTC timestamp."""
    try:
        to_file = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):
        to_file = False
    if to_file:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime())
        text = "\n".join(stamp + line for line in text.splitlines())
    print(text, file=stream, flush=True)


def _expected(e: Exception) -> bool:
    """A set-up problem the one line explains (settings, database, files); anything else is a bug."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..db import DatabaseError
    from ..settings import SettingsError

    return isinstance(e, (DatabaseError, SettingsError, OSError, SQLAlchemyError))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saia_ctl.scheduler", description="Run one scheduler tick."
    )
    parser.add_argument("--if-due", action="store_true", help="only if the last tick began tick_interval ago")
    parser.add_argument("--home", help="state directory (default: SAIA_HOME)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing unless the tick failed")
    args = parser.parse_args(argv)
    try:
        from ..db import engine_for
        from ..migrate import require_current
        from ..settings import Settings
        from .tick import make_slurm, run_tick

        settings = Settings(home=args.home)
        engine = engine_for(settings)
        require_current(engine)
        result = run_tick(engine, settings, make_slurm(settings), if_due=args.if_due)
    except Exception as e:
        if os.environ.get("SAIA_DEBUG") == "1":
            raise
        _emit(f"Error: {' '.join(str(e).split()) or e.__class__.__name__}", sys.stderr)
        if not _expected(e):
            _emit(traceback.format_exc().rstrip(), sys.stderr)  # a bug: the log keeps its traceback
        return 1
    text = result.text()
    if text and not (args.quiet and not result.error):
        _emit(text, sys.stderr if result.error else sys.stdout)
    if result.traceback:
        _emit(result.traceback.rstrip(), sys.stderr)  # a bug: keep-alive's logs/tick.log gets it whole
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
