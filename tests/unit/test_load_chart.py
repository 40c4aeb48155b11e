"""The chart of a run: a self-contained HTML file, or a PNG when matplotlib is there."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import msgspec
import pytest

from jetsaga.load.arrivals import Kind
from jetsaga.load.chart import ChartError, nice_ceiling, write_chart
from jetsaga.load.report import Report, RunInfo, SenderStats, build
from jetsaga.load.stock import StockCheck
from jetsaga.load.tracker import Outcome, Post, Tracker
from jetsaga.load.workload import Order

S = 1_000_000_000


def three_second_report() -> Report:
    tracker = Tracker(300, 0)
    for i in range(300):
        due = i * S // 100
        tracker.on_send(i, Order(order_id=f"o{i}", body=b"", lines=()), Kind.OK, due, due)
        tracker.on_answer(i, Post.ACCEPTED, due + 1_000_000, 201)
        tracker.on_final(f"o{i}", Outcome.CONFIRMED, due + (5 + i % 40) * 1_000_000, "nats")
    info = RunInfo(
        run_id="chart",
        url="http://127.0.0.1:3004",
        started_at="t",
        rate=100,
        duration=3,
        decline_ratio=0,
        out_of_stock_ratio=0,
        status_source="nats",
    )
    stats = SenderStats(
        connections=1, in_flight_cap=1, cap_hits=0, max_in_flight=1, lag_p99_ms=0, lag_max_ms=0
    )
    return build(info, tracker, stats, StockCheck(checked=True, ok=True))


def test_html_chart_is_one_file_with_inline_svg_and_nothing_fetched(tmp_path: Path) -> None:
    path = tmp_path / "run.html"
    report = three_second_report()
    write_chart(report, path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert page.count("<svg") == 2
    assert page.count("<polyline") == 6  # sent, accepted, final; p50, p95, p99
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert set(re.findall(r"https?://[^\"' <,]+", page)) <= {
        "http://www.w3.org/2000/svg",
        "http://127.0.0.1:3004",
    }
    points = re.search(r'points="([^"]+)"', page)
    assert points is not None
    assert len(points.group(1).split()) == len(report.time_series) == 4  # one point a second
    by = report.latency_by_outcome["CONFIRMED"]
    assert f"by final status: CONFIRMED {by.p50:,.1f} / {by.p99:,.1f} ms" in page


def test_html_chart_shades_the_warm_up(tmp_path: Path) -> None:
    report = three_second_report()
    path = tmp_path / "plain.html"
    write_chart(report, path)
    assert "warm-up" not in path.read_text(encoding="utf-8")
    warm = msgspec.structs.replace(report, run=msgspec.structs.replace(report.run, warmup=1.0))
    write_chart(warm, path)
    page = path.read_text(encoding="utf-8")
    assert page.count("<rect") == 2 and page.count(">warm-up</text>") == 2
    assert "for 3 s after 1 s of warm-up" in page


def test_png_chart_needs_matplotlib(tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(ChartError, match=r"\.html"):
            write_chart(three_second_report(), path)
        assert not path.exists()
    else:
        write_chart(three_second_report(), path)
        assert path.read_bytes().startswith(b"\x89PNG")


def test_axis_tops_are_round_numbers() -> None:
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 7, 12, 180, 2001)] == [
        1,
        0.5,
        1,
        10,
        20,
        200,
        5000,
    ]
