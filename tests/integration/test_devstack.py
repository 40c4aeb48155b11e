"""The embedded servers behind `jetsaga up` and the fixtures: they start, keep their data
across restarts and crashes, answer as the services expect, and never outlive us."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import nats
import pytest
import stripe
from nats.js.api import StreamConfig

from jetsaga.devstack.nats import NatsServer, go_max_procs
from jetsaga.devstack.postgres import PostgresServer
from jetsaga.devstack.procs import Child, ChildFailed, free_port
from jetsaga.devstack.stripe import LocalStripe
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie that only waits for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_nats_restart_keeps_stream_messages(make_nats: Callable[[], NatsServer]) -> None:
    server = make_nats()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.*"]))
    for i in range(3):
        await js.publish("keep.it", f"m{i}".encode(), headers={"Nats-Msg-Id": f"keep-{i}"})
    await nc.close()

    port = server.port
    server.restart()

    assert server.port == port
    nc = await nats.connect(server.url)
    try:
        info = await nc.jsm().stream_info("KEEP")
        assert info.state.messages == 3
        assert (await nc.jsm().get_msg("KEEP", 3)).data == b"m2"
    finally:
        await nc.close()


def test_go_max_procs_is_half_the_cpus_unless_set() -> None:
    assert [go_max_procs({}, cpus) for cpus in (1, 2, 3, 8)] == ["1", "1", "1", "4"]
    assert go_max_procs({"GOMAXPROCS": "6"}, 2) == "6"
    assert go_max_procs({"GOMAXPROCS": ""}, 4) == "2"


def test_nats_runs_with_its_gomaxprocs(make_nats: Callable[[], NatsServer]) -> None:
    server = make_nats()
    environ = Path(f"/proc/{server.child.pid}/environ").read_bytes().split(b"\0")
    expected = go_max_procs(os.environ, len(os.sched_getaffinity(0)))
    assert f"GOMAXPROCS={expected}".encode() in environ


async def test_postgres_keeps_committed_rows_after_kill_9(
    make_postgres: Callable[[], PostgresServer],
) -> None:
    server = make_postgres()
    conn = await asyncpg.connect(server.url)
    await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO kept SELECT generate_series(1, 100)")
    open_tx = await asyncpg.connect(server.url)
    await open_tx.execute("BEGIN; INSERT INTO kept VALUES (1000)")
    backend = await open_tx.fetchval("SELECT pg_backend_pid()")

    server.kill()

    assert not server.running
    assert _gone(backend), "a backend outlived the killed postmaster"
    conn.terminate()
    open_tx.terminate()
    await server.astart()  # crash recovery on the same port and data
    conn = await asyncpg.connect(server.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM kept") == 100
        assert await conn.fetchval("SELECT count(*) FROM kept WHERE id = 1000") == 0
    finally:
        await conn.close()


def test_localstripe_charges_visa_and_declines_charge_customer_fail(
    stripe_api_base: str,
) -> None:
    client = stripe.StripeClient("sk_test_x", base_addresses={"api": stripe_api_base})
    order_id = str(uuid.uuid4())

    def charge(payment_method: str) -> stripe.PaymentIntent:
        return client.v1.payment_intents.create(
            params={
                "amount": 1999,
                "currency": "usd",
                "payment_method": payment_method,
                "confirm": True,
                "metadata": {"orderId": order_id},
            }
        )

    intent = charge("pm_card_visa")

    assert intent.status == "succeeded"
    assert intent.metadata["orderId"] == order_id
    with pytest.raises(stripe.CardError) as declined:
        charge("pm_card_chargeCustomerFail")
    assert declined.value.code == "card_declined"


def test_localstripe_lists_by_type_before_and_after_a_restart_from_its_store(
    tmp_path: Path,
) -> None:
    """The child lists from its own index of the store: what it lists must be what
    localstripe's scan would, for objects made now and for those loaded from the file."""
    server = LocalStripe(port=None, store_path=tmp_path / "store.pickle",
                         log_path=tmp_path / "localstripe.log")  # fmt: skip
    client = stripe.StripeClient("sk_test_x", base_addresses={"api": server.api_base})

    def paid(amount: int) -> str:
        params = {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa"}
        return client.v1.payment_intents.create(params={**params, "confirm": True}).id

    def refunds_of(intent_id: str) -> list[tuple[str, int]]:
        found = client.v1.refunds.list(params={"payment_intent": intent_id})
        return [(r.id, r.amount) for r in found.data]

    server.start()
    try:
        first, second = paid(500), paid(700)
        refund = client.v1.refunds.create(params={"payment_intent": first}).id
        assert refunds_of(first) == [(refund, 500)] and refunds_of(second) == []
        server.stop()
        server.start()
        assert refunds_of(first) == [(refund, 500)] and refunds_of(second) == []
        later = client.v1.refunds.create(params={"payment_intent": second}).id
        assert refunds_of(second) == [(later, 700)] and refunds_of(first) == [(refund, 500)]
        everything = {r.id for r in client.v1.refunds.list(params={"limit": 100}).data}
        assert everything == {refund, later}
    finally:
        server.stop()


async def test_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = (
        "import sys, pathlib, time\n"
        "from jetsaga.devstack.nats import NatsServer\n"
        "s = NatsServer(pathlib.Path(sys.argv[1])).start()\n"
        "print('nats pid', s.child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    argv = [sys.executable, "-c", script, str(tmp_path / "store")]
    parent = Child("parent", argv, log_path=tmp_path / "parent.log")
    parent.spawn(ready_line="nats pid")
    try:
        await asyncio.to_thread(parent.wait_ready, 30)
        nats_pid = int(parent.tail().split("nats pid")[-1].split()[0])
        assert not _gone(nats_pid)

        parent.kill()

        await wait_until(lambda: _gone(nats_pid), timeout=10, message="nats-server gone")
    finally:
        parent.kill()


def test_child_that_exits_early_reports_its_log_tail(tmp_path: Path) -> None:
    child = Child("failing", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                  log_path=tmp_path / "failing.log")  # fmt: skip
    child.spawn(ready_line="never printed")

    with pytest.raises(ChildFailed, match=r"(?s)code 3.*boom"):
        child.wait_ready(10)
    assert (tmp_path / "failing.log").read_text() == "boom\n"


async def test_wait_until_returns_the_value_or_names_the_condition() -> None:
    values = iter([0, None, "ok"])
    assert await wait_until(lambda: next(values), timeout=5, interval=0.001) == "ok"

    with pytest.raises(AssertionError, match=r"never true.*last: 0"):
        await wait_until(lambda: 0, timeout=0.05, message="never true")


def _workers_built() -> bool:
    return all(
        importlib.util.find_spec(f"{name}_service.main") is not None
        for name in ("order", "inventory", "payment")
    )


@pytest.mark.skipif(not _workers_built(), reason="the workers are not built yet")
async def test_up_seeds_restarts_a_dead_worker_and_stops_everything(
    make_nats: Callable[[], NatsServer],
    make_postgres: Callable[[], PostgresServer],
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "NATS_URL": make_nats().url,
        "DATABASE_URL": make_postgres().url,
        "PAYMENT_GATEWAY": "fake",
        "LOG_FORMAT": "text",
        "ORDER_PORT": str(free_port()),
        "PAYMENT_PORT": str(free_port()),
        "INVENTORY_PORT": str(free_port()),
    }
    argv = [sys.executable, "-m", "jetsaga.cli", "up", "--data-dir", str(tmp_path / "data")]
    up = Child("up", argv, log_path=tmp_path / "up.log", env=env)
    up.spawn(ready_line=f"ready: http://127.0.0.1:{env['ORDER_PORT']}")
    try:
        await asyncio.to_thread(up.wait_ready, 90)
        inventory = f"http://127.0.0.1:{env['INVENTORY_PORT']}"
        async with aiohttp.ClientSession() as http, http.get(f"{inventory}/inventory/sku-1") as r:
            assert r.status == 200
            assert (await r.json())["available"] > 0
        workers = _children_of(up.pid)
        assert len(workers) == 3
        os.kill(workers[0], signal.SIGKILL)

        await wait_until(
            lambda: "restarted" in up.log_path.read_text(), timeout=30, message="restart logged"
        )

        up.send(signal.SIGTERM)
        assert await asyncio.to_thread(up.wait, 60) == 0
        left = [pid for pid in [*workers, *_children_of(up.pid)] if not _gone(pid)]
        assert not left, f"processes left behind: {left}"
    finally:
        up.kill()


def _children_of(parent: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in out.stdout.split()]
