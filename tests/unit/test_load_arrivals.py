"""Open-loop arrivals: due times, catching up, and the order mix."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from jetsaga.load.arrivals import (
    NS_PER_S,
    Kind,
    Pacer,
    due_offset_ns,
    kind_of,
    order_count,
    validate_ratios,
)
from tests.support.waiting import wait_until


def test_order_count_is_rate_times_duration() -> None:
    assert order_count(500, 60) == 30_000
    assert order_count(2.5, 3) == 8  # 7.5 rounds half to even: 8
    assert order_count(0.1, 1) == 1  # a run sends at least one order
    assert order_count(0, 10) == 0


def test_order_i_is_due_i_over_rate_after_the_start() -> None:
    assert [due_offset_ns(i, 4) for i in range(5)] == [
        0,
        250_000_000,
        500_000_000,
        750_000_000,
        1_000_000_000,
    ]
    assert due_offset_ns(2999, 1000) == 2_999_000_000  # no drift from summing intervals


async def test_pacer_never_sends_an_order_before_it_is_due() -> None:
    start = time.monotonic_ns() + 5_000_000
    seen = []

    def send(i: int, due: int) -> bool:
        assert time.monotonic_ns() >= due
        seen.append((i, due))
        return True

    await Pacer(start, 20, 1000.0, send).run()
    assert seen == [(i, start + i * 1_000_000) for i in range(20)]


async def test_pacer_sends_everything_already_due_at_once_when_behind() -> None:
    # A sender that fell 10 s behind catches up instead of keeping its pace from now on.
    start = time.monotonic_ns() - 10 * NS_PER_S
    began = time.monotonic_ns()
    seen: list[int] = []

    def send(i: int, _: int) -> bool:
        seen.append(i)
        return True

    await Pacer(start, 500, 100.0, send).run()
    assert seen == list(range(500))
    assert time.monotonic_ns() - began < 5 * NS_PER_S


async def test_an_order_held_back_goes_on_resume_and_the_rest_follow() -> None:
    seen: list[int] = []
    refused: list[int] = []

    def send(i: int, _: int) -> bool:
        if i == 3 and not refused:
            refused.append(i)
            return False
        seen.append(i)
        return True

    pacer = Pacer(time.monotonic_ns() - NS_PER_S, 10, 1000.0, send)
    running = asyncio.create_task(pacer.run())
    await wait_until(lambda: refused, message="order 3 refused")
    assert seen == [0, 1, 2] and not running.done()
    pacer.resume()
    await asyncio.wait_for(running, 5)
    assert seen == list(range(10))


async def test_a_failing_send_ends_the_run_with_its_error() -> None:
    def send(i: int, _: int) -> bool:
        raise RuntimeError(f"order {i}")

    with pytest.raises(RuntimeError, match="order 0"):
        await asyncio.wait_for(Pacer(time.monotonic_ns(), 3, 100.0, send).run(), 5)


def test_mix_follows_the_ratios_over_a_long_run() -> None:
    counts = Counter(kind_of(i, 0.1, 0.05) for i in range(20_000))
    assert counts[Kind.DECLINE] == pytest.approx(2_000, abs=10)
    assert counts[Kind.OUT_OF_STOCK] == pytest.approx(1_000, abs=10)
    assert counts[Kind.OK] == pytest.approx(17_000, abs=20)


def test_mix_holds_its_ratios_in_every_short_stretch() -> None:
    # Low discrepancy: each second of a 100/s run sees about its share of each kind.
    for first in range(0, 5_000, 100):
        counts = Counter(kind_of(i, 0.2, 0.1) for i in range(first, first + 100))
        assert abs(counts[Kind.DECLINE] - 20) <= 3
        assert abs(counts[Kind.OUT_OF_STOCK] - 10) <= 3


def test_zero_ratios_make_only_ordinary_orders() -> None:
    assert {kind_of(i, 0.0, 0.0) for i in range(1_000)} == {Kind.OK}
    assert {kind_of(i, 1.0, 0.0) for i in range(1_000)} == {Kind.DECLINE}


@pytest.mark.parametrize(("decline", "out_of_stock"), [(-0.1, 0.0), (0.0, 1.5), (0.6, 0.5)])
def test_ratios_outside_zero_to_one_are_refused(decline: float, out_of_stock: float) -> None:
    with pytest.raises(ValueError):
        validate_ratios(decline, out_of_stock)
