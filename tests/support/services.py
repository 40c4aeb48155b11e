"""Worker processes started through their real entry point (`python -m jetsaga.cli worker
NAME`), and `System`: streams and consumers set up, then one worker of each kind.

Each worker gets a free HTTP port, logs to its own file, and counts as started once
`GET /readyz` answers 200. `ServiceProcess.live` lists the running ones, so a failing test
can show their log tails.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Self

import aiohttp

from jetsaga import config
from jetsaga.devstack.procs import Child, ChildFailed, Server, free_port
from tests.support.waiting import wait_until

PORT_ENV = {"order": "ORDER_PORT", "payment": "PAYMENT_PORT", "inventory": "INVENTORY_PORT"}
_ids = itertools.count(1)


class ServiceProcess:
    live: ClassVar[set[ServiceProcess]] = set()
    ready_timeout = 60.0
    stop_grace = 15.0

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name, self.port = name, free_port()
        full_env = {**os.environ, **env, PORT_ENV[name]: str(self.port), "HTTP_HOST": "127.0.0.1"}
        argv = [sys.executable, "-m", "jetsaga.cli", "worker", name]
        label = f"{name}-{next(_ids)}"
        self.child = Child(label, argv, log_path=log_dir / f"{label}.log", env=full_env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    def tail(self) -> str:
        return self.child.tail()

    async def start(self) -> Self:
        self.child.spawn()
        ServiceProcess.live.add(self)
        await self.wait_ready()
        return self

    async def wait_ready(self) -> None:
        """Until `GET /readyz` is 200; `ChildFailed` with the log tail if it exits or is late."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            async def ready() -> bool:
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return True
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if not self.child.running:
                    raise ChildFailed(f"{self.child.name} exited before ready:\n{self.tail()}")
                return False

            try:
                await wait_until(ready, timeout=self.ready_timeout, message="ready")
            except AssertionError:
                raise ChildFailed(f"{self.child.name} not ready in time:\n{self.tail()}") from None

    async def stop(self) -> int | None:
        """SIGTERM (the worker drains), SIGKILL after the grace period; the exit code."""
        code = await asyncio.to_thread(self.child.stop, self.stop_grace)
        ServiceProcess.live.discard(self)
        return code

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.child.kill()
        ServiceProcess.live.discard(self)

    async def restart(self) -> Self:
        await self.stop()
        return await self.start()


class System:
    """Streams and consumers, then one worker of each kind, configured by `env` (NATS_URL,
    DATABASE_URL, PAYMENT_GATEWAY, SAGA_TIMEOUT_S, ...). Servers in `owns` stop with it."""

    def __init__(
        self, env: Mapping[str, str], log_dir: Path, owns: tuple[Server, ...] = ()
    ) -> None:
        self.env, self.log_dir, self.owns = dict(env), log_dir, owns
        self.settings = config.load(self.env)
        self.workers: dict[str, list[ServiceProcess]] = {name: [] for name in PORT_ENV}

    async def start(self) -> Self:
        from jetsaga import setup

        await setup.apply(self.settings, out=lambda _line: None)
        await asyncio.gather(*(self.add_worker(name) for name in PORT_ENV))
        return self

    async def add_worker(self, name: str) -> ServiceProcess:
        """Start one more replica of a worker (replicas share their durable consumers)."""
        worker = ServiceProcess(name, self.env, self.log_dir)
        self.workers[name].append(worker)
        return await worker.start()

    def worker(self, name: str, index: int = 0) -> ServiceProcess:
        return self.workers[name][index]

    @property
    def order_url(self) -> str:
        return self.worker("order").url

    @property
    def inventory_url(self) -> str:
        return self.worker("inventory").url

    @property
    def payment_url(self) -> str:
        return self.worker("payment").url

    async def stop(self) -> None:
        every = [w for replicas in self.workers.values() for w in replicas]
        await asyncio.gather(*(w.stop() for w in every))
        for server in self.owns:
            await asyncio.to_thread(server.stop)
