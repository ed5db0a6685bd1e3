"""The request path's log, ``$SAIA_HOME/logs/route.log``: one line per event,
and for a bug (an exception nobody expected) its full traceback, so an
operator can diagnose it from the log while the client got one line."""

from __future__ import annotations

import os
import time


class Log:
    """Appends one line per event to ``$SAIA_HOME/logs/route.log``."""

    def __init__(self, home: str | None, tag: str = "") -> None:
        self.path = os.path.join(home, "logs", "route.log") if home else None
        self.tag = tag

    def __call__(self, message: str) -> None:
        self._append(self._line(message))

    def bug(self, message: str, error: BaseException) -> None:
        """``message`` as one line, then the traceback of ``error``, indented."""
        import traceback  # only on this path: it costs every request a few ms otherwise

        lines = traceback.format_exception(type(error), error, error.__traceback__)
        text = "".join(lines).rstrip("\n").replace("\n", "\n    ")
        self._append(self._line(message) + "    " + text + "\n")

    def _line(self, message: str) -> str:
        return (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} {self.tag} "
            f"{message.replace(chr(10), ' ')}\n"
        )

    def _append(self, text: str) -> None:
        """One write(2) on an O_APPEND descriptor: lines of concurrent requests never mix."""
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError:
                return
        except OSError:
            return
        try:
            os.write(fd, text.encode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            os.close(fd)
