"""How fast the machine is right now, in the two ways the saga engine feels it.

On the 2-core VMs the benchmarks run on, the same code runs markedly slower in some hours
than in others: receiving a JetStream message took 4.6-5.4 µs of client CPU one evening and
6.9-7.8 µs an hour later. A ladder is only comparable with another run at the same machine
speed, so the ladder probes it before and after:

- `python_ms`: CPU time of a fixed piece of pure Python (dicts, strings, small objects), the
  interpreter's share of every worker;
- `handoff_us`: wall time of a one-byte round trip between two processes on different CPUs
  over pipes, the wake-up every message and every statement pays.

    python -m bench.probe
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgspec

_ECHO = """
import os, sys
if len(sys.argv) > 1:
    os.sched_setaffinity(0, {int(sys.argv[1])})
while os.read(0, 1):
    os.write(1, b"y")
"""


class Speed(msgspec.Struct, kw_only=True, rename="camel"):
    python_ms: float
    handoff_us: float

    def describe(self) -> str:
        return f"python {self.python_ms:.0f} ms, handoff {self.handoff_us:.0f} µs"


def python_ms(rounds: int = 3) -> float:
    """The fastest of `rounds` runs of a fixed pure-Python workload, in CPU milliseconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        table: dict[str, tuple[int, str]] = {}
        for i in range(60_000):
            key = f"order-{i:06d}"
            table[key] = (i, key.upper())
        total = sum(n for n, _ in table.values() if n % 3)
        assert total > 0
        best = min(best, time.process_time() - started)
    return best * 1000


def handoff_us(trips: int = 2_000) -> float:
    """The mean wall time of a one-byte round trip to a child process on another CPU."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set[int]()
    cpus = sorted(affinity)
    pinned = len(cpus) > 1  # this process on one of the CPUs it may use, the child on another
    argv = [sys.executable, "-c", _ECHO, *([str(cpus[1])] if pinned else [])]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    send, receive = child.stdin.fileno(), child.stdout.fileno()
    try:
        if pinned:
            os.sched_setaffinity(0, {cpus[0]})
        for _ in range(50):  # the child is up and both sides are warm
            os.write(send, b"x")
            os.read(receive, 1)
        started = time.perf_counter()
        for _ in range(trips):
            os.write(send, b"x")
            os.read(receive, 1)
        elapsed = time.perf_counter() - started
    finally:
        if pinned:
            os.sched_setaffinity(0, affinity)
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()
    return elapsed / trips * 1e6


def measure() -> Speed:
    return Speed(python_ms=round(python_ms(), 1), handoff_us=round(handoff_us(), 1))


if __name__ == "__main__":
    print(measure().describe())
