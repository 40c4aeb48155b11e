"""Open-loop arrivals: due times, catching up, and the order mix."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from jetsaga.load.arrivals import (
    NS_PER_S,
    Kind,
    due_offset_ns,
    kind_of,
    order_count,
    pace,
    validate_ratios,
)


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


async def test_pace_never_yields_an_order_before_it_is_due() -> None:
    start = time.monotonic_ns() + 5_000_000
    seen = []
    async for i, due in pace(start, 20, 1000.0):
        assert time.monotonic_ns() >= due
        seen.append((i, due))
    assert seen == [(i, start + i * 1_000_000) for i in range(20)]


async def test_pace_sends_everything_already_due_at_once_when_behind() -> None:
    # A sender that fell 10 s behind catches up instead of keeping its pace from now on.
    start = time.monotonic_ns() - 10 * NS_PER_S
    began = time.monotonic_ns()
    seen = [i async for i, _ in pace(start, 500, 100.0)]
    assert seen == list(range(500))
    assert time.monotonic_ns() - began < 5 * NS_PER_S


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
