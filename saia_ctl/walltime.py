"""How close to its walltime end a job may still be used: one home for the margins.

Slurm kills a job at its walltime end without waiting for answers in flight.
The scheduler and the request path therefore stop using a job a little
before that, each with its own margin, and both read them here. Standard
library only (the request path imports it).
"""

from __future__ import annotations

# The request path sends no new request to a ready job whose walltime ends
# within this many seconds, even if no tick has drained it yet (it covers the
# time between two ticks).
REQUEST_PATH_STOP = 15.0
# The scheduler cancels a draining job at the latest this long before its
# walltime ends, requests in flight or not: Slurm would kill it a little later.
CANCEL_BEFORE_END = 20.0
# The scheduler takes a ready job out of routing this long before its walltime
# ends, replacement ready or not: a request held for a starting job beats one
# cut off by Slurm's kill. Twice the cancel margin, so requests routed just
# before the drain still have CANCEL_BEFORE_END seconds to finish.
DRAIN_BEFORE_END = 2 * CANCEL_BEFORE_END
