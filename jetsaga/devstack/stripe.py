"""The emulated Stripe API: localstripe, run as our child on 127.0.0.1.

`localstripe --port P` binds every interface and pickles its whole store to the shared file
/tmp/localstripe.pickle on every write. So we start it through `python -m
jetsaga.devstack.stripe`, which serves the same aiohttp app on 127.0.0.1 only and keeps the
store in memory, or, given `--store`, in that file, written at most once a second and at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jetsaga.devstack.procs import Child, Server, free_port

DEFAULT_PORT = 8420


class LocalStripe(Server):
    name = "localstripe"
    start_timeout = 30.0

    def __init__(
        self,
        *,
        port: int | None = DEFAULT_PORT,
        store_path: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        if log_path is None:
            log_path = Path(tempfile.gettempdir()) / f"jetsaga-localstripe-{self.port}.log"
        argv = [sys.executable, "-m", "jetsaga.devstack.stripe", "--port", str(self.port)]
        if store_path is not None:
            argv += ["--store", str(store_path)]
        super().__init__(Child("localstripe", argv, log_path=log_path))

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        """True once any HTTP response comes back (401 without a key counts)."""
        try:
            with urllib.request.urlopen(self.api_base + "/v1/balance", timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def _spawn(self) -> None:
        self.child.spawn()

    def _wait(self) -> None:
        self.child.wait_ready(self.start_timeout, probe=self.answers)


# --- the child side: `python -m jetsaga.devstack.stripe --port P [--store FILE]` ---------


def _persist(store: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(dict(store), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _serve(port: int, store_path: Path | None) -> None:
    from aiohttp import web
    from localstripe import resources, server

    dirty = False

    def mark_dirty(_store: object) -> None:
        nonlocal dirty
        dirty = True

    resources.Store.dump_to_disk = mark_dirty  # replaces a full pickle on every write
    if store_path is not None and store_path.exists():
        with store_path.open("rb") as f:
            dict.update(resources.store, pickle.load(f))

    async def flusher(_app: web.Application) -> AsyncIterator[None]:
        nonlocal dirty

        async def loop() -> None:
            nonlocal dirty
            while True:
                await asyncio.sleep(1.0)  # a write-behind period, not a wait for a condition
                if dirty:
                    dirty = False
                    _persist(resources.store, store_path)  # type: ignore[arg-type]

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if dirty:
            _persist(resources.store, store_path)  # type: ignore[arg-type]

    if store_path is not None:
        store_path.parent.mkdir(parents=True, exist_ok=True)
        server.app.cleanup_ctx.append(flusher)
    web.run_app(server.app, host="127.0.0.1", port=port, access_log=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jetsaga.devstack.stripe")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--store", type=Path, default=None, help="keep the data in this file")
    args = parser.parse_args()
    _serve(args.port, args.store)
