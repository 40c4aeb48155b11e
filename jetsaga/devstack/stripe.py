"""The emulated Stripe API: localstripe, run as our child on 127.0.0.1.

`localstripe --port P` binds every interface and pickles its whole store to the shared file
/tmp/localstripe.pickle on every write. So we start it through `python -m
jetsaga.devstack.stripe`, which serves the same aiohttp app on 127.0.0.1 only and keeps the
store in memory, or, given `--store`, in that file, written at most once a second (less often
once the store takes long to write) and at exit.

localstripe lists the objects of a type by scanning its whole store, and it lists a charge's
refunds each time it answers with that charge, so every confirm cost time in proportion to
everything made before it (measured here: 4.7 ms of its CPU per intent created and
confirmed on an empty store, 24 ms after 1,200 intents, 76 % of it in that scan). The
child keeps its store indexed by type, in the store's own order, and lists from the index.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import sys
import tempfile
import time
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


def _kind(key: str) -> str | None:
    """The object type of a store key (`payment_intent:pi_…`); None for the balance."""
    kind, colon, _ = key.partition(":")
    return kind if colon else None


def _serve(port: int, store_path: Path | None) -> None:
    from aiohttp import web
    from localstripe import errors, resources, server

    dirty = False
    by_kind: dict[str, dict[str, Any]] = {}  # type -> {key: object}, in the store's order

    def mark_dirty(_store: object) -> None:
        nonlocal dirty
        dirty = True

    # localstripe's own, less the full pickle of every write (its middleware marks each
    # write request, objects changed in place included).
    def index(key: str, value: Any) -> None:
        if (kind := _kind(key)) is not None:
            by_kind.setdefault(kind, {})[key] = value

    def setitem(store: dict[str, Any], key: str, value: Any) -> None:
        dict.__setitem__(store, key, value)
        index(key, value)

    def delitem(store: dict[str, Any], key: str) -> None:
        dict.__delitem__(store, key)
        by_kind.get(_kind(key) or "", {}).pop(key, None)

    def clear(store: dict[str, Any]) -> None:
        dict.clear(store)
        by_kind.clear()

    def list_all(
        cls: Any, /, url: str, limit: Any = None, starting_after: Any = None, **kwargs: Any
    ) -> Any:
        # localstripe's own, less its scan of every object of every type.
        if kwargs:
            raise errors.UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        found = resources.List(url, limit=limit, starting_after=starting_after)
        found._list = list(by_kind.get(cls.object, {}).values())
        return found

    store_type: Any = resources.Store
    store_type.__setitem__, store_type.__delitem__, store_type.clear = setitem, delitem, clear
    store_type.dump_to_disk = mark_dirty
    resources.StripeObject._api_list_all = classmethod(list_all)
    if store_path is not None and store_path.exists():
        with store_path.open("rb") as f:
            dict.update(resources.store, pickle.load(f))
    for key, value in resources.store.items():
        index(key, value)

    async def flusher(_app: web.Application) -> AsyncIterator[None]:
        nonlocal dirty

        async def loop() -> None:
            nonlocal dirty
            period = 1.0
            while True:
                await asyncio.sleep(period)  # a write-behind period, not a wait for a condition
                if dirty:
                    dirty = False
                    started = time.monotonic()
                    _persist(resources.store, store_path)  # type: ignore[arg-type]
                    # Each write pickles everything: at most a tenth of the time goes to it.
                    period = max(1.0, 10 * (time.monotonic() - started))

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
