"""Garbage-collector settings for the long-running, allocation-heavy processes.

With CPython's default thresholds (700, 10, 10) a worker under load collects its youngest
generation every few hundred allocations, while a batch, its rows and its futures are
still alive: they are promoted, the older generations fill, and full collections follow.
Profiled at 800 orders/s, collection took a fifth of the order worker's CPU. A young
generation large enough for a whole batch to die in it, and start-up objects moved out of
the collector's sight, keep the same cycle collection at a fraction of the cost.
"""

from __future__ import annotations

import gc

YOUNG = 50_000


def tune() -> None:
    """Freeze what exists now (modules, pools, caches) and widen the young generation."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, 20, 20)
