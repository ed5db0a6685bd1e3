"""The scheduler tick: observe, plan (pure), apply, probes, lease, tick log.

Kept empty of imports: ``saia_ctl.scheduler.names`` is cheap to import on its
own. ``run_tick`` / ``TickResult`` are reachable lazily from here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TickResult", "run_tick"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import tick

        return getattr(tick, name)
    raise AttributeError(name)
