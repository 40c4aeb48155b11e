"""A lean HTTP/1.1 client for the runner's one hot request: `POST` of a JSON body to one URL.

The runner shares the machine with the system it measures, and aiohttp's per-request
machinery (session, header building, a timeout handle and a task per request) cost it
more CPU than sending needs. Here: a pool of keep-alive connections on asyncio Protocols,
request bytes made from one pre-built head, answers parsed by httptools, and each result
handed to one callback, with no task, future or timer per request (one sweep checks the
deadlines). A connection carries one request at a time, so that a reset or a timeout
concerns exactly one request.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import httptools

# What became of a request: its HTTP status, the name of the OSError that broke its
# connection, the name of the parser's error, or one of these.
CONNECT: Final = "connect"  # no connection could be made: the request never left
TIMEOUT: Final = "timeout"
DISCONNECTED: Final = "ServerDisconnectedError"  # closed before the whole answer came
UNANSWERED: Final = "unanswered"  # given up on by `drain` or `close`

Result = int | str
_IDLE_S: Final = 30.0  # a connection idle for longer is closed rather than reused


class _Request:
    __slots__ = ("data", "deadline", "key")

    def __init__(self, key: int, data: bytes, deadline: float) -> None:
        self.key = key
        self.data = data
        self.deadline = deadline


class _Connection(asyncio.Protocol):
    """One keep-alive connection; its client decides what it carries."""

    def __init__(self, client: PostClient) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)  # calls on_message_complete only
        self.transport: asyncio.Transport | None = None
        self.request: _Request | None = None
        self.status = 0  # of the answer the last read completed
        self.keep_alive = False
        self.idle_since = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.client._give_up(self, type(exc).__name__)
            return
        if self.status:  # acted on out here, so that nothing of ours runs inside the parser
            status, self.status = self.status, 0
            self.client._answered(self, status, self.keep_alive)

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self, type(exc).__name__ if exc else DISCONNECTED)


class PostClient:
    """POSTs bodies to `url` over at most `connections` keep-alive connections. Each
    request's result goes to `on_result(key, result)` once, however the request ends,
    at the latest `timeout_s` after `post`: requests wait for a free connection in order."""

    def __init__(
        self,
        url: str,
        connections: int,
        timeout_s: float,
        on_result: Callable[[int, Result], None],
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url}: the runner POSTs to http://host[:port]/path URLs only")
        self._address = (parts.hostname, parts.port or 80)
        self._head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._size = connections
        self._timeout_s = timeout_s
        self._sweep_s = min(0.25, timeout_s / 4)  # the resolution of the timeout
        self._on_result = on_result
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._connections: set[_Connection] = set()  # open or being opened
        self._idle: list[_Connection] = []  # the most recently used last
        self._waiting: collections.deque[_Request] = collections.deque()  # by deadline
        self._opening = 0  # connections being made
        self._tasks: set[asyncio.Task[None]] = set()  # that make them
        self._outstanding = 0
        self._drained: asyncio.Future[None] | None = None
        self.opened = 0  # connections ever made

    def post(self, key: int, body: bytes) -> None:
        """Send `body` now if a connection is free, else as soon as one is."""
        loop = self._loop or self._start()
        now = loop.time()
        data = b"%b%d\r\n\r\n%b" % (self._head, len(body), body)
        request = _Request(key, data, now + self._timeout_s)
        self._outstanding += 1
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < _IDLE_S:
                self._send(conn, request)
                return
            self._close(conn)  # the server may be closing it just now
        self._waiting.append(request)
        self._open_more()

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for every request to end, then give up on the rest."""
        if self._outstanding and timeout_s > 0 and self._loop is not None:
            self._drained = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._drained
            except TimeoutError:
                pass
            finally:
                self._drained = None
        self._give_up_all()

    def close(self) -> None:
        """Give up on every request still open and close every connection."""
        self._give_up_all()
        for task in self._tasks:
            task.cancel()
        for conn in list(self._connections):
            self._close(conn)
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _start(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.call_later(self._sweep_s, self._sweep)
        return self._loop

    def _send(self, conn: _Connection, request: _Request) -> None:
        assert conn.transport is not None
        conn.request = request
        conn.transport.write(request.data)

    def _release(self, conn: _Connection) -> None:
        """A connection is free: it takes the oldest waiting request, or goes idle."""
        assert self._loop is not None
        if conn.closed:  # closed by `close` while it was being made, say
            self._close(conn)
            return
        if self._waiting:
            self._send(conn, self._waiting.popleft())
        else:
            conn.idle_since = self._loop.time()
            self._idle.append(conn)

    def _open_more(self) -> None:
        """A connection more for each waiting request, within the pool's size."""
        assert self._loop is not None
        while len(self._waiting) > self._opening and len(self._connections) < self._size:
            conn = _Connection(self)
            self._connections.add(conn)
            self._opening += 1
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: _Connection) -> None:
        assert self._loop is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._loop.create_connection(lambda: conn, *self._address)
        except OSError:  # refused, unreachable, unknown host, timed out
            self._opening -= 1
            self._connections.discard(conn)
            if self._waiting:  # the oldest request gives up: there is nowhere to send it
                self._finish(self._waiting.popleft(), CONNECT)
            self._open_more()
            return
        self._opening -= 1
        self.opened += 1
        self._release(conn)

    def _answered(self, conn: _Connection, status: int, keep_alive: bool) -> None:
        request, conn.request = conn.request, None
        if request is None:  # an answer to nothing: the connection is out of step
            self._close(conn)
            return
        if keep_alive:
            self._release(conn)
        else:
            self._close(conn)
        self._finish(request, status)

    def _lost(self, conn: _Connection, what: str) -> None:
        if not conn.closed:
            conn.closed = True
            if conn in self._idle:
                self._idle.remove(conn)
        self._connections.discard(conn)
        request, conn.request = conn.request, None
        if request is not None:
            self._finish(request, what)
        self._open_more()

    def _give_up(self, conn: _Connection, what: str) -> None:
        request, conn.request = conn.request, None
        self._close(conn)
        if request is not None:
            self._finish(request, what)

    def _give_up_all(self) -> None:
        while self._waiting:
            self._finish(self._waiting.popleft(), UNANSWERED)
        for conn in [c for c in self._connections if c.request is not None]:
            self._give_up(conn, UNANSWERED)

    def _close(self, conn: _Connection) -> None:
        """Close at once, in any state: `_lost` follows and does the bookkeeping."""
        conn.closed = True
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.transport is not None:
            conn.transport.abort()

    def _finish(self, request: _Request, result: Result) -> None:
        self._outstanding -= 1
        if not self._outstanding and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._on_result(request.key, result)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        waiting = self._waiting
        while waiting and waiting[0].deadline <= now:
            self._finish(waiting.popleft(), TIMEOUT)
        for conn in [c for c in self._connections if c.request and c.request.deadline <= now]:
            self._give_up(conn, TIMEOUT)
        self._sweeper = self._loop.call_later(self._sweep_s, self._sweep)
