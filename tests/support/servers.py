"""`ServerPool`: the real NATS, PostgreSQL and localstripe servers a test session starts,
each on a free 127.0.0.1 port with its own temporary data, all stopped by `close()`."""

from __future__ import annotations

import itertools
from pathlib import Path

from jetsaga.devstack.nats import NatsServer
from jetsaga.devstack.postgres import PostgresServer
from jetsaga.devstack.procs import Server
from jetsaga.devstack.stripe import LocalStripe


class ServerPool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Server] = []
        self._ids = itertools.count(1)

    def _dir(self, kind: str) -> Path:
        path = self.root / f"{kind}-{next(self._ids)}"
        path.mkdir(parents=True)
        return path

    def _keep(self, server: Server) -> None:
        self.started.append(server)  # before start: a server that fails to start is stopped too

    def nats(self) -> NatsServer:
        """A started nats-server with JetStream and an empty store."""
        where = self._dir("nats")
        server = NatsServer(where / "store", log_path=where / "nats.log")
        self._keep(server)
        return server.start()

    def postgres(self) -> PostgresServer:
        """A started PostgreSQL on a fresh cluster (initdb takes about 0.7 s)."""
        where = self._dir("postgres")
        server = PostgresServer(where / "data", log_path=where / "postgres.log")
        self._keep(server)
        return server.start()

    def stripe(self) -> LocalStripe:
        """A started localstripe with an empty in-memory store."""
        where = self._dir("localstripe")
        server = LocalStripe(port=None, log_path=where / "localstripe.log")
        self._keep(server)
        return server.start()

    def close(self) -> None:
        errors = []
        for server in reversed(self.started):
            try:
                server.stop()
            except Exception as exc:  # stop the rest whatever one of them does
                errors.append(exc)
                server.kill()
        self.started.clear()
        if errors:
            raise errors[0]
