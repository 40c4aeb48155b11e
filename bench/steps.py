"""One step of the ladder: what was measured, a table row of it, and the capacity."""

from __future__ import annotations

import msgspec

from bench.disk import FsyncFigures

P99_LIMIT_MS = 500.0


class Step(msgspec.Struct, kw_only=True, rename="camel"):
    rate: float
    exit_code: int
    final_per_s: float
    accepted_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    sent: int
    finals: int
    lost: int
    stock_ok: bool
    cpu_s_by_role: dict[str, float]  # the stack's processes, and "runner"
    cpu_ms_per_saga: float
    machine_busy_pct: float  # all processes on the box, of 100% per core
    worker_peak_rss_mib: dict[str, float]
    report: str
    # p99 per final status (CONFIRMED, CANCELLED, FAILED): which path sets the tail
    p99_ms_by_outcome: dict[str, float] = {}
    # a small fdatasync on the data directory's disk every 20 ms through the step: a slow
    # one held every commit of the stack (bench.disk)
    fsync: FsyncFigures | None = None
    # PostgreSQL's WAL written during the step per saga that ended (bench.wal): steadier
    # than latency, for telling two versions apart
    wal_kb_per_saga: float | None = None
    # the machine probe's pure-Python time just before the step, on the idle stack
    # (bench.probe): the machine's speed drifts by the hour, and latency with it
    probe_python_ms: float | None = None


HEADER = (
    f"{'rate/s':>7} {'final/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
    f"{'p99 conf/canc/fail':>18} {'lost':>6} "
    f"{'CPU ms/saga':>11} {'box CPU%':>8} {'stock':>5} {'fsync max ms (stalls)':>21} "
    f"{'WAL KB/saga':>11} {'probe ms':>8}"
    "  worker peak RSS MiB (order/inv/payment)"
)


def row(s: Step) -> str:
    rss = "/".join(
        f"{s.worker_peak_rss_mib.get(f'worker-{w}', 0):.0f}"
        for w in ("order", "inventory", "payment")
    )
    return (
        f"{s.rate:>7g} {s.final_per_s:>8.1f} {s.p50_ms:>8.1f} {s.p95_ms:>8.1f} "
        f"{s.p99_ms:>8.1f} {_by_outcome(s.p99_ms_by_outcome):>18} {s.lost:>6} "
        f"{s.cpu_ms_per_saga:>11.3f} {s.machine_busy_pct:>8.0f} "
        f"{'ok' if s.stock_ok else 'BAD':>5} {_fsync(s.fsync):>21} "
        f"{_optional(s.wal_kb_per_saga, '.1f'):>11} {_optional(s.probe_python_ms, '.0f'):>8}  {rss}"
    )


def _fsync(f: FsyncFigures | None) -> str:
    return "-" if f is None else f"{f.max_ms:.0f} ({f.stalls})"


def _optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _by_outcome(ms: dict[str, float]) -> str:
    return "/".join(
        f"{ms[k]:.0f}" if k in ms else "-" for k in ("CONFIRMED", "CANCELLED", "FAILED")
    )


def capacity(steps: list[Step]) -> str:
    good = [s.rate for s in steps if s.lost == 0 and s.p99_ms <= P99_LIMIT_MS and s.stock_ok]
    return f"{max(good):g} orders/s" if good else "below the lowest rate tried"
