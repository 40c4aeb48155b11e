"""The runner's lean HTTP/1.1 POST client against real servers on 127.0.0.1: an aiohttp app
for well-behaved answers, and raw asyncio servers for the misbehaving ones."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web

from jetsaga.load.postclient import CONNECT, DISCONNECTED, TIMEOUT, UNANSWERED, PostClient, Result
from jetsaga.load.sender import outcome_of
from jetsaga.load.tracker import Post
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)


class Answers:
    """What the client said of each request, by key."""

    def __init__(self) -> None:
        self.by_key: dict[int, Result] = {}

    def __call__(self, key: int, result: Result) -> None:
        assert key not in self.by_key, f"request {key} answered twice"
        self.by_key[key] = result


class Recorder:
    """An aiohttp app that answers POST /orders with the status the body asks for, holds
    the answer while `hold` is clear, and notes each request and the peer it came from."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, bytes]] = []  # path, host, type, body
        self.peers: set[object] = set()
        self.in_flight = self.most_in_flight = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.close_after = False

    async def post(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.requests.append((request.path, request.host, request.headers["Content-Type"], body))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.hold.wait()
        finally:
            self.in_flight -= 1
        headers = {"Connection": "close"} if self.close_after else None
        return web.Response(status=int(body.split(b":")[0]), body=b"{}", headers=headers)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_post("/api/orders", rec.post)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield rec, f"http://127.0.0.1:{port}/api/orders"
    finally:
        rec.hold.set()
        await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/orders"


async def read_request(reader: asyncio.StreamReader) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    length = head.split(b"content-length:")[1].split(b"\r\n")[0]
    await reader.readexactly(int(length))


async def post_once(handler: Handler) -> Answers:
    """One POST to a server that answers with `handler`; what the client said of it."""
    server, url = await raw_server(handler)
    answers = Answers()
    client = PostClient(url, 1, 5.0, answers)
    client.post(1, b"{}")
    await client.drain(10)
    client.close()
    server.close()
    return answers


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_statuses_are_reported_as_the_server_gave_them(
    recorder: tuple[Recorder, str],
) -> None:
    rec, url = recorder
    answers = Answers()
    client = PostClient(url, 4, 5.0, answers)
    for key, status in enumerate((201, 200, 409, 422, 500, 503)):
        client.post(key, b"%d: json" % status)
    await client.drain(10)
    client.close()
    assert answers.by_key == {0: 201, 1: 200, 2: 409, 3: 422, 4: 500, 5: 503}
    path, host, content_type, _ = rec.requests[0]
    assert (path, host, content_type) == ("/api/orders", url.split("/")[2], "application/json")
    assert sorted(body for *_, body in rec.requests)[0] == b"200: json"


async def test_one_connection_is_kept_alive_for_requests_one_after_another(
    recorder: tuple[Recorder, str],
) -> None:
    rec, url = recorder
    answers = Answers()
    client = PostClient(url, 8, 5.0, answers)
    for key in range(20):
        client.post(key, b"201")
        await client.drain(10)  # answered before the next one goes
    client.close()
    assert set(answers.by_key.values()) == {201}
    assert client.opened == 1 and len(rec.peers) == 1


async def test_no_more_requests_in_flight_than_connections_and_the_rest_wait(
    recorder: tuple[Recorder, str],
) -> None:
    rec, url = recorder
    rec.hold.clear()
    answers = Answers()
    client = PostClient(url, 3, 10.0, answers)
    for key in range(10):
        client.post(key, b"201")
    await wait_until(lambda: rec.in_flight == 3, message="three requests held")
    rec.hold.set()
    await client.drain(10)
    client.close()
    assert answers.by_key == dict.fromkeys(range(10), 201)
    assert rec.most_in_flight == 3 and client.opened == 3


async def test_a_connection_the_server_closes_after_its_answer_is_not_reused(
    recorder: tuple[Recorder, str],
) -> None:
    rec, url = recorder
    rec.close_after = True
    answers = Answers()
    client = PostClient(url, 2, 5.0, answers)
    for key in range(3):
        client.post(key, b"201")
        await client.drain(10)
    client.close()
    assert answers.by_key == dict.fromkeys(range(3), 201)
    assert client.opened == 3


async def test_a_request_without_an_answer_times_out_and_its_connection_is_dropped() -> None:
    dropped = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up and closes
        dropped.set()
        writer.close()

    server, url = await raw_server(never_answer)
    answers = Answers()
    client = PostClient(url, 2, 0.3, answers)
    client.post(1, b"{}")
    await asyncio.wait_for(dropped.wait(), 10)
    client.close()
    server.close()
    assert answers.by_key == {1: TIMEOUT}
    assert outcome_of(TIMEOUT) is Post.AMBIGUOUS


async def test_requests_waiting_for_a_connection_time_out_too() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server, url = await raw_server(never_answer)
    answers = Answers()
    client = PostClient(url, 1, 0.3, answers)
    for key in range(3):
        client.post(key, b"{}")
    await client.drain(10)
    client.close()
    server.close()
    assert answers.by_key == dict.fromkeys(range(3), TIMEOUT)


async def test_a_connection_closed_before_the_answer_is_ambiguous() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{")  # half an answer
        writer.close()

    answers = await post_once(hang_up)
    assert answers.by_key == {1: DISCONNECTED}
    assert outcome_of(DISCONNECTED) is Post.AMBIGUOUS


async def test_a_connection_reset_mid_request_is_ambiguous() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closing with linger 0 sends RST

    answers = await post_once(reset)
    assert answers.by_key == {1: "ConnectionResetError"}
    assert outcome_of(answers.by_key[1]) is Post.AMBIGUOUS


async def test_garbage_for_an_answer_is_ambiguous() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()
        writer.close()

    answers = await post_once(garbage)
    assert str(answers.by_key[1]).startswith("HttpParser")
    assert outcome_of(answers.by_key[1]) is Post.AMBIGUOUS


async def test_a_refused_connection_means_the_request_was_not_sent(closed_port: int) -> None:
    answers = Answers()
    client = PostClient(f"http://127.0.0.1:{closed_port}/orders", 2, 5.0, answers)
    for key in range(5):
        client.post(key, b"{}")
    await client.drain(10)
    client.close()
    assert answers.by_key == dict.fromkeys(range(5), CONNECT)
    assert outcome_of(CONNECT) is Post.NOT_SENT


async def test_drain_gives_up_on_what_is_still_open(recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    rec.hold.clear()
    answers = Answers()
    client = PostClient(url, 1, 30.0, answers)
    client.post(1, b"201")
    client.post(2, b"201")  # waits for the only connection
    await wait_until(lambda: rec.in_flight == 1, message="the first request held")
    await client.drain(0.1)
    client.close()
    assert answers.by_key == {1: UNANSWERED, 2: UNANSWERED}


def test_statuses_sort_orders_into_accepted_rejected_and_ambiguous() -> None:
    assert [outcome_of(s) for s in (200, 201, 400, 404, 409, 500, 503)] == [
        Post.ACCEPTED,
        Post.ACCEPTED,
        Post.REJECTED,
        Post.REJECTED,
        Post.REJECTED,
        Post.AMBIGUOUS,
        Post.AMBIGUOUS,
    ]


def test_only_plain_http_urls_are_taken() -> None:
    with pytest.raises(ValueError):
        PostClient("https://127.0.0.1:1/orders", 1, 1.0, Answers())
