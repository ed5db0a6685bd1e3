"""The API-keys file: bearer tokens mapped to user ids, reloaded when it changes.

Format: one ``TOKEN USER-ID`` pair per line (white space between); ``#`` at
the start of a line or after white space starts a comment; blank lines are
ignored. Tokens are kept only as SHA-256 digests in memory. A file that
cannot be read or parsed on reload keeps the previous keys and is logged; at
start-up it is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

from ..errors import SaiaError
from .protocol import USER_RE

log = logging.getLogger("saia_ctl.proxy")


class KeyFileError(SaiaError, ValueError):
    """The API-keys file cannot be used."""


_TRAILING_COMMENT = re.compile(r"\s+#.*$")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_keys(text: str, path: str) -> dict[bytes, str]:
    keys: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = _TRAILING_COMMENT.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) != 2:
            raise KeyFileError(f"{path}:{number}: expected 'TOKEN USER-ID'")
        token, user = words
        if USER_RE.fullmatch(user) is None:
            raise KeyFileError(f"{path}:{number}: invalid user id {user[:40]!r}")
        if len(token) < 8:
            raise KeyFileError(f"{path}:{number}: token shorter than 8 characters")
        keys[_digest(token)] = user
    return keys


class ApiKeys:
    """Bearer token → user id, from a file that is re-read when its stat changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._keys: dict[bytes, str] = {}
        self._load(initial=True)

    def _stat(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _load(self, initial: bool = False) -> None:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8") as f:
                keys = parse_keys(f.read(), self.path)
        except (OSError, UnicodeDecodeError, KeyFileError) as e:
            message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if initial:
                raise KeyFileError(f"API keys file {self.path}: {message}") from None
            log.error(
                "API keys file %s not reloaded, keeping %d keys: %s", self.path, len(self._keys), message
            )
            return
        if not initial:
            log.info("API keys file %s reloaded: %d keys", self.path, len(keys))
        self._stamp = stamp
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def user_for(self, authorization: str | None) -> str | None:
        """The user of an ``Authorization: Bearer TOKEN`` header, or None."""
        self._load()
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return self._keys.get(_digest(token))
