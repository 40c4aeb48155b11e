"""A stand-in order and inventory service, to test and measure the load runner itself.

One aiohttp app on 127.0.0.1 with the four endpoints the runner uses (SPEC §2, §3). Orders
go final as soon as they are taken: FAILED if stock is short, CANCELLED for the declining
card, else CONFIRMED (stock moves to sold). It publishes nothing, unless given `on_final`
(`--nats-url`), so the runner's GET fallback decides finals.
`python -m jetsaga.load.fakeservice [--port P] [--nats-url URL]` serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import nats
import uvloop
from aiohttp import web
from nats.aio.client import Client as NATS

from jetsaga.load.workload import PAYMENT_DECLINED, OrderBody

FinalHook = Callable[[str, str], Awaitable[None]]
_body = msgspec.json.Decoder(OrderBody)
_stock_body = msgspec.json.Decoder(dict[str, int])
_json = msgspec.json.Encoder()


class FakeSystem:
    """`lose(orderId)` keeps an order PENDING for ever (stock reserved); `pending_reads`
    GETs of each order say PENDING before the final status shows; confirmed stock stays
    reserved until `sale_lag_reads` stock reads have been made, as when the inventory
    service has yet to consume `orders.confirmed`."""

    def __init__(
        self,
        *,
        lose: Callable[[str], bool] = lambda _: False,
        pending_reads: int = 0,
        unavailable_every: int = 0,
        on_final: FinalHook | None = None,
        sale_lag_reads: int = 0,
    ) -> None:
        self.lose = lose
        self.pending_reads = pending_reads
        self.unavailable_every = unavailable_every  # every n-th POST: 503, order kept
        self.on_final = on_final
        self.orders: dict[str, list[str]] = {}  # orderId -> [status, updatedAt]
        self.reads: dict[str, int] = {}
        self.stock: dict[str, list[int]] = {}  # productId -> [available, reserved, sold]
        self.posts = 0
        self.sale_lag_reads = sale_lag_reads
        self._unsold: list[tuple[list[int], int]] = []  # confirmed, still reserved

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/orders", self.post_order)
        app.router.add_get("/orders/{id}", self.get_order)
        app.router.add_put("/inventory/{id}", self.put_stock)
        app.router.add_get("/inventory/{id}", self.get_stock)
        return app

    def _decide(self, order: OrderBody) -> str:
        lines = [(self.stock.setdefault(i.product_id, [0, 0, 0]), i.quantity) for i in order.items]
        if any(level[0] < qty for level, qty in lines):
            return "FAILED"
        lost = self.lose(order.order_id)
        if order.payment_method == PAYMENT_DECLINED and not lost:
            return "CANCELLED"
        held = lost or self.sale_lag_reads > 0
        for level, qty in lines:
            level[0] -= qty
            level[1 if held else 2] += qty
            if held and not lost:
                self._unsold.append((level, qty))
        return "PENDING" if lost else "CONFIRMED"

    async def post_order(self, request: web.Request) -> web.Response:
        try:
            order = _body.decode(await request.read())
        except msgspec.DecodeError as exc:
            return web.json_response({"error": str(exc)}, status=422)
        self.posts += 1
        status = self._decide(order)
        self.orders[order.order_id] = [status, datetime.now(UTC).isoformat()]
        if self.on_final is not None and status != "PENDING":
            await self.on_final(order.order_id, status)
        if self.unavailable_every and self.posts % self.unavailable_every == 0:
            return web.Response(status=503)
        body = {"orderId": order.order_id, "status": "PENDING", "sagaStatus": "STARTED"}
        return web.Response(
            status=201,
            body=_json.encode(body),
            content_type="application/json",
            headers={"Location": f"/orders/{order.order_id}"},
        )

    async def get_order(self, request: web.Request) -> web.Response:
        order_id = request.match_info["id"]
        if order_id not in self.orders:
            return web.Response(status=404)
        status, updated_at = self.orders[order_id]
        self.reads[order_id] = seen = self.reads.get(order_id, 0) + 1
        if seen <= self.pending_reads:
            status = "PENDING"
        body = {"orderId": order_id, "status": status, "updatedAt": updated_at}
        return web.Response(body=_json.encode(body), content_type="application/json")

    async def put_stock(self, request: web.Request) -> web.Response:
        available = _stock_body.decode(await request.read())["available"]
        self.stock[request.match_info["id"]] = [available, 0, 0]
        return web.Response(status=204)

    async def get_stock(self, request: web.Request) -> web.Response:
        product_id = request.match_info["id"]
        if product_id not in self.stock:
            return web.Response(status=404)
        self.sale_lag_reads -= 1
        if self.sale_lag_reads <= 0:
            for level, qty in self._unsold:  # the confirmations are consumed at last
                level[1] -= qty
                level[2] += qty
            self._unsold.clear()
        available, reserved, sold = self.stock[product_id]
        body = {"productId": product_id, "available": available, "reserved": reserved, "sold": sold}
        return web.Response(body=_json.encode(body), content_type="application/json")


async def serve(system: FakeSystem, port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving on 127.0.0.1; returns the runner (to clean up) and the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    runner = web.AppRunner(system.app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}"


def publisher(client: NATS) -> FinalHook:
    """A hook that publishes each final status as the order service does (core NATS)."""

    async def publish(order_id: str, status: str) -> None:
        await client.publish(f"orders.{status.lower()}", _json.encode({"orderId": order_id}))

    return publish


async def _main(port: int, nats_url: str | None) -> None:
    client = await nats.connect(nats_url) if nats_url else None
    system = FakeSystem(on_final=publisher(client) if client else None)
    runner, url = await serve(system, port)
    print(f"ready: {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if client:
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--nats-url", default=None, help="publish final statuses here")
    cli = parser.parse_args()
    uvloop.run(_main(cli.port, cli.nats_url))
