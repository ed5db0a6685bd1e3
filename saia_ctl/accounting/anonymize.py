"""Stable pseudonyms for user ids, for reports that leave the centre.

HMAC-SHA256 keyed with a per-installation secret (``$SAIA_HOME/anonymize.key``,
created on first use, mode 0600): the same user gets the same pseudonym in
every report of this installation, and nobody without the key can test a
guessed user id against it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Callable

KEY_FILE = "anonymize.key"


def load_key(home: str) -> bytes:
    path = os.path.join(home, KEY_FILE)
    if not os.path.exists(path):
        # Written whole under a temporary name, then linked: a concurrent first use
        # never reads a half-written key, and the first link wins.
        fd, tmp = tempfile.mkstemp(prefix=".anonymize.", dir=home)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    with open(path, encoding="ascii") as f:
        key = f.read().strip()
    if len(key) < 32:
        raise ValueError(f"{path} is too short to be a key; remove it to make a new one")
    return key.encode("ascii")


def pseudonymizer(key: bytes) -> Callable[[str], str]:
    def pseudonym(user: str) -> str:
        return "u-" + hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()[:16]

    return pseudonym
