"""The runner's lean NATS subscriber against a real nats-server (and, to cut frames at every
byte and to see it answer PING, a raw server speaking the protocol)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable

import nats
import pytest

from jetsaga.devstack.nats import NatsServer
from jetsaga.load.natsub import Subscriber
from jetsaga.load.tracker import Tracker
from jetsaga.load.watch import Watcher
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes]] = []

    def __call__(self, subject: bytes, payload: bytes) -> None:
        self.got.append((subject, payload))


async def test_messages_on_the_subjects_reach_the_callback_with_or_without_headers(
    nats_url: str,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    sub = Subscriber(nats_url, [f"{prefix}.a", f"{prefix}.b"], inbox)
    await sub.connect()
    big = b"x" * 300_000  # read in several pieces
    client = await nats.connect(nats_url)
    try:
        await client.publish(f"{prefix}.a", b'{"orderId":"1"}')
        await client.publish(f"{prefix}.b", b"with headers", headers={"Nats-Msg-Id": "m1"})
        await client.publish(f"{prefix}.c", b"not ours")
        await client.publish(f"{prefix}.a", big, reply="some.inbox")
        await client.publish(f"{prefix}.b", b"")
        await client.flush()
        await wait_until(lambda: len(inbox.got) == 4, message="four messages")
    finally:
        await client.close()
        await sub.close()
    assert inbox.got == [
        (f"{prefix}.a".encode(), b'{"orderId":"1"}'),
        (f"{prefix}.b".encode(), b"with headers"),
        (f"{prefix}.a".encode(), big),
        (f"{prefix}.b".encode(), b""),
    ]


async def test_frames_cut_at_every_byte_are_put_together_and_pings_answered() -> None:
    got_pong = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"raw","max_payload":1048576}\r\n')
        await reader.readuntil(b"PING\r\n")  # CONNECT, SUB, SUB, PING
        writer.write(b"+OK\r\nPONG\r\n")
        frames = (
            b"MSG a 1 5\r\nhello\r\n"
            b"HMSG b 2 reply.to 18 23\r\nNATS/1.0\r\nK: v\r\n\r\nworld\r\n"
            b"PING\r\n"
        )
        for i in range(len(frames)):
            writer.write(frames[i : i + 1])
            await writer.drain()
        await reader.readuntil(b"PONG\r\n")
        got_pong.set()
        await reader.read()
        writer.close()

    listener = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    inbox = Inbox()
    sub = Subscriber(f"nats://127.0.0.1:{port}", ["a", "b"], inbox)
    await sub.connect()
    await asyncio.wait_for(got_pong.wait(), 10)
    await sub.close()
    listener.close()
    assert inbox.got == [(b"a", b"hello"), (b"b", b"world")]


async def test_nobody_listening_fails_fast_and_the_watcher_says_why() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(OSError):
            await asyncio.wait_for(Subscriber(url, ["a"], Inbox()).connect(), 10)
        watcher = Watcher(Tracker(1, 0))
        assert not await watcher.start(url)
    assert watcher.last_error and "Connect" in watcher.last_error and not watcher.alive


async def test_the_subscription_comes_back_after_the_server_restarts(
    make_nats: Callable[[], NatsServer],
) -> None:
    server = make_nats()
    inbox = Inbox()
    sub = Subscriber(server.url, ["after.restart"], inbox)
    await sub.connect()
    try:
        server.stop()
        await wait_until(lambda: not sub.alive, message="the loss seen")
        assert sub.last_error
        await server.astart()
        await wait_until(lambda: sub.alive, timeout=20, message="reconnected")
        client = await nats.connect(server.url)
        await client.publish("after.restart", b"again")
        await client.flush()
        await client.close()
        await wait_until(lambda: inbox.got, message="the message after the restart")
    finally:
        await sub.close()
        server.stop()
    assert inbox.got == [(b"after.restart", b"again")]
