"""`jetsaga up` (SPEC §1): the whole system on one machine, supervised until Ctrl-C/SIGTERM.

Embedded servers start unless the environment names external ones (NATS_URL, DATABASE_URL,
STRIPE_SECRET_KEY); then streams and consumers, the three workers as child processes, and
the demo catalog. A worker that exits unexpectedly is restarted with back-off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
import uvloop

from jetsaga import config, logs
from jetsaga.devstack.nats import NatsServer
from jetsaga.devstack.postgres import PostgresServer
from jetsaga.devstack.procs import Child, ChildFailed, Server, free_port, port_in_use
from jetsaga.devstack.stripe import LocalStripe

log = logging.getLogger("jetsaga.up")

WORKERS = ("order", "inventory", "payment")
DEMO_CATALOG = {f"sku-{i}": 1000 for i in range(1, 11)}
NATS_PORT, POSTGRES_PORT, STRIPE_PORT = 4222, 54320, 8420
READY_TIMEOUT_S, WORKER_GRACE_S = 60.0, 15.0
BACKOFF_FIRST_S, BACKOFF_MAX_S, STABLE_AFTER_S = 0.5, 10.0, 30.0


def run(args: argparse.Namespace) -> int:
    settings = config.load()
    logs.configure("up", settings.log_level, settings.log_format)
    return uvloop.run(_up(Path(args.data_dir).absolute(), seed=not args.no_seed))


def _require_free(port: int, what: str) -> None:
    if port_in_use(port):
        raise ChildFailed(f"127.0.0.1:{port} is taken, so {what} cannot start there")


async def _start_servers(data: Path, env: dict[str, str], servers: list[Server]) -> None:
    """Start the embedded servers the environment does not replace; fill in `env`."""
    logs_dir = data / "logs"
    if not os.environ.get("DATABASE_URL"):
        port = POSTGRES_PORT if not port_in_use(POSTGRES_PORT) else free_port()
        pg = PostgresServer(data / "postgres", port=port, log_path=logs_dir / "postgres.log")
        servers.append(pg)
        env["DATABASE_URL"] = pg.url
    if not os.environ.get("NATS_URL"):
        _require_free(NATS_PORT, "NATS")
        nats = NatsServer(data / "nats", port=NATS_PORT, log_path=logs_dir / "nats.log")
        servers.append(nats)
        env["NATS_URL"] = nats.url
    if os.environ.get("STRIPE_SECRET_KEY"):
        env.setdefault("STRIPE_API_BASE", "https://api.stripe.com")
    elif env.get("PAYMENT_GATEWAY", "stripe") != "fake":
        _require_free(STRIPE_PORT, "localstripe")
        stripe = LocalStripe(
            port=STRIPE_PORT,
            store_path=data / "stripe" / "localstripe.pickle",
            log_path=logs_dir / "localstripe.log",
        )
        servers.append(stripe)
        env["STRIPE_API_BASE"] = stripe.api_base
        env["STRIPE_SECRET_KEY"] = config.DEFAULT_STRIPE_KEY
    await asyncio.gather(*(server.astart() for server in servers))
    log.info("servers ready: %s", ", ".join(s.name for s in servers) or "none embedded")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _worker(name: str, env: dict[str, str], logs_dir: Path) -> Child:
    argv = [sys.executable, "-m", "jetsaga.cli", "worker", name]
    log_path = logs_dir / f"{name}.log"
    return Child(f"{name}-worker", argv, log_path=log_path, env=env, echo=_to_stderr)


async def _wait_ready(http: aiohttp.ClientSession, child: Child, url: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while True:
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if not child.running:
            raise ChildFailed(f"{child.name} exited before it was ready:\n{child.tail()}")
        if loop.time() > deadline:
            raise ChildFailed(
                f"{child.name} not ready within {READY_TIMEOUT_S:g} s:\n{child.tail()}"
            )
        await asyncio.sleep(0.1)  # polling interval of a condition wait


async def _seed(http: aiohttp.ClientSession, base: str) -> None:
    """Stock only products that do not exist yet, so a second `up` keeps the stock."""
    for product, available in DEMO_CATALOG.items():
        async with http.get(f"{base}/inventory/{product}") as resp:
            if resp.status != 404:
                continue
        async with http.put(f"{base}/inventory/{product}", json={"available": available}) as r:
            r.raise_for_status()
    log.info("demo catalog ready: %s", ", ".join(DEMO_CATALOG))


async def _supervise(name: str, child: Child, stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    delay, started = BACKOFF_FIRST_S, loop.time()
    while True:
        code = await asyncio.to_thread(child.wait)
        if stopping.is_set():
            return
        if loop.time() - started >= STABLE_AFTER_S:
            delay = BACKOFF_FIRST_S
        log.warning("%s worker exited with code %s; restarting in %.1f s", name, code, delay)
        try:
            await asyncio.wait_for(stopping.wait(), delay)
            return
        except TimeoutError:
            pass
        child.spawn()
        started = loop.time()
        log.warning("%s worker restarted (pid %d)", name, child.pid)
        delay = min(delay * 2, BACKOFF_MAX_S)


async def _bring_up(
    data: Path, seed: bool, servers: list[Server], workers: dict[str, Child]
) -> config.Settings:
    from jetsaga import setup  # imported here: it pulls in the NATS client

    env = dict(os.environ)
    await _start_servers(data, env, servers)
    settings = config.load(env)
    await setup.apply(settings, out=log.info)
    for name in WORKERS:
        _require_free(settings.port_of(name), f"the {name} worker")
    for name in WORKERS:
        workers[name] = _worker(name, env, data / "logs")
        workers[name].spawn()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        await asyncio.gather(
            *(
                _wait_ready(http, child, f"http://127.0.0.1:{settings.port_of(name)}/readyz")
                for name, child in workers.items()
            )
        )
        if seed:
            await _seed(http, f"http://127.0.0.1:{settings.inventory_port}")
    return settings


async def _up(data: Path, seed: bool) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    servers: list[Server] = []
    workers: dict[str, Child] = {}
    supervisors: list[asyncio.Task[None]] = []
    try:
        bring_up = asyncio.create_task(_bring_up(data, seed, servers, workers))
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait({bring_up, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not bring_up.done():
            bring_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bring_up
            return 0
        try:
            settings = bring_up.result()
        except Exception as exc:
            log.error("jetsaga up failed: %s", exc)
            return 1
        print(f"ready: http://127.0.0.1:{settings.order_port}", flush=True)
        for name, child in workers.items():
            supervisors.append(asyncio.create_task(_supervise(name, child, stopping)))
        await stopping.wait()
        log.info("stopping")
        return 0
    finally:
        stopping.set()
        for task in supervisors:
            task.cancel()
        _shut_down(servers, workers)


def _shut_down(servers: list[Server], workers: dict[str, Child]) -> None:
    """Workers first (SIGTERM, then SIGKILL after the grace), then localstripe, NATS and
    PostgreSQL: the reverse of the order they depend on each other."""
    for child in workers.values():
        child.send(signal.SIGTERM)
    for child in workers.values():
        if child.wait(WORKER_GRACE_S) is None:
            log.warning("%s did not stop within %g s; killed", child.name, WORKER_GRACE_S)
            child.kill()
    for server in reversed(servers):
        server.stop()
    log.info("stopped")
