"""The disk beside a run: how long a small `fdatasync` took, every 20 ms.

Every commit of the stack waits for PostgreSQL's WAL to reach the disk. When the disk stops
completing writes for a while, every commit waits, in every service at once, and the orders
of those seconds make the tail. Measured on this machine class, with `/proc/diskstats`
beside it: under the load of a 1,000/s run the virtual disk now and then completed no write
at all for 0.4 to 1.7 s, with 14 to 49 writes in flight, and each such stall was a second of the
run in which almost no order went final. On an idle machine, 60 s of the same probe had no
fsync over 4 ms.

`FsyncProbe` writes 8 KiB and calls `fdatasync` in a loop on a thread, in a file of the
filesystem it is pointed at (the stack's data directory), and keeps each call's duration.
It costs the disk 50 small writes a second. A step's `fsync max ms` well above a few
milliseconds means the disk stalled during it, whatever the code did.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from types import TracebackType

import msgspec

STALL_MS = 200.0  # a sync this slow holds every commit of the stack for a visible while


class FsyncFigures(msgspec.Struct, kw_only=True, rename="camel"):
    syncs: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    stalls: int  # syncs that took STALL_MS or longer
    stalled_s: float  # the time those syncs took, together


def figures(durations_s: list[float]) -> FsyncFigures:
    ms = sorted(d * 1000 for d in durations_s)
    if not ms:
        return FsyncFigures(syncs=0, p50_ms=0.0, p99_ms=0.0, max_ms=0.0, stalls=0, stalled_s=0.0)
    slow = [m for m in ms if m >= STALL_MS]
    return FsyncFigures(
        syncs=len(ms),
        p50_ms=round(ms[len(ms) // 2], 2),
        p99_ms=round(ms[math.ceil(len(ms) * 0.99) - 1], 2),  # nearest rank
        max_ms=round(ms[-1], 1),
        stalls=len(slow),
        stalled_s=round(sum(slow) / 1000, 2),
    )


class FsyncProbe:
    """`with FsyncProbe(directory) as probe: ...`, then `probe.figures()`."""

    def __init__(self, directory: Path, every_s: float = 0.02) -> None:
        self._path = Path(directory) / f".fsync-probe-{os.getpid()}"
        self._every_s = every_s
        self._durations: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)

    def __enter__(self) -> FsyncProbe:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> FsyncFigures:
        return figures(self._durations)

    def _run(self) -> None:
        block = b"\0" * 8192
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.pwrite(fd, block * 16, 0)  # allocated up front: the loop rewrites, never grows
            os.fsync(fd)
            i = 0
            while not self._stop.is_set():
                os.pwrite(fd, block, (i % 16) * 8192)
                started = time.monotonic()
                os.fdatasync(fd)
                self._durations.append(time.monotonic() - started)
                i += 1
                self._stop.wait(self._every_s)
        finally:
            os.close(fd)
            self._path.unlink(missing_ok=True)
