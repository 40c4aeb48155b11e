"""What serving one `POST /orders` costs the serving process: aiohttp against `LeanServer`.

Each server runs in a process of its own with the same handler (decode the JSON body,
answer 201 with a small JSON body and a Location header, as intake does without the
database), and `jetsaga.load.postclient.PostClient` sends it open-loop arrivals at `--rate`
over keep-alive connections. The figure is the server process's CPU (user + system, from
/proc) per request; runs are interleaved and repeated, the table shows the median and the
range.

    python -m bench.http [--rate 1000] [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import uuid

import msgspec
import uvloop
from aiohttp import web

from jetsaga import leanhttp
from jetsaga.devstack.procs import free_port
from jetsaga.load.postclient import PostClient

BODY = (
    b'{"orderId":"%s","customerId":"c-1","items":[{"productId":"sku-1","quantity":1,'
    b'"unitPrice":1999}],"currency":"usd","paymentMethod":"pm_card_visa"}'
)
_decode, _encode = msgspec.json.decode, msgspec.json.encode


def _answer(body: bytes) -> tuple[bytes, dict[str, str]]:
    order_id = _decode(body)["orderId"]
    answer = {"orderId": order_id, "status": "PENDING", "sagaStatus": "STARTED"}
    return _encode(answer), {"Location": f"/orders/{order_id}"}


async def _create_aiohttp(request: web.Request) -> web.Response:
    body, headers = _answer(await request.read())
    return web.Response(body=body, status=201, content_type="application/json", headers=headers)


async def _create_lean(request: leanhttp.Request) -> leanhttp.Response:
    body, headers = _answer(await request.read())
    return leanhttp.Response(body, 201, headers=headers)


async def _serve(kind: str, port: int) -> None:
    if kind == "aiohttp":
        app = web.Application(client_max_size=leanhttp.MAX_BODY)
        app.add_routes([web.post("/orders", _create_aiohttp)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    else:
        server = leanhttp.LeanServer([leanhttp.post("/orders", _create_lean)])
        await server.start("127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(port: int, pid: int, rate: int, seconds: float) -> float:
    """Server CPU µs per request for `rate`/s over `seconds`."""
    answered: list[object] = []
    client = PostClient(
        f"http://127.0.0.1:{port}/orders", 64, 10.0, lambda k, r: answered.append(r)
    )
    loop = asyncio.get_running_loop()
    n = int(rate * seconds)
    before, start = _cpu_s(pid), loop.time()
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        client.post(i, BODY % str(uuid.uuid4()).encode())
    await client.drain(10.0)
    client.close()
    if answered.count(201) != n:
        raise SystemExit(f"only {answered.count(201)} of {n} requests answered 201")
    return 1e6 * (_cpu_s(pid) - before) / n


def _start(kind: str, port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.http", "--serve", kind, "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit(f"{kind} server did not start")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", choices=("aiohttp", "lean"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve(args.serve, args.port))
        return
    results: dict[str, list[float]] = {"aiohttp": [], "lean": []}
    for _ in range(args.repeats):
        for kind, figures in results.items():
            port = free_port()
            proc = _start(kind, port)
            try:
                figures.append(uvloop.run(_drive(port, proc.pid, args.rate, args.seconds)))
            finally:
                proc.terminate()
                proc.wait()
    print(f"POST /orders at {args.rate}/s for {args.seconds:g} s, {args.repeats} runs each")
    print(f"{'server':8} {'CPU µs/request':>15} {'range':>15}")
    for kind, figures in results.items():
        spread = f"{min(figures):.0f}-{max(figures):.0f}"
        print(f"{kind:8} {statistics.median(figures):15.0f} {spread:>15}")


if __name__ == "__main__":
    main()
