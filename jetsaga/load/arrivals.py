"""Open-loop arrivals: when each order is due, and which kind of order it is.

Order `i` is due at `start + i / rate`, whatever the system under test is doing, so a slow
system cannot slow the sender (no coordinated omission). The order mix is decided by a
low-discrepancy sequence, so every prefix of the run holds the asked-for ratios.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Callable
from typing import Final

NS_PER_S: Final = 1_000_000_000
_CATCH_UP_BURST: Final = 64
_GOLDEN: Final = (math.sqrt(5.0) - 1.0) / 2.0  # frac(i * golden) is equidistributed in [0, 1)


class Kind(enum.IntEnum):
    """What an order is built to do, and the final status it should reach."""

    OK = 0  # pm_card_visa on stocked products -> CONFIRMED
    DECLINE = 1  # pm_card_chargeCustomerFail -> CANCELLED
    OUT_OF_STOCK = 2  # asks for a product with no stock -> FAILED


def order_count(rate: float, duration: float) -> int:
    """How many orders a run of `duration` seconds at `rate` orders/s sends."""
    if rate <= 0 or duration <= 0:
        return 0
    return max(1, round(rate * duration))


def due_offset_ns(i: int, rate: float) -> int:
    """Offset of order `i` from the start of the run, in nanoseconds."""
    return round(i * NS_PER_S / rate)


def kind_of(i: int, decline_ratio: float, out_of_stock_ratio: float) -> Kind:
    """The kind of order `i`; over any run the kinds follow the two ratios."""
    u = (i * _GOLDEN) % 1.0
    if u < decline_ratio:
        return Kind.DECLINE
    if u < decline_ratio + out_of_stock_ratio:
        return Kind.OUT_OF_STOCK
    return Kind.OK


def validate_ratios(decline_ratio: float, out_of_stock_ratio: float) -> None:
    if not (0.0 <= decline_ratio <= 1.0 and 0.0 <= out_of_stock_ratio <= 1.0):
        raise ValueError("ratios must be between 0 and 1")
    if decline_ratio + out_of_stock_ratio > 1.0:
        raise ValueError("--decline-ratio plus --out-of-stock-ratio must not exceed 1")


class Pacer:
    """Calls `send(i, due_ns)` for each order as its due time comes (monotonic clock).

    Never waits for anything but the clock, unless `send` says no (the in-flight cap): then
    the same order goes at `resume()`. When the loop falls behind, every order already due
    goes at once, so a late sender catches up instead of drifting. Driven by timer
    callbacks: a task sleeping once per order cost a fifth more CPU at 800 orders/s.
    """

    def __init__(
        self, start_ns: int, count: int, rate: float, send: Callable[[int, int], bool]
    ) -> None:
        self._start_ns = start_ns
        self._count = count
        self._rate = rate
        self._send = send
        self._next = 0
        self._held = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._wakeup: asyncio.Handle | None = None

    async def run(self) -> None:
        """Returns when every order was sent; raises what `send` raised."""
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._step(woken=False)
        try:
            await self._done
        finally:
            if self._wakeup is not None:
                self._wakeup.cancel()

    def resume(self) -> None:
        """Send again after `send` said no."""
        if self._held and self._loop is not None:
            self._held = False
            self._wakeup = self._loop.call_soon(self._step, True)

    def _step(self, woken: bool) -> None:
        assert self._done is not None
        if self._done.done():
            return
        try:
            self._advance(woken)
        except Exception as exc:
            self._done.set_exception(exc)

    def _advance(self, woken: bool) -> None:
        """Send what is due; `woken`: the next order's wait is over (it goes unchecked)."""
        assert self._loop is not None and self._done is not None
        behind = 0
        while self._next < self._count:
            i = self._next
            due = self._start_ns + due_offset_ns(i, self._rate)
            if not woken:
                wait_ns = due - time.monotonic_ns()
                if wait_ns > 0:
                    self._wakeup = self._loop.call_later(wait_ns / NS_PER_S, self._step, True)
                    return
                behind += 1
                if behind % _CATCH_UP_BURST == 0:  # let answers in while catching up
                    self._wakeup = self._loop.call_soon(self._step, True)
                    return
            woken = False
            if not self._send(i, due):
                self._held = True
                return
            self._next = i + 1
        self._done.set_result(None)
