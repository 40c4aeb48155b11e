"""What a JetStream publish costs the publishing process, four ways and a reference (issue 5).

Starts its own nats-server (free port, temporary store, stopped at the end), creates a stream
with a 120 s duplicate window, and publishes N messages per run: ~200-byte payloads with
three headers (a unique Nats-Msg-Id, Saga-Id, Causation-Id), under uvloop. Variants:

  awaited      `await js.publish(...)` one by one
  gather       `asyncio.gather(js.publish(...))` over batches (what the outbox relay did)
  async        `js.publish_async(...)` over batches, then the batch's futures awaited
  publisher    `jetsaga.publisher.Publisher.publish_batch` over batches
  raw HPUB     the same, with the header block built by hand (private nats-py API; a
               measurement of nats-py's header encoding, not something jetsaga does)

Runs are interleaved and repeated; the table shows the median and the range. CPU µs/msg is
this process's CPU (`time.process_time()`, user + system) per message, the figure to trust
on a shared machine; msgs/s is wall-clock and moves with whatever else runs on the box.

    python -m bench.publish [--messages 20000] [--batch 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import uvloop
from nats.aio.client import Client
from nats.js.api import StreamConfig

from jetsaga.devstack.nats import NatsServer
from jetsaga.publisher import Message, Publisher

STREAM, SUBJECT = "BENCH", "bench.orders"
PAYLOAD = b'{"orderId":"%s","customerId":"c-1","items":[{"productId":"p-1","quantity":1,' \
          b'"unitPrice":1999}],"totalAmount":1999,"currency":"usd","padding":"%s"}'  # fmt: skip
Variant = Callable[[Client, list[Message], int], Awaitable[None]]


def messages(n: int) -> list[Message]:
    run = uuid.uuid4().hex[:8]
    out: list[Message] = []
    for i in range(n):
        order = f"{run}-{i}"
        payload = PAYLOAD % (order.encode(), b"x" * 60)
        out.append((SUBJECT, payload, {"Nats-Msg-Id": f"{SUBJECT}:{order}", "Saga-Id": order,
                                       "Causation-Id": f"inventory.reserved:{order}"}))  # fmt: skip
    return out


def batches(msgs: list[Message], size: int) -> list[list[Message]]:
    return [msgs[i : i + size] for i in range(0, len(msgs), size)]


async def awaited(nc: Client, msgs: list[Message], size: int) -> None:
    js = nc.jetstream(timeout=10)
    for subject, payload, headers in msgs:
        await js.publish(subject, payload, headers=headers)


async def gather(nc: Client, msgs: list[Message], size: int) -> None:
    js = nc.jetstream(timeout=10)
    for part in batches(msgs, size):
        await asyncio.gather(*(js.publish(s, p, headers=h) for s, p, h in part))


async def publish_async(nc: Client, msgs: list[Message], size: int) -> None:
    js = nc.jetstream(timeout=10)
    for part in batches(msgs, size):
        futures = [await js.publish_async(s, p, headers=h) for s, p, h in part]
        await asyncio.gather(*futures)


async def publisher(nc: Client, msgs: list[Message], size: int) -> None:
    pub = Publisher(nc)
    for part in batches(msgs, size):
        await pub.publish_batch(part)


class RawHeaders:
    """Not used by jetsaga: the client as Publisher sees it, but writing the HPUB command
    with a header block built here, through nats-py's private `_send_command`. It skips
    nats-py's per-header validation and encoding (and its subject and connection checks), to
    show what that encoding costs."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.new_inbox, self.subscribe = nc.new_inbox, nc.subscribe

    async def publish(
        self, subject: str, payload: bytes, reply: str, headers: dict[str, str]
    ) -> None:
        nc = self._nc
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        hdr = f"NATS/1.0\r\n{lines}\r\n".encode()
        size = len(hdr) + len(payload)
        cmd = f"HPUB {subject} {reply} {len(hdr)} {size}\r\n".encode() + hdr + payload + b"\r\n"
        await nc._send_command(cmd)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()


async def raw_headers(nc: Client, msgs: list[Message], size: int) -> None:
    pub = Publisher(RawHeaders(nc))  # type: ignore[arg-type]
    for part in batches(msgs, size):
        await pub.publish_batch(part)


VARIANTS: dict[str, Variant] = {
    "awaited one by one": awaited,
    "gather js.publish": gather,
    "js.publish_async": publish_async,
    "Publisher.publish_batch": publisher,
    "(raw HPUB, not used)": raw_headers,
}


async def run(url: str, n: int, size: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    nc = await nats.connect(url)
    jsm = nc.jsm()
    await jsm.add_stream(StreamConfig(name=STREAM, subjects=["bench.>"], duplicate_window=120))
    try:
        await publisher(nc, messages(2 * size), size)  # warm up the server and the imports
        for _ in range(repeats):
            for name, variant in VARIANTS.items():
                await jsm.purge_stream(STREAM)
                msgs = messages(n)
                wall, cpu = time.perf_counter(), time.process_time()
                await variant(nc, msgs, size)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                stored = (await jsm.stream_info(STREAM)).state.messages
                if stored != n:
                    raise RuntimeError(f"{name}: {stored} of {n} messages stored")
                results[name].append((cpu / n * 1e6, n / wall))
    finally:
        await nc.close()
    return results


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    lines = [f"{'variant':<26} {'CPU µs/msg':>10} {'(range)':>15} {'msgs/s':>8} {'(range)':>15}"]
    for name, runs in results.items():
        cpu, rate = [r[0] for r in runs], [r[1] for r in runs]
        lines.append(
            f"{name:<26} {statistics.median(cpu):>10.1f} {f'{min(cpu):.1f}-{max(cpu):.1f}':>15} "
            f"{statistics.median(rate):>8.0f} {f'{min(rate):.0f}-{max(rate):.0f}':>15}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.publish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        server = NatsServer(Path(tmp) / "store", log_path=Path(tmp) / "nats.log")
        server.start()
        try:
            results = uvloop.run(run(server.url, args.messages, args.batch, args.repeats))
        finally:
            server.stop()
    print(f"{args.messages} messages per run, batches of {args.batch}, {args.repeats} runs each")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
