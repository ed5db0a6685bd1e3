"""Which errors are expected: the base class every module's user-facing error derives from.

An expected error means the input, the site's set-up or the environment is
wrong, not the code: the CLI prints it as one line ``Error: ...`` and exits 1.
Anything else reaching the CLI is a bug: the user still gets one line, and the
traceback goes to the CLI's log (``cli/common.py``).

Standard library only and nothing imported: the request path loads it through
``settings.py`` on every request.
"""

from __future__ import annotations


class SaiaError(Exception):
    """An expected error; its message is one line the user can act on."""
