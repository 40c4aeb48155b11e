"""LeanServer over real loopback sockets: routing, errors, keep-alive, pipelining, bodies,
limits, idle connections and a draining close."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import pytest
from multidict import CIMultiDict

from jetsaga import leanhttp
from jetsaga.leanhttp import MAX_BODY, LeanServer, Request, Route
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
READ_S = 5.0  # a deadline for every read: a missing answer fails the test, never hangs it


@dataclass
class App:
    """Routes whose handlers say what they saw; `/slow` waits for the test to release it."""

    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handled: list[str] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [
            leanhttp.get("/ping", self.ping),
            leanhttp.get("/orders/{order_id}", self.show_order),
            leanhttp.put("/orders/{order_id}", self.show_order),
            leanhttp.post("/echo", self.echo),
            leanhttp.get("/seq/{n}", self.seq),
            leanhttp.get("/slow", self.slow),
            leanhttp.get("/unavailable/{kind}", self.unavailable),
            leanhttp.get("/broken", self.broken),
            leanhttp.get("/injected", self.injected),
        ]

    async def ping(self, _: Request) -> leanhttp.Response:
        return leanhttp.json_response({"pong": True})

    async def show_order(self, request: Request) -> leanhttp.Response:
        return leanhttp.json_response(
            {
                "method": request.method,
                "order_id": request.match_info["order_id"],
                "view": request.query.get("view"),
                "trace": request.headers.get("x-trace-id"),
            }
        )

    async def echo(self, request: Request) -> leanhttp.Response:
        body = await request.read()
        return leanhttp.json_response({"body": body.decode(), "size": len(body)})

    async def seq(self, request: Request) -> leanhttp.Response:
        self.handled.append(request.match_info["n"])
        return leanhttp.json_response({"n": request.match_info["n"]})

    async def slow(self, _: Request) -> leanhttp.Response:
        self.slow_started.set()
        await self.release.wait()
        return leanhttp.json_response({"slow": "done"})

    async def unavailable(self, request: Request) -> leanhttp.Response:
        if request.match_info["kind"] == "starting":
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        raise ConnectionRefusedError("connection refused")

    async def injected(self, _: Request) -> leanhttp.Response:
        return leanhttp.json_response({}, headers={"Location": "/x\r\nSet-Cookie: evil=1"})

    async def broken(self, _: Request) -> leanhttp.Response:
        raise ValueError("a bug in the handler")


@contextlib.asynccontextmanager
async def serving(routes: Sequence[Route], **options: float) -> AsyncIterator[LeanServer]:
    server = LeanServer(routes, **options)
    await server.start(HOST, 0)
    try:
        yield server
    finally:
        await server.close()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Raw:
    """One client connection on a raw asyncio stream, to see exactly what goes over the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self) -> tuple[int, CIMultiDict[str]]:
        """The status and headers of the next answer, and not a byte more."""
        async with asyncio.timeout(READ_S):
            raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, value = line.split(":", 1)
            headers.add(name, value.strip())
        return int(status), headers

    async def answer(self) -> Answer:
        status, headers = await self.head()
        async with asyncio.timeout(READ_S):
            body = await self.reader.readexactly(int(headers["Content-Length"]))
        return Answer(status, headers, body)

    async def ask(self, data: bytes) -> Answer:
        await self.send(data)
        return await self.answer()

    async def rest_until_closed(self) -> bytes:
        """What the server sends until it closes the connection (fails if it does not)."""
        async with asyncio.timeout(READ_S):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def request(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {target} {version}", f"Host: {HOST}"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


Connect = Callable[[int], Awaitable[Raw]]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def server(app: App) -> AsyncIterator[LeanServer]:
    async with serving(app.routes()) as server:
        yield server


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens raw connections to a port, and closes them all after the test."""
    opened: list[Raw] = []

    async def open_raw(port: int) -> Raw:
        raw = Raw(*await asyncio.open_connection(HOST, port))
        opened.append(raw)
        return raw

    yield open_raw
    for raw in opened:
        await raw.close()


# --- routing -------------------------------------------------------------------------------


async def test_exact_path_is_routed_to_its_handler(server: LeanServer, connect: Connect) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", "/ping"))

    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"pong": True}


async def test_path_parameter_is_given_in_match_info_percent_decoded(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    plain = await raw.ask(request("GET", "/orders/o-42"))
    encoded = await raw.ask(request("GET", "/orders/caf%C3%A9%2042"))

    assert plain.json()["order_id"] == "o-42"
    assert encoded.json()["order_id"] == "café 42"


async def test_query_string_is_given_in_request_query(server: LeanServer, connect: Connect) -> None:
    raw = await connect(server.port)

    with_view = await raw.ask(request("GET", "/orders/o-1?page=2&view=full%20history"))
    without = await raw.ask(request("GET", "/orders/o-1"))

    assert with_view.json()["view"] == "full history"
    assert without.json()["view"] is None


async def test_absolute_form_target_is_routed_by_its_path_and_query(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", f"http://{HOST}:{server.port}/orders/o%2D9?view=x"))

    assert answer.status == 200
    assert answer.json()["order_id"] == "o-9" and answer.json()["view"] == "x"


async def test_request_headers_are_case_insensitive(server: LeanServer, connect: Connect) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", "/orders/o-1", {"X-TRACE-ID": "trace-7"}))

    assert answer.json()["trace"] == "trace-7"


async def test_request_body_is_read_whole(server: LeanServer, connect: Connect) -> None:
    raw = await connect(server.port)
    body = b'{"sku": "A-1", "quantity": 3}' * 100

    answer = await raw.ask(request("POST", "/echo", body=body))

    assert answer.status == 200
    assert answer.json() == {"body": body.decode(), "size": len(body)}


# --- 404, 405, HEAD ------------------------------------------------------------------------


async def test_unknown_path_gets_a_404_json_error(server: LeanServer, connect: Connect) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", "/nowhere"))

    assert answer.status == 404
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"error": "not found"}


async def test_known_path_with_another_method_gets_a_405_naming_the_allowed_ones(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("DELETE", "/orders/o-1"))

    assert answer.status == 405
    assert answer.headers["Allow"] == "GET, HEAD, PUT"
    assert answer.json() == {"error": "method DELETE not allowed"}


async def test_head_on_a_get_route_answers_headers_with_content_length_and_no_body(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)
    full = await raw.ask(request("GET", "/ping"))

    await raw.send(request("HEAD", "/ping"))
    status, headers = await raw.head()
    # Had HEAD sent a body, its bytes would come before this answer's status line.
    after = await raw.ask(request("GET", "/ping"))

    assert status == 200
    assert headers["Content-Length"] == str(len(full.body))
    assert headers["Content-Type"] == "application/json"
    assert after.status == 200
    assert after.body == full.body


# --- connections ---------------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection(server: LeanServer) -> None:
    created: list[object] = []

    async def on_created(_: aiohttp.ClientSession, __: SimpleNamespace, params: object) -> None:
        created.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_created)
    connector = aiohttp.TCPConnector(limit=1)
    base = f"http://{HOST}:{server.port}"
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        for i in range(5):
            async with session.get(f"{base}/seq/{i}") as response:
                assert response.status == 200
                assert "Connection" not in response.headers
                assert await response.json() == {"n": str(i)}
        assert len(server.connections) == 1

    assert len(created) == 1


async def test_connection_close_is_honoured_after_the_answer(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", "/ping", {"Connection": "close"}))

    assert answer.status == 200
    assert answer.headers["Connection"] == "close"
    assert await raw.rest_until_closed() == b""


async def test_http_1_0_request_is_answered_and_then_closed(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", "/ping", version="HTTP/1.0"))

    assert answer.status == 200
    assert answer.json() == {"pong": True}
    assert answer.headers["Connection"] == "close"
    assert await raw.rest_until_closed() == b""


async def test_http_1_0_keep_alive_is_confirmed_and_kept(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)
    ask = request("GET", "/ping", {"Connection": "keep-alive"}, version="HTTP/1.0")

    first = await raw.ask(ask)
    second = await raw.ask(ask)

    assert first.headers["Connection"] == "keep-alive"  # else a 1.0 client expects a close
    assert second.status == 200 and second.json() == {"pong": True}


async def test_idle_connections_are_closed_after_the_idle_timeout(
    app: App, connect: Connect
) -> None:
    async with serving(app.routes(), idle_timeout_s=0.2) as server:
        silent = await connect(server.port)
        used = await connect(server.port)
        answer = await used.ask(request("GET", "/ping"))
        assert answer.status == 200

        await wait_until(silent.reader.at_eof, timeout=5, message="silent connection closed")
        await wait_until(used.reader.at_eof, timeout=5, message="used connection closed")
        await wait_until(lambda: not server.connections, timeout=5, message="none tracked")


async def test_a_connection_silent_in_the_middle_of_a_request_is_closed(
    app: App, connect: Connect
) -> None:
    async with serving(app.routes(), idle_timeout_s=0.2) as server:
        stalled = await connect(server.port)
        await stalled.send(
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nhal"
        )

        await wait_until(stalled.reader.at_eof, timeout=5, message="stalled connection closed")


# --- pipelining ----------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    await raw.send(b"".join(request("GET", f"/seq/{n}") for n in ("1", "2", "3")))
    answers = [await raw.answer() for _ in range(3)]

    assert [a.json() for a in answers] == [{"n": "1"}, {"n": "2"}, {"n": "3"}]


async def test_pipelined_answers_wait_for_a_slow_first_handler(
    app: App, server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    await raw.send(request("GET", "/slow") + request("GET", "/seq/2") + request("GET", "/seq/3"))
    async with asyncio.timeout(READ_S):
        await app.slow_started.wait()
    app.release.set()
    answers = [await raw.answer() for _ in range(3)]

    assert [a.json() for a in answers] == [{"slow": "done"}, {"n": "2"}, {"n": "3"}]
    assert app.handled == ["2", "3"]


# --- bodies --------------------------------------------------------------------------------


async def test_chunked_request_body_is_received_whole(server: LeanServer, connect: Connect) -> None:
    raw = await connect(server.port)
    chunks = [b"hello, ", b"chunked ", b"world"]

    await raw.send(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for chunk in chunks:
        await raw.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    await raw.send(b"0\r\n\r\n")
    answer = await raw.answer()

    assert answer.status == 200
    assert answer.json() == {"body": "hello, chunked world", "size": 20}


async def test_body_at_the_limit_is_accepted(server: LeanServer, connect: Connect) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("POST", "/echo", body=b"x" * MAX_BODY))

    assert answer.status == 200
    assert answer.json()["size"] == MAX_BODY


async def test_body_over_the_limit_gets_413_and_the_connection_still_serves(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    too_large = await raw.ask(request("POST", "/echo", body=b"x" * (MAX_BODY + 1)))
    after = await raw.ask(request("POST", "/echo", body=b"small"))

    assert too_large.status == 413
    assert "Connection" not in too_large.headers
    assert too_large.json() == {"error": f"body larger than {MAX_BODY} bytes"}
    assert after.status == 200
    assert after.json() == {"body": "small", "size": 5}


async def test_expect_100_continue_gets_an_interim_answer_before_the_body_is_sent(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    await raw.send(
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(READ_S):
        interim = await raw.reader.readuntil(b"\r\n\r\n")
    await raw.send(b"hello")
    answer = await raw.answer()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.status == 200
    assert answer.json() == {"body": "hello", "size": 5}


async def test_100_continue_behind_a_pipelined_request_waits_for_its_answer(
    app: App, server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    await raw.send(
        request("GET", "/slow") + b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(READ_S):
        await app.slow_started.wait()
    app.release.set()
    slow = await raw.answer()
    async with asyncio.timeout(READ_S):
        interim = await raw.reader.readuntil(b"\r\n\r\n")
    await raw.send(b"hello")
    echoed = await raw.answer()

    assert slow.json() == {"slow": "done"}  # the answer before it comes first, whole
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert echoed.json() == {"body": "hello", "size": 5}


# --- malformed requests and failing handlers -----------------------------------------------


async def test_malformed_request_line_gets_400_and_the_connection_is_closed(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(b"THIS IS NOT HTTP\r\n\r\n")

    assert answer.status == 400
    assert answer.headers["Connection"] == "close"
    assert answer.json()["error"].startswith("malformed request")
    assert await raw.rest_until_closed() == b""


async def test_requests_before_a_malformed_one_are_answered_before_the_400(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    await raw.send(request("GET", "/seq/1") + b"THIS IS NOT HTTP\r\n\r\n")
    first = await raw.answer()
    second = await raw.answer()

    assert first.json() == {"n": "1"}
    assert second.status == 400
    assert await raw.rest_until_closed() == b""


@pytest.mark.parametrize("kind", ["starting", "refused"])
async def test_database_unavailable_in_a_handler_gets_503_with_retry_after(
    server: LeanServer, connect: Connect, kind: str
) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", f"/unavailable/{kind}"))

    assert answer.status == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.json() == {"error": "database unavailable, retry shortly"}


async def test_a_header_value_with_a_line_break_is_never_sent(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)

    answer = await raw.ask(request("GET", "/injected"))
    after = await raw.ask(request("GET", "/ping"))

    assert answer.status == 500 and "Set-Cookie" not in answer.headers
    assert after.status == 200


async def test_handler_raising_gets_a_500_json_error_and_the_server_keeps_serving(
    server: LeanServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await connect(server.port)

    with caplog.at_level(logging.ERROR, logger="jetsaga.leanhttp"):
        failed = await raw.ask(request("GET", "/broken"))
    after = await raw.ask(request("GET", "/ping"))

    assert failed.status == 500
    assert failed.json() == {"error": "internal error"}
    assert "Connection" not in failed.headers
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
    assert after.status == 200


# --- close ---------------------------------------------------------------------------------


async def test_close_refuses_new_connections_and_finishes_the_request_in_progress(
    app: App, server: LeanServer, connect: Connect
) -> None:
    port = server.port
    raw = await connect(port)
    await raw.send(request("GET", "/slow"))
    async with asyncio.timeout(READ_S):
        await app.slow_started.wait()

    closing = asyncio.create_task(server.close())
    await wait_until(lambda: server.closing, timeout=5, message="close started")
    with pytest.raises(ConnectionRefusedError):
        await connect(port)
    assert not closing.done()  # it waits for the request in progress

    app.release.set()
    answer = await raw.answer()
    async with asyncio.timeout(READ_S):
        await closing

    assert answer.status == 200
    assert answer.json() == {"slow": "done"}
    assert answer.headers["Connection"] == "close"
    assert await raw.rest_until_closed() == b""


async def test_close_closes_idle_keep_alive_connections(
    server: LeanServer, connect: Connect
) -> None:
    raw = await connect(server.port)
    assert (await raw.ask(request("GET", "/ping"))).status == 200

    async with asyncio.timeout(READ_S):
        await server.close()

    assert await raw.rest_until_closed() == b""
