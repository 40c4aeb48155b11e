"""A standing pull: pull requests kept topped up, their messages taken as they arrive.

A consumer loop built on `fetch` pays for every batch twice over: a pull request and its
reply for the first message, then a no-wait request, its `404` and a lingering request to
drain the rest, with `next_msg` creating a task per message on the client. Measured on
2 cores, an empty drain costs ~1.2 ms of CPU (nats-server 0.44, client 0.76) and a
one-message fetch with its ack ~0.7 ms; at low rates that was most of the stack's CPU.

Here a loop keeps up to `credit` messages requested from the server at all times, asking for
more once fewer than half are outstanding. Messages land in a local buffer as the server
sends them, and a batch is whatever arrived while the previous one was being handled: no
round trip and no wait stands between a message and its handler.

The credit is counted, not asked for: it falls by one per message and by the
`Nats-Pending-Messages` of a request that expired or was refused (the server's 408/409
status), and it is forgotten when the server has said nothing for longer than a request
lives (a reconnect can drop pull requests silently), so a loop never stalls for good.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from jetsaga import natsclient

log = logging.getLogger(__name__)

EXPIRES_S = 5.0  # how long one pull request lives on the server
_PENDING = "Nats-Pending-Messages"
_STATUS = "Status"
_IDLE_HEARTBEAT = "100"

_request_encoder = msgspec.json.Encoder()


class _PullRequest(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int  # nanoseconds


class StandingPull:
    """The messages of one durable pull consumer, for one loop."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        *,
        credit: int,
        expires_s: float = EXPIRES_S,
        api_prefix: str = "$JS.API",
    ) -> None:
        if credit < 1:
            raise ValueError("credit must be at least 1")
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._credit = credit
        self._expires_s = expires_s
        self._outstanding = 0  # messages requested and neither delivered nor expired
        self._heard_at = 0.0  # when the server last sent this loop anything
        self._buffer: collections.deque[Msg] = collections.deque()
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await natsclient.subscribe(self._nc, self._nc.new_inbox(), self._on_message)

    async def stop(self) -> list[Msg]:
        """Stop asking; returns the messages delivered but not yet taken, for the caller to
        hand back to the server."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass  # closed or reconnecting: the server drops our requests with the interest
        left = list(self._buffer)
        self._buffer.clear()
        return left

    @property
    def outstanding(self) -> int:
        return self._outstanding

    async def take(self, limit: int, wait_s: float) -> list[Msg]:
        """Up to `limit` delivered messages, waiting up to `wait_s` for the first one."""
        await self._top_up()
        if not self._buffer:
            self._arrived.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._arrived.wait()
            except TimeoutError:
                return []
        buffer = self._buffer
        if len(buffer) <= limit:
            batch = list(buffer)
            buffer.clear()
        else:
            batch = [buffer.popleft() for _ in range(limit)]
        await self._top_up()
        return batch

    async def _top_up(self) -> None:
        if self._sub is None:
            return
        now = time.monotonic()
        if self._outstanding and now - self._heard_at > self._expires_s + 1.0:
            # Nothing for longer than a request lives: whatever was outstanding is gone.
            self._outstanding = 0
        if self._outstanding * 2 > self._credit:
            return
        # Whatever sits in the buffer counts against the credit, so a slow handler is not
        # sent more than `credit` messages ahead of itself.
        want = self._credit - self._outstanding - len(self._buffer)
        if want * 2 < self._credit:
            return
        request = _PullRequest(batch=want, expires=int(self._expires_s * 1e9))
        body = _request_encoder.encode(request)
        await self._nc.publish(self._next_subject, body, self._sub.subject)
        if not self._outstanding:
            self._heard_at = now  # the silence clock starts with the first request
        self._outstanding += want

    def _on_message(self, msg: Msg) -> None:
        self._heard_at = time.monotonic()
        if msg.reply:  # a stream message: its reply subject is where the ack goes
            self._outstanding = max(0, self._outstanding - 1)
            self._buffer.append(msg)
            self._arrived.set()
            return
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if status == _IDLE_HEARTBEAT:
            return
        # 408 (request expired), 409 (refused, e.g. max waiting or a leadership change),
        # 404: the request is over, with this many of its messages never sent.
        try:
            undelivered = int(headers.get(_PENDING, "0"))
        except ValueError:
            undelivered = 0
        self._outstanding = max(0, self._outstanding - undelivered)
        if status not in ("404", "408"):
            log.warning(
                "pull request refused",
                extra={"subject": self._next_subject, "status": status,
                       "description": headers.get("Description", "")},
            )  # fmt: skip
        self._arrived.set()  # wake the loop to ask again
