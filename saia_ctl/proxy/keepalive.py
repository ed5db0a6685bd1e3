"""The keep-alive loop: ``keep-alive`` every few seconds, which also drives the scheduler.

Each round goes through the next slot of the pool, so every master is
exercised in turn; a round that fails resets that slot (see ``ssh.py``) and
is logged once per change of state, not once per round.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from .ssh import Slot, SSHError, SSHPool

log = logging.getLogger("saia_ctl.proxy")


class KeepAlive:
    def __init__(self, pool: SSHPool, interval: float) -> None:
        self.pool = pool
        self.interval = interval
        self.ok: bool | None = None
        self.last_ok_at: float | None = None
        self.last_error: str | None = None
        self.rounds = 0
        self._next = itertools.count()

    async def once(self, slot_index: int | None = None) -> bool:
        """One keep-alive through one slot; True when the cluster answered ``OK``."""
        index = next(self._next) % len(self.pool.slots) if slot_index is None else slot_index
        slot: Slot | None = self.pool.slots[index]
        if slot is not None and (slot.in_flight >= self.pool.cfg.max_sessions or self.pool.resetting(slot)):
            slot = None  # that master is full or being replaced: a connection of its own
        self.rounds += 1
        try:
            out = await self.pool.run_control("keep-alive", slot=slot)
            if out.splitlines()[:1] != [b"OK"]:
                raise SSHError(f"'keep-alive' answered {out[:80]!r}, not OK")
        except SSHError as e:
            if self.ok is not False or e.args[0] != self.last_error:
                log.error("keep-alive failed: %s", e)
            self.ok, self.last_error = False, str(e)
            return False
        if self.ok is False:
            log.info("keep-alive OK again; SSH link restored")
        self.ok, self.last_ok_at = True, time.time()
        return True

    async def warm_up(self) -> None:
        """Open every slot's master at start-up (concurrently), so no request pays a handshake."""
        await asyncio.gather(*(self.once(n) for n in range(len(self.pool.slots))))

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def snapshot(self) -> dict[str, object]:
        return {"ok": self.ok, "last_ok_at": self.last_ok_at, "last_error": self.last_error}
