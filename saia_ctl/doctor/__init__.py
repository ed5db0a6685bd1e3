"""`saia-ctl doctor`: is this installation ready to serve? Each check a small function
returning a ``CheckResult``; ``run_checks`` runs them in order. No terminal code here."""

from __future__ import annotations

from .result import CheckResult
from .run import Options, run_checks

__all__ = ["CheckResult", "Options", "run_checks"]
