"""Where this installation's files are: a checkout, or a wheel installed into a venv."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent  # the repository's top, when running from a checkout
FORCED_COMMAND = "cloud_interface.sh"


def forced_command_path() -> Path:
    """Absolute path of this installation's forced command (``cloud_interface.sh``).

    A checkout (an editable install) uses the script at its top; a wheel installs
    it into the interpreter's scripts folder, the venv's ``bin/`` next to
    ``sys.executable`` (not resolved: the venv's python is a symlink).
    """
    own = CHECKOUT / FORCED_COMMAND
    if own.is_file() and (CHECKOUT / "pyproject.toml").is_file():
        return own
    bin_dir = Path(os.path.abspath(os.path.dirname(sys.executable)))
    for folder in (Path(sysconfig.get_path("scripts")), bin_dir):
        candidate = folder / FORCED_COMMAND
        if candidate.is_file():
            return candidate
    return bin_dir / FORCED_COMMAND
