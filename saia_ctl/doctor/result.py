"""The typed result of one doctor check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    """One line of `saia-ctl doctor`: a check, whether it passed, what was seen, how to fix it."""

    name: str
    ok: bool
    detail: str  # what was seen (or why the check could not run)
    fix: str = ""  # what to do; empty when ok
    seconds: float = 0.0  # how long the check took

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail)


def failed(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, False, detail, fix)


def skipped(name: str, reason: str, fix: str) -> CheckResult:
    """A check that cannot run because an earlier one failed: a ✗ that names the reason."""
    return CheckResult(name, False, f"skipped: {reason}", fix)
