"""How the runner learns that an order went final.

Pushed: a core NATS subscription to `orders.confirmed|cancelled|failed`, opened before the
first send. Pulled: `GET /orders/{id}` with bounded concurrency, for stragglers, for POSTs
whose answer was ambiguous, and for everything when NATS cannot be reached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsaga import natsclient
from jetsaga.contracts import ORDERS_CANCELLED, ORDERS_CONFIRMED, ORDERS_FAILED
from jetsaga.load.tracker import OUTCOME_BY_NAME, Outcome, Post, Tracker

SUBJECTS: Final = {
    ORDERS_CONFIRMED: Outcome.CONFIRMED,
    ORDERS_CANCELLED: Outcome.CANCELLED,
    ORDERS_FAILED: Outcome.FAILED,
}


class _Ended(msgspec.Struct, rename="camel"):
    order_id: str  # the only field common to the three final events that we need


class _Order(msgspec.Struct, rename="camel"):
    status: str
    updated_at: str | None = None


_ended = msgspec.json.Decoder(_Ended)
_order = msgspec.json.Decoder(_Order)


class Watcher:
    """Records final statuses published on NATS into the tracker."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self.client: NATS | None = None
        self.undecodable = 0
        self.last_error: str | None = None

    @property
    def alive(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def start(self, url: str) -> bool:
        """Subscribe before any order is sent; False (and `last_error`) if NATS is out of reach."""

        async def on_error(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"

        try:
            # Fail fast when nobody is there: one retry, 0.1 s apart.
            client = await natsclient.connect(
                url,
                connect_timeout=2,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=on_error,
            )
            # Once connected, ride out a NATS restart of up to ~30 s (GETs cover the gap).
            client.options["max_reconnect_attempts"] = 60
            client.options["reconnect_time_wait"] = 0.5
            for subject in SUBJECTS:
                await client.subscribe_direct(subject, self._on_msg)
            await client.flush()  # the server has our interest before the first order goes
        except Exception as exc:  # any failure to watch means: poll instead
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.client = client
        return True

    def _on_msg(self, msg: Msg) -> None:
        try:
            order_id = _ended.decode(msg.data).order_id
        except msgspec.DecodeError:
            self.undecodable += 1
            return
        self._tracker.on_final(order_id, SUBJECTS[msg.subject], time.monotonic_ns(), "nats")

    async def stop(self) -> None:
        if self.client is not None and not self.client.is_closed:
            await self.client.close()


def _final_at_ns(updated_at: str | None, seen_ns: int) -> int:
    """When the order went final on our monotonic clock: its `updatedAt`, never after now."""
    if not updated_at:
        return seen_ns
    try:
        wall = datetime.fromisoformat(updated_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return seen_ns
    return min(seen_ns, seen_ns - round((time.time() - wall) * 1e9))


class Poller:
    """`GET /orders/{id}` for a list of orders, at most `concurrency` at a time."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, tracker: Tracker, concurrency: int
    ) -> None:
        self._session = session
        self._url = f"{url}/orders/"
        self._tracker = tracker
        self._concurrency = concurrency
        self.requests = 0
        self.errors = 0

    async def check(self, orders: Sequence[int]) -> None:
        pending = iter(orders)

        async def worker() -> None:
            for i in pending:
                await self._check_one(i)

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(orders)))))

    async def _check_one(self, i: int) -> None:
        tracker = self._tracker
        order_id = tracker.order_ids[i]
        self.requests += 1
        try:
            async with self._session.get(self._url + order_id) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            self.errors += 1
            return
        if status != 200:
            if status != 404:
                self.errors += 1
            return
        try:
            order = _order.decode(body)
        except msgspec.DecodeError:
            self.errors += 1
            return
        if tracker.post[i] == Post.AMBIGUOUS:
            tracker.on_found(i)
        final = OUTCOME_BY_NAME.get(order.status)
        if final is not None:
            now = time.monotonic_ns()
            tracker.on_final(order_id, final, _final_at_ns(order.updated_at, now), "poll")
