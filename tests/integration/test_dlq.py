"""`jetsaga dlq` against a real nats-server: a message that failed every delivery is listed,
shown, and replayed under a fresh message id once its cause is fixed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import pytest
from nats.aio.client import Client as NATS

from jetsaga import config, contracts, dlq
from jetsaga.consumer import Delivery
from tests.support.bus import created, dead_letters, publish, run_consumer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def args(command: str, id_: int | None = None, all_: bool = False) -> argparse.Namespace:
    return argparse.Namespace(dlq_command=command, id=id_, all=all_)


async def run_dlq(nc: NATS, ns: argparse.Namespace) -> tuple[int, list[str]]:
    lines: list[str] = []
    url = nc.connected_url
    assert url is not None
    settings = config.Settings(nats_url=f"nats://127.0.0.1:{url.port}")
    return await dlq.command(ns, settings, out=lines.append), lines


async def test_replay_after_the_cause_is_fixed_completes_the_message(bus: NATS) -> None:
    fixed = False
    handled: list[str] = []

    async def handler(batch: Sequence[Delivery]) -> int:
        if not fixed:
            raise RuntimeError("downstream rejects it")
        handled.extend(d.message.order_id for d in batch)
        return 0

    stop, task = await run_consumer(bus, handler)
    await publish(bus, created("needs-fix"))
    await wait_until(lambda: dead_letters(bus), message="dead-lettered")

    code, listed = await run_dlq(bus, args("list"))
    assert code == 0 and len(listed) == 2 and "needs-fix" in listed[0]
    seq = int(listed[0].split()[0])
    code, shown = await run_dlq(bus, args("show", seq))
    assert code == 0 and '"lastError"' in shown[0] and "downstream rejects it" in shown[0]

    fixed = True
    code, replayed = await run_dlq(bus, args("replay", seq))

    assert code == 0 and replayed[0].startswith(f"replayed {seq}")
    await wait_until(lambda: handled == ["needs-fix"], message="replayed message handled")
    assert await dead_letters(bus) == []
    stop.set()
    await task


async def test_replay_of_an_unknown_id_fails_clearly(bus: NATS) -> None:
    code, lines = await run_dlq(bus, args("replay", 999))
    assert code == 1 and lines == ["no dead letter 999"]


async def test_replay_all_republishes_every_letter_with_fresh_ids(bus: NATS) -> None:
    async def always_fails(batch: Sequence[Delivery]) -> int:
        raise RuntimeError("no")

    stop, task = await run_consumer(bus, always_fails)
    for order_id in ("a", "b"):
        await publish(bus, created(order_id))
    await wait_until(lambda: _count(bus, 2), message="two dead letters")
    stop.set()
    await task

    code, lines = await run_dlq(bus, args("replay", all_=True))

    assert code == 0 and len(lines) == 2
    info = await bus.jsm().stream_info("ORDERS")
    assert info.state.messages == 4  # the originals and the two replays, none deduplicated
    replay = await bus.jsm().get_msg("ORDERS", 4)
    assert replay.headers and replay.headers[contracts.MSG_ID].startswith("replay:")


async def test_the_cli_lists_dead_letters(bus: NATS) -> None:
    await bus.jetstream().publish("orders.created", b"\xff", headers={"Nats-Msg-Id": "x"})

    async def ok(batch: Sequence[Delivery]) -> int:
        return 0

    stop, task = await run_consumer(bus, ok)
    await wait_until(lambda: _count(bus, 1), message="poison dead-lettered")
    stop.set()
    await task
    url = bus.connected_url
    assert url is not None
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetsaga.cli", "dlq", "list",
        env={"NATS_URL": f"nats://127.0.0.1:{url.port}"}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await cli.communicate()
    assert cli.returncode == 0
    assert "inventory-service" in stdout.decode() and "1 dead letter(s)" in stdout.decode()


async def _count(nc: NATS, n: int) -> bool:
    return len(await dead_letters(nc)) == n
