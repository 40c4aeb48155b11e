"""What the benchmarks read from /proc: CPU time of a process tree by role, and memory.

CPU of a process tree counts each live process's own time plus that of its children that
exited and were reaped (`cutime`, `cstime`), so short-lived PostgreSQL backends and
restarted workers are not missed.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, ppid, CPU seconds incl. reaped children) of a process, None if it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3): utime is field 14, so index 11; then stime, cutime, cstime
    ticks = sum(int(f) for f in fields[11:15])
    return comm, int(fields[1]), ticks / _TICK


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def role_of(comm: str, cmdline: str) -> str:
    """The part of the stack a process belongs to."""
    if "nats-server" in comm or "nats-server" in cmdline:
        return "nats"
    # Before the workers: an autovacuum worker's title is "postgres: autovacuum worker
    # order_service", which says "worker order" too.
    if comm.startswith("postgres") or cmdline.startswith("postgres") or "/postgres" in cmdline:
        return "postgres"
    for name in ("order", "inventory", "payment"):
        if f"worker {name}" in cmdline:
            return f"worker-{name}"
    if "localstripe" in cmdline or "devstack.stripe" in cmdline:
        return "stripe"
    return "up"


def tree(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds so far of every process in the tree of `root`, summed by role."""
    out: dict[str, float] = defaultdict(float)
    for pid in tree(root):
        st = _stat(pid)
        if st is not None:
            out[role_of(st[0], _cmdline(pid))] += st[2]
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle since boot (all cores)."""
    fields = [int(f) for f in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def rss_mib(pid: int) -> float:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Samples the RSS of each worker of a tree every `period` seconds, keeping the peak."""

    def __init__(self, root: int, period: float = 0.5) -> None:
        self._root, self._period = root, period
        self.peak_mib: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.sample()

    def sample(self) -> None:
        for pid in tree(self._root):
            st = _stat(pid)
            role = role_of(st[0] if st is not None else "", _cmdline(pid))
            if role.startswith("worker-"):
                self.peak_mib[role] = max(self.peak_mib[role], rss_mib(pid))

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
