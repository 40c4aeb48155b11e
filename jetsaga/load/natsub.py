"""A lean core NATS subscriber, for the runner's one need: the payload of every message on
a few subjects, handed to a callback as it arrives, across restarts of the server.

Once the POSTs were lean, nats-py's work per message (a Msg object, parsed headers, a queue
and a task woken per message) was the larger part of the runner's CPU at 800 orders/s.
Here one asyncio Protocol cuts MSG and HMSG frames out of what it reads and calls
`on_msg(subject, payload)`; headers are skipped unread. Plain `nats://` servers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit

OnMsg = Callable[[bytes, bytes], None]
RETRY_S: Final = 0.5
RETRIES: Final = 60  # once connected, ride out a restart of about 30 s
_TIMEOUT_S: Final = 2.0


class NatsError(Exception):
    """The server answered the handshake with -ERR."""


class _Connection(asyncio.Protocol):
    def __init__(self, sub: Subscriber) -> None:
        self._sub = sub
        self._buf = b""
        self._frame: tuple[bytes, int, int] | None = None  # subject, header size, total size
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()  # PONG to our first PING

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        while True:
            if self._frame is not None:
                subject, header, total = self._frame
                if len(buf) - pos < total + 2:
                    break
                payload = buf[pos + header : pos + total]
                pos += total + 2  # and the frame's CRLF
                self._frame = None
                self._sub.on_msg(subject, payload)
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line, pos = buf[pos:end], end + 2
            if line.startswith(b"MSG "):  # MSG <subject> <sid> [reply-to] <#bytes>
                parts = line.split()
                self._frame = (parts[1], 0, int(parts[-1]))
            elif line.startswith(b"HMSG "):  # HMSG <subject> <sid> [reply-to] <#hdr> <#total>
                parts = line.split()
                self._frame = (parts[1], int(parts[-2]), int(parts[-1]))
            else:
                self._control(line)
        self._buf = buf[pos:]

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            self.send(b"PONG\r\n")
        elif line == b"PONG" and not self.ready.done():
            self.ready.set_result(None)
        elif line.startswith(b"-ERR"):
            error = line[4:].strip().decode(errors="replace")
            self._sub.last_error = f"NATS server: {error}"
            if not self.ready.done():
                self.ready.set_exception(NatsError(error))
        # INFO and +OK: nothing to do

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError("closed during the handshake"))
        self._sub._lost(self, exc)


class Subscriber:
    """Subscribed to `subjects` on the server(s) of `url` (comma-separated) while `alive`;
    each message goes to `on_msg(subject, payload)`."""

    def __init__(self, url: str, subjects: Sequence[str], on_msg: OnMsg) -> None:
        self.on_msg = on_msg
        self.last_error: str | None = None
        self._servers = itertools.cycle([_address(u) for u in url.split(",")])
        self._hello = _connect_line(urlsplit(url.split(",")[0])) + b"".join(
            b"SUB %b %d\r\n" % (subject.encode(), sid) for sid, subject in enumerate(subjects, 1)
        )
        self._conn: _Connection | None = None
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._conn is not None

    async def connect(self, attempts: int = 2, retry_s: float = 0.1) -> None:
        """Connect and subscribe: when this returns, the server has our subscriptions.
        Raises the last failure (OSError, TimeoutError or NatsError)."""
        for attempt in range(attempts):
            try:
                await self._open()
                return
            except (OSError, NatsError):
                if attempt == attempts - 1:
                    raise
            await asyncio.sleep(retry_s)

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    async def _open(self) -> None:
        conn = _Connection(self)
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                loop = asyncio.get_running_loop()
                await loop.create_connection(lambda: conn, *next(self._servers))
                conn.send(self._hello + b"PING\r\n")
                await conn.ready
        except BaseException:
            conn.abort()
            raise
        self._conn = conn

    def _lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return  # lost during its handshake: `_open` raises
        self._conn = None
        self.last_error = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        if not self._closing:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        for _ in range(RETRIES):
            await asyncio.sleep(RETRY_S)
            try:
                await self._open()
                return
            except (OSError, NatsError) as exc:
                self.last_error = f"reconnecting: {type(exc).__name__}: {exc}"


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url.strip() if "://" in url else f"nats://{url.strip()}")
    if parts.scheme != "nats":
        raise ValueError(f"{url}: only nats:// servers can be watched")
    return parts.hostname or "127.0.0.1", parts.port or 4222


def _connect_line(parts: SplitResult) -> bytes:
    options: dict[str, object] = {
        "verbose": False,
        "pedantic": False,
        "headers": True,
        "protocol": 1,
        "lang": "python",
        "version": "jetsaga-load",
    }
    username, password = parts.username, parts.password
    if username and password is not None:
        options |= {"user": unquote(username), "pass": unquote(password)}
    elif username:
        options["auth_token"] = unquote(username)
    return b"CONNECT %b\r\n" % json.dumps(options).encode()
