"""What the load runner itself can send: `jetsaga load` against a fake service that answers
201 at once and publishes every final status on a real nats-server.

The runner is pinned to CPU 0 and the fake service and nats-server to the other CPUs, so
the figures are the cost of sending and watching on one core: CPU per order (net of the
runner's start-up, measured by a tiny first run), the share of the core used while sending,
and how late sends left against their due times.

    python -m bench.sender [--rates 1000,2000,3000] [--duration 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.loadrun import run_load
from jetsaga.devstack.nats import NatsServer
from jetsaga.devstack.procs import Child, free_port

RESULTS = Path(__file__).resolve().parent / "results"
HEADER = (
    f"{'rate/s':>7} {'sent/s':>8} {'runner CPU s':>12} {'core %':>7} {'us/order':>9} "
    f"{'late p99 ms':>11} {'late max ms':>11} {'cap hits':>8} {'lost':>5}"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sender",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rates", default="1000,2000,3000")
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    runner_cpus, other_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (None, None)
    out = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-sender"
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="jetsaga-sender-") as tmp:
        nats = NatsServer(Path(tmp) / "nats", log_path=out / "nats.log").start()
        port = free_port()
        argv_fake = [
            sys.executable,
            "-m",
            "jetsaga.load.fakeservice",
            "--port",
            str(port),
            "--nats-url",
            nats.url,
        ]
        fake = Child("fake-service", argv_fake, log_path=out / "fake.log")
        try:
            fake.spawn(ready_line="ready: ")
            fake.wait_ready(timeout=30)
            for pid in (nats.child.pid, fake.pid):
                if other_cpus:
                    os.sched_setaffinity(pid, other_cpus)
            url = f"http://127.0.0.1:{port}"

            def load(rate: float, duration: float, label: str) -> tuple[dict[str, Any], float]:
                report, cpu = run_load(
                    url=url,
                    inventory_url=url,
                    nats_url=nats.url,
                    rate=rate,
                    duration=duration,
                    settle=30,
                    out=out,
                    label=label,
                    cpus=runner_cpus,
                )
                return report, cpu

            _, baseline = load(10, 0.1, "baseline")  # start-up, stock set-up, report
            print(f"runner pinned to CPU {runner_cpus or 'any'}; start-up costs {baseline:.2f} s")
            print(HEADER)
            rows = [HEADER]
            for rate in (float(r) for r in args.rates.split(",")):
                report, cpu = load(rate, args.duration, f"sender-{rate:g}")
                rows.append(_row(rate, args.duration, report, cpu - baseline))
                print(rows[-1], flush=True)
        finally:
            fake.stop()
            nats.stop()
    (out / "sender.txt").write_text("\n".join(rows) + "\n")
    return 0


def _row(rate: float, duration: float, report: dict[str, Any], cpu: float) -> str:
    sender, throughput = report["sender"], report["throughput"]
    return (
        f"{rate:>7g} {throughput['sentPerS']:>8.1f} {cpu:>12.2f} {cpu * 100 / duration:>7.1f} "
        f"{cpu * 1e6 / report['sent']:>9.0f} {sender['lagP99Ms']:>11.1f} "
        f"{sender['lagMaxMs']:>11.1f} {sender['capHits']:>8} {report['lost']:>5}"
    )


if __name__ == "__main__":
    sys.exit(main())
