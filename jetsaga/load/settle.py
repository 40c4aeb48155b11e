"""Settling: GET what NATS has not told us, until every accepted order is final.

With NATS, only stragglers are fetched, a few hundred per round, so that a run far behind
does not add a storm of reads to the system it measures. A straggler is an order open for
5 s, or for twice the p99 of the orders that went final in the last two seconds if that is
longer: an order whose final event was lost stands out against its neighbours, while a
system that is merely slow has every order late. (With a fixed 5 s, a run at 1,000/s whose
p99 passed 5 s drew up to 200 GETs a second on top of its load, and fell further behind.)
Without NATS, every open order is fetched, round after round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from jetsaga.load.tracker import Tracker
from jetsaga.load.watch import Poller, Watcher

STRAGGLER_AGE_NS: Final = 5_000_000_000  # with NATS, GET an order only if this old and open
STRAGGLER_P99S: Final = 2  # … and older than this many times the recent p99


def straggler_age_ns(tracker: Tracker, now_ns: int) -> int:
    """How long an order may stay open, with NATS telling finals, before it is fetched."""
    p99_ms = tracker.recent_p99_ms(now_ns)
    if p99_ms is None:
        return STRAGGLER_AGE_NS
    return max(STRAGGLER_AGE_NS, int(STRAGGLER_P99S * p99_ms * 1_000_000))


class Phase:
    """Whether sending is over, and when settling must give up."""

    def __init__(self) -> None:
        self.sending_done = asyncio.Event()
        self.deadline_ns = 0

    def end_sending(self, settle_timeout_s: float) -> None:
        self.deadline_ns = time.monotonic_ns() + int(settle_timeout_s * 1e9)
        self.sending_done.set()


async def reconcile(tracker: Tracker, poller: Poller, watcher: Watcher, phase: Phase) -> None:
    """GET what NATS has not told us, until every accepted order is final or time is up."""
    probed = False
    while True:
        polling = not watcher.alive
        if phase.sending_done.is_set():
            if tracker.in_flight == 0 and not probed:
                probed = True  # POSTs answered 5xx or broken off: does the order exist?
                await poller.check(tracker.ambiguous_orders())
            if (probed and tracker.idle.is_set()) or time.monotonic_ns() >= phase.deadline_ns:
                return
            wait_s = min(0.25 if polling else 1.0, (phase.deadline_ns - time.monotonic_ns()) / 1e9)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait_s, 0.0)):
                    await tracker.idle.wait()
        else:
            await asyncio.sleep(0.25 if polling else 1.0)
        now_ns = time.monotonic_ns()
        age = 0 if polling else straggler_age_ns(tracker, now_ns)
        stragglers = tracker.open_orders(now_ns - age)
        await poller.check(stragglers[: 1000 if polling else 200])
