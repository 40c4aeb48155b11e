"""Session fixtures that start real servers (STYLE §7): nats-server with JetStream, PostgreSQL
and localstripe, each on a free 127.0.0.1 port with temporary data, waited for by its own
ready signal. NATS_URL, DATABASE_URL and STRIPE_API_BASE, when set, name servers to reuse.

Every process a fixture starts is stopped at teardown, even after a failing test, and dies
with pytest if pytest itself is killed (see jetsaga/devstack/procs.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so that `tests.support` imports from any test directory
    sys.path.insert(0, str(ROOT))

from jetsaga.devstack.nats import NatsServer  # noqa: E402
from jetsaga.devstack.postgres import PostgresServer  # noqa: E402
from tests.support.servers import ServerPool  # noqa: E402
from tests.support.services import ServiceProcess, System  # noqa: E402

STRIPE_TEST_KEY = "sk_test_jetsaga"


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def nats_url(servers: ServerPool) -> str:
    return os.environ.get("NATS_URL") or servers.nats().url


@pytest.fixture(scope="session")
def database_url(servers: ServerPool) -> str:
    return os.environ.get("DATABASE_URL") or servers.postgres().url


@pytest.fixture(scope="session")
def stripe_api_base(servers: ServerPool) -> str:
    return os.environ.get("STRIPE_API_BASE") or servers.stripe().api_base


@pytest.fixture(scope="session")
def make_nats(servers: ServerPool) -> Callable[[], NatsServer]:
    """Its own nats-server, for a test that stops, kills or restarts it."""
    return servers.nats


@pytest.fixture(scope="session")
def make_postgres(servers: ServerPool) -> Callable[[], PostgresServer]:
    """Its own PostgreSQL, for a test that stops, kills or restarts it."""
    return servers.postgres


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


def system_env(nats_url: str, database_url: str, stripe_api_base: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "STRIPE_API_BASE": stripe_api_base,
        "STRIPE_SECRET_KEY": STRIPE_TEST_KEY,
        "PAYMENT_GATEWAY": "stripe",
        "LOG_FORMAT": "text",
    }


@pytest.fixture(scope="session")
async def system(
    nats_url: str, database_url: str, stripe_api_base: str, worker_logs: Path
) -> AsyncIterator[System]:
    """The shared system for e2e tests, paying through localstripe. Tests that share it use
    unique order and product ids, and never stop its servers."""
    shared = System(system_env(nats_url, database_url, stripe_api_base), worker_logs)
    try:
        yield await shared.start()
    finally:
        await shared.stop()


MakeSystem = Callable[..., Awaitable[System]]


@pytest.fixture
async def make_system(
    servers: ServerPool, stripe_api_base: str, worker_logs: Path
) -> AsyncIterator[MakeSystem]:
    """`await make_system(SAGA_TIMEOUT_S="2", ...)`: a system of its own, on its own
    nats-server and PostgreSQL (stream and database names are fixed, so isolation needs
    servers), stopped with them at the end of the test."""
    made: list[System] = []

    async def make(**env: str) -> System:
        nats, pg = servers.nats(), servers.postgres()
        base = system_env(nats.url, pg.url, stripe_api_base)
        one = System({**base, **env}, worker_logs, owns=(nats, pg))
        made.append(one)
        return await one.start()

    try:
        yield make
    finally:
        for one in reversed(made):
            await one.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """On a failure, attach the log tail of every worker still running."""
    report = yield
    if isinstance(report, pytest.TestReport) and report.failed:
        for worker in sorted(ServiceProcess.live, key=lambda w: w.child.name):
            report.sections.append(
                (f"worker {worker.child.name} ({worker.log_path})", worker.tail())
            )
    return report
