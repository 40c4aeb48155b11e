"""Open-loop sending of `POST /orders`: each order written at its due time from a timer
callback, each answer taken by a callback (see `postclient` for why not aiohttp here).

Responses never gate the next send; only a large cap on requests in flight can, and each
time the cap holds the sender back it is counted and reported.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from jetsaga.load.arrivals import Kind, Pacer
from jetsaga.load.postclient import CONNECT, PostClient, Result
from jetsaga.load.tracker import Post, Tracker
from jetsaga.load.workload import Workload

POST_TIMEOUT_S: Final = 30.0
_SPARE_FILES: Final = 200  # for the GET pool, NATS, stock reads and the files we write


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
    """For the rare requests: stock, and GETs of orders."""
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, keepalive_timeout=30, use_dns_cache=True
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


def outcome_of(result: Result) -> Post:
    """What a POST's HTTP status, or the way it failed, says about the order."""
    if isinstance(result, int):
        if 200 <= result < 300:
            return Post.ACCEPTED
        if result >= 500:
            return Post.AMBIGUOUS  # the order may exist; probed at the end
        return Post.REJECTED
    if result == CONNECT:
        return Post.NOT_SENT
    return Post.AMBIGUOUS  # timed out or broken off after it may have left


class Sender:
    def __init__(
        self,
        url: str,
        connections: int,
        tracker: Tracker,
        workload: Workload,
        max_in_flight: int,
    ) -> None:
        self._client = PostClient(f"{url}/orders", connections, POST_TIMEOUT_S, self._answer)
        self._tracker = tracker
        self._workload = workload
        self.max_in_flight = max_in_flight
        self.cap_hits = 0
        self._kind_for: Callable[[int], Kind] = lambda _: Kind.OK
        self._pacer: Pacer | None = None

    async def run(self, rate: float, kind_for: Callable[[int], Kind]) -> None:
        """Send every order of the run at its due time; returns when the last one is sent."""
        self._kind_for = kind_for
        self._pacer = Pacer(self._tracker.start_ns, self._tracker.count, rate, self._send)
        await self._pacer.run()

    def _send(self, i: int, due_ns: int) -> bool:
        tracker = self._tracker
        if tracker.in_flight >= self.max_in_flight:
            self.cap_hits += 1  # held back until an answer makes room
            return False
        kind = self._kind_for(i)
        order = self._workload.build(i, kind)
        tracker.on_send(i, order, kind, due_ns, time.monotonic_ns())
        self._client.post(i, order.body)
        return True

    def _answer(self, i: int, result: Result) -> None:
        self._tracker.on_answer(i, outcome_of(result), time.monotonic_ns(), result)
        if self._pacer is not None and self._tracker.in_flight < self.max_in_flight:
            self._pacer.resume()

    async def drain(self, timeout_s: float) -> None:
        """Wait for the POSTs still in flight; give up on those that outlast `timeout_s`."""
        await self._client.drain(timeout_s)

    def close(self) -> None:
        self._client.close()
