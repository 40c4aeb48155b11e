"""The benchmark ladder (issue 5): the embedded stack under `jetsaga load` at rising rates.

Starts `jetsaga up --no-seed` (PAYMENT_GATEWAY=fake unless `--gateway stripe`), warms it
up, then runs one load step per rate and prints a row per step: achieved throughput,
latency, lost orders, CPU per saga over every process of the stack plus the runner (from
/proc), the peak RSS of each worker, and the slowest `fdatasync` on the data directory's
disk (`bench.disk`: a stalled disk holds every commit), the WAL written per saga
(`bench.wal`) and the machine's speed just before the step (`bench.probe`), which drifts
by the hour. The capacity is the highest rate with 0 lost and p99 <= 500 ms. Before and
after the ladder, it probes the machine's speed again. Everything lands in
bench/results/<stamp>-<gateway>/.

Each step first sends at its rate for `--step-warmup` seconds, then for `--duration`
seconds: throughput and latency are those of the measured part, the steady state at that
rate; lost orders, stock, CPU and RSS cover the whole step. The warm-up shows, shaded, in
each step's chart. `--step-warmup 0` measures each step from a standing start instead.

    python -m bench.ladder [--rates 250,500,1000,1500,2000] [--duration 60] [--warmup 10]
                           [--step-warmup 10] [--gateway fake|stripe] [--settle-timeout 120]
                           [--keep-going]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from bench import probe, procfs, wal
from bench.disk import FsyncProbe
from bench.loadrun import run_load
from bench.steps import HEADER, P99_LIMIT_MS, Step, capacity, row
from jetsaga.devstack.procs import Child, port_in_use

URL, INVENTORY_URL, NATS_URL = (
    "http://127.0.0.1:3004",
    "http://127.0.0.1:3006",
    "nats://127.0.0.1:4222",
)
RESULTS = Path(__file__).resolve().parent / "results"


def load(
    rate: float,
    duration: float,
    settle: float,
    out: Path,
    label: str,
    nats_url: str,
    warmup: float = 0.0,
) -> tuple[dict[str, Any], float]:
    return run_load(
        url=URL,
        inventory_url=INVENTORY_URL,
        nats_url=nats_url,
        rate=rate,
        duration=duration,
        settle=settle,
        out=out,
        label=label,
        warmup=warmup,
    )


def step(
    up: Child, rate: float, args: argparse.Namespace, out: Path, nats_url: str, data_dir: Path
) -> Step:
    speed = probe.measure()  # the stack is idle: the last step has settled
    database = wal.database_url(data_dir)
    wal0 = wal.wal_bytes(database)
    before, busy0, t0 = procfs.cpu_by_role(up.pid), procfs.machine_busy_s(), time.monotonic()
    with procfs.RssSampler(up.pid) as rss, FsyncProbe(data_dir) as disk:
        report, runner_s = load(
            rate, args.duration, args.settle_timeout, out, f"rate-{rate:g}", nats_url,
            args.step_warmup,
        )  # fmt: skip
    after, busy1, t1 = procfs.cpu_by_role(up.pid), procfs.machine_busy_s(), time.monotonic()
    wal1 = wal.wal_bytes(database)
    cpu = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    cpu["runner"] = round(runner_s, 2)
    finals = report["confirmed"] + report["cancelled"] + report["failed"]
    lat = report["latency"]
    return Step(
        rate=rate, exit_code=report["exitCode"], sent=report["sent"], finals=finals,
        final_per_s=report["throughput"]["finalPerS"],
        accepted_per_s=report["throughput"]["acceptedPerS"],
        p50_ms=lat["p50"], p95_ms=lat["p95"], p99_ms=lat["p99"], max_ms=lat["max"],
        lost=report["lost"], stock_ok=report["stock"]["ok"], cpu_s_by_role=dict(cpu),
        cpu_ms_per_saga=round(sum(cpu.values()) * 1000 / finals, 3) if finals else 0.0,
        machine_busy_pct=round((busy1 - busy0) * 100 / (t1 - t0), 1),
        worker_peak_rss_mib={k: round(v, 1) for k, v in sorted(rss.peak_mib.items())},
        report=str(out / f"rate-{rate:g}.json"),
        p99_ms_by_outcome={k: v["p99"] for k, v in report.get("latencyByOutcome", {}).items()},
        fsync=disk.figures(),
        wal_kb_per_saga=wal.kb_per_saga(wal0, wal1, finals),
        probe_python_ms=speed.python_ms,
    )  # fmt: skip


def start_stack(data_dir: Path, gateway: str, out: Path) -> Child:
    needed = [4222, 3004, 3005, 3006] + ([8420] if gateway == "stripe" else [])
    taken = [p for p in needed if port_in_use(p)]
    if taken and not os.environ.get("NATS_URL"):
        raise SystemExit(f"ports {taken} on 127.0.0.1 are taken: is a jetsaga up running?")
    env = {**os.environ, "PAYMENT_GATEWAY": gateway}
    argv = [sys.executable, "-m", "jetsaga.cli", "up", "--no-seed", "--data-dir", str(data_dir)]
    up = Child("jetsaga-up", argv, log_path=out / "up.log", env=env)
    up.spawn(ready_line="ready: http://127.0.0.1:3004")
    up.wait_ready(timeout=180)
    return up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ladder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rates", default="250,500,1000,1500,2000")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per step")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds at the first rate")
    parser.add_argument(
        "--step-warmup", type=float, default=10.0,
        help="seconds at each step's rate before its measured duration",
    )  # fmt: skip
    parser.add_argument("--gateway", choices=["fake", "stripe"], default="fake")
    parser.add_argument("--settle-timeout", type=float, default=120.0)
    parser.add_argument("--data-dir", default=None, help="for jetsaga up (default: a temp dir)")
    parser.add_argument("--keep-going", action="store_true", help="go on after a step loses")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{stamp}-{args.gateway}"
    out.mkdir(parents=True)
    nats_url = os.environ.get("NATS_URL") or NATS_URL
    speed_before = probe.measure()
    print(f"machine before: {speed_before.describe()}")
    with tempfile.TemporaryDirectory(prefix="jetsaga-bench-") as tmp:
        data_dir = Path(args.data_dir or tmp)
        up = start_stack(data_dir, args.gateway, out)
        steps: list[Step] = []
        try:
            print(
                f"stack up (gateway {args.gateway}, {os.cpu_count()} cores); each step"
                f" {args.step_warmup:g} s of warm-up, then {args.duration:g} s measured;"
                f" results in {out}"
            )
            if args.warmup > 0:
                load(rates[0], args.warmup, args.settle_timeout, out, "warmup", nats_url)
            print(HEADER, flush=True)
            for rate in rates:
                steps.append(step(up, rate, args, out, nats_url, data_dir))
                print(row(steps[-1]), flush=True)
                if steps[-1].lost and not args.keep_going:
                    print("orders were lost: the ladder stops here (--keep-going to go on)")
                    break
        finally:
            up.stop(grace=60)
    speed_after = probe.measure()
    print(f"capacity (0 lost, p99 <= {P99_LIMIT_MS:g} ms): {capacity(steps)}")
    print(f"machine after: {speed_after.describe()}")
    (out / "ladder.json").write_bytes(
        msgspec.json.format(
            msgspec.json.encode(
                {
                    "gateway": args.gateway,
                    "durationS": args.duration,
                    "stepWarmupS": args.step_warmup,
                    "steps": steps,
                    "capacity": capacity(steps),
                    "machineBefore": speed_before,
                    "machineAfter": speed_after,
                }
            ),
            indent=2,
        )
    )
    (out / "ladder.txt").write_text(
        "\n".join(
            [
                HEADER,
                *map(row, steps),
                f"capacity: {capacity(steps)}",
                f"machine before: {speed_before.describe()}; after: {speed_after.describe()}",
            ]
        )
        + "\n"
    )
    return 0 if steps and all(s.lost == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
