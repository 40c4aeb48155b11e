"""`jetsaga load` from the command line: report printed, JSON and chart written, exit status."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from jetsaga.cli import main
from jetsaga.load.fakeservice import FakeSystem, serve


@pytest.fixture
def fake_url() -> Iterator[str]:
    """The fake service on its own loop in a thread, since the CLI runs a loop of its own."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        runner, base = loop.run_until_complete(serve(FakeSystem()))
        url.append(base)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    assert ready.wait(timeout=10)
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def refused_nats() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"


def test_load_writes_json_and_chart_and_exits_0(
    fake_url: str, refused_nats: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, chart_path = tmp_path / "report.json", tmp_path / "chart.html"
    code = main(
        f"load --url {fake_url} --inventory-url {fake_url} --nats-url {refused_nats} "
        "--rate 200 --duration 0.5 --decline-ratio 0.1 --out-of-stock-ratio 0.05 "
        f"--json {json_path} --chart {chart_path}".split()
    )
    out = capsys.readouterr().out
    assert code == 0
    for line in (
        "sent",
        "accepted",
        "rejected by HTTP status",
        "CONFIRMED / CANCELLED / FAILED",
        "lost",
        "throughput",
        "stock conservation",
        "p99",
    ):
        assert line in out
    report = msgspec.json.decode(json_path.read_bytes())
    assert report["sent"] == 100 and report["lost"] == 0 and report["exitCode"] == 0
    assert report["timeSeries"]
    assert "<svg" in chart_path.read_text(encoding="utf-8")


def test_load_refuses_bad_ratios_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", "--decline-ratio", "0.7", "--out-of-stock-ratio", "0.5"]) == 2
    assert "must not exceed 1" in capsys.readouterr().err


def test_load_exits_2_when_the_inventory_service_is_out_of_reach(
    fake_url: str, refused_nats: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = refused_nats.replace("nats://", "http://")
    argv = f"load --url {fake_url} --inventory-url {dead} --nats-url {refused_nats} --duration 0.1"
    code = main(argv.split())
    assert code == 2
    assert "inventory service" in capsys.readouterr().err
