"""Starting a Python process fully detached from the SSH session: the ticks a
request or keep-alive asks for."""

from __future__ import annotations

import os

from .log import Log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..settings import Settings

_signal = __import__("_signal")  # `signal` imports enum (~4 ms); the C module is enough

# The folder holding the ``saia_ctl`` package: put on the child's PYTHONPATH.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spawn_detached(settings: Settings, args: list[str], log_name: str, log: Log, what: str) -> None:
    """Start ``python -m ARGS...`` fully detached (the scheduler).

    New session; stdin /dev/null, stdout/stderr ``logs/LOG_NAME``: nothing of
    the SSH channel is held, so the session ends when this process exits.
    """
    python = settings.python
    env = dict(os.environ)
    env["SAIA_HOME"] = settings.home
    env["PYTHONPATH"] = CHECKOUT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_dir = settings.log_dir
    try:
        os.makedirs(log_dir, exist_ok=True)
        os.posix_spawn(
            python,
            [python, "-m", *args],
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    os.path.join(log_dir, log_name),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o640,
                ),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            setsigdef=(_signal.SIGPIPE, _signal.SIGHUP, _signal.SIGINT, _signal.SIGTERM),
        )
    except OSError as e:
        log(f"cannot start {what} with {python}: {e}")


def spawn_tick(settings: Settings, if_due: bool, log: Log) -> None:
    """Start ``python -m saia_ctl.scheduler [--if-due]`` detached, logging to ``logs/tick.log``."""
    args = ["saia_ctl.scheduler", "--if-due"] if if_due else ["saia_ctl.scheduler"]
    spawn_detached(settings, args, "tick.log", log, "a tick")
