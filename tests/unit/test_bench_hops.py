"""bench.hops: the hop breakdown of completed sagas, from their six moments."""

from __future__ import annotations

from datetime import UTC, datetime

from bench.hops import HOPS, Trace, table, when


def _trace(start: float, *gaps_ms: float) -> Trace:
    moments = [start]
    for gap in gaps_ms:
        moments.append(moments[-1] + gap / 1000)
    return Trace(*moments)


def test_hops_are_the_gaps_between_the_moments_in_saga_order() -> None:
    hops = _trace(100.0, 30, 20, 40, 10, 25).hops_ms()
    assert len(hops) == len(HOPS)
    assert [round(h, 6) for h in hops] == [30, 20, 40, 10, 25]


def test_the_table_has_a_median_row_per_second_and_percentiles_over_all() -> None:
    traces = [_trace(100.2, 10, 10, 10, 10, 10), _trace(100.5, 30, 30, 30, 30, 30),
              _trace(100.9, 20, 20, 20, 20, 20), _trace(102.1, 50, 1, 1, 1, 1)]  # fmt: skip
    lines = table(traces).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if "|" in line}
    assert rows["0"][:3] == ["0", "3", "100.0"]  # 3 sagas; the median of 50, 150 and 100
    assert rows["0"][4:] == ["20.0"] * 5
    assert rows["2"][:3] == ["2", "1", "54.0"]  # seconds count from the first saga's
    assert "1" not in rows  # a second without sagas has no row
    assert "4 sagas" in lines
    assert rows["p99"][1:] == ["150.0", "|", "50.0", "30.0", "30.0", "30.0", "30.0"]


def test_no_sagas_say_so() -> None:
    assert table([]) == "no completed saga with all its moments recorded"


def test_since_is_utc_unless_it_says_otherwise() -> None:
    assert when("2026-11-23T01:00") == datetime(2026, 11, 23, 1, tzinfo=UTC)
    assert when("2026-11-23T01:00+01:00").utcoffset() is not None
    assert when("2026-11-23T01:00+01:00") == datetime(2026, 11, 23, 0, tzinfo=UTC)
