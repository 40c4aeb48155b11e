"""Open-loop sending of `POST /orders`: one task per order, fired at its due time.

Responses never gate the next send; only a large cap on requests in flight can, and each
time the cap holds the sender back it is counted and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from jetsaga.load.arrivals import Kind, pace
from jetsaga.load.tracker import Post, Tracker
from jetsaga.load.workload import Workload

POST_TIMEOUT_S: Final = 30.0
_SPARE_FILES: Final = 200  # for the GET pool, NATS, stock reads and the files we write
_JSON: Final = {"Content-Type": "application/json"}


def pool_size(rate: float, max_in_flight: int) -> int:
    """Connections enough for a second's worth of slow answers, without client queueing,
    within the open-file limit (raised to the hard limit first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(16, min(max_in_flight, int(rate) + 16, soft - _SPARE_FILES))


def open_session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, keepalive_timeout=30, use_dns_cache=True
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


class Sender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        tracker: Tracker,
        workload: Workload,
        max_in_flight: int,
    ) -> None:
        self._session = session
        self._url = f"{url}/orders"
        self._tracker = tracker
        self._workload = workload
        self.max_in_flight = max_in_flight
        self.cap_hits = 0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, rate: float, kind_for: Callable[[int], Kind]) -> None:
        """Send every order of the run at its due time; returns when the last one is sent."""
        tracker = self._tracker
        async for i, due_ns in pace(tracker.start_ns, tracker.count, rate):
            if tracker.in_flight >= self.max_in_flight:
                self.cap_hits += 1
                self._room.clear()
                await self._room.wait()
            kind = kind_for(i)
            order = self._workload.build(i, kind)
            tracker.on_send(i, order, kind, due_ns, time.monotonic_ns())
            task = asyncio.create_task(self._post(i, order.body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, i: int, body: bytes) -> None:
        outcome: Post
        what: str | int
        try:
            async with self._session.post(self._url, data=body, headers=_JSON) as resp:
                await resp.read()
                what = resp.status
            if 200 <= what < 300:
                outcome = Post.ACCEPTED
            elif what >= 500:
                outcome = Post.AMBIGUOUS  # the order may exist; probed at the end
            else:
                outcome = Post.REJECTED
        except aiohttp.ClientConnectorError:
            outcome, what = Post.NOT_SENT, "connect"
        except TimeoutError:
            outcome, what = Post.AMBIGUOUS, "timeout"
        except aiohttp.ClientError as exc:
            outcome, what = Post.AMBIGUOUS, type(exc).__name__
        except asyncio.CancelledError:
            self._answer(i, Post.AMBIGUOUS, "unanswered")
            raise
        self._answer(i, outcome, what)

    def _answer(self, i: int, outcome: Post, what: str | int) -> None:
        self._tracker.on_answer(i, outcome, time.monotonic_ns(), what)
        if self._tracker.in_flight < self.max_in_flight:
            self._room.set()

    async def drain(self, timeout_s: float) -> None:
        """Wait for the POSTs still in flight; cancel those that outlast `timeout_s`."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=max(timeout_s, 0.0))
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
