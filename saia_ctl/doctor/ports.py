"""Port check: the range has ports that no live job holds and that can be bound here."""

from __future__ import annotations

import socket

from .result import CheckResult, failed, passed


def bindable(port: int) -> bool:
    """True if a server could listen on the port now (as a backend would, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def check_port_range(port_range: tuple[int, int], held: set[int], held_note: str = "") -> CheckResult:
    """How many ports of the range are neither held by a live job nor in use on this host."""
    name = "port range"
    low, high = port_range
    total = high - low + 1
    mine = [p for p in range(low, high + 1) if p in held]
    busy = [p for p in range(low, high + 1) if p not in held and not bindable(p)]
    free = total - len(mine) - len(busy)
    detail = (
        f"{free} of {total} ports free in {low}-{high} ({len(mine)} held by live jobs, "
        f"{len(busy)} in use on this host){held_note}"
    )
    if free == 0:
        return failed(
            name,
            detail,
            "widen SAIA_PORT_RANGE (in $SAIA_HOME/saia.conf), or stop what listens on those ports",
        )
    return passed(name, detail)
