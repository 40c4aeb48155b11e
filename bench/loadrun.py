"""One `jetsaga load` run as a child process: its JSON report and the CPU it used."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any

import msgspec


class LoadFailed(RuntimeError):
    """The runner could not run (exit status 2, or no report)."""


def _pinned(cpus: Set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_load(
    *,
    url: str,
    inventory_url: str,
    nats_url: str,
    rate: float,
    duration: float,
    settle: float,
    out: Path,
    label: str,
    cpus: Set[int] | None = None,
    warmup: float = 0.0,
) -> tuple[dict[str, Any], float]:
    """`jetsaga load` with 10% declines and 5% out of stock (and `warmup` seconds at the
    same rate first, outside its figures), its report in `out/label.*`; returns the report
    and the runner's CPU seconds (user + system)."""
    report_path = out / f"{label}.json"
    argv = [
        sys.executable, "-m", "jetsaga.cli", "load",
        "--url", url, "--inventory-url", inventory_url, "--nats-url", nats_url,
        "--rate", f"{rate:g}", "--duration", f"{duration:g}", "--warmup", f"{warmup:g}",
        "--decline-ratio", "0.1", "--out-of-stock-ratio", "0.05",
        "--settle-timeout", f"{settle:g}", "--no-progress",
        "--json", str(report_path), "--chart", str(out / f"{label}.html"),
    ]  # fmt: skip
    with (out / f"{label}.txt").open("wb") as text:
        proc = subprocess.Popen(
            argv, stdout=text, stderr=subprocess.STDOUT, preexec_fn=_pinned(cpus)
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode not in (0, 1) or not report_path.exists():
        tail = (out / f"{label}.txt").read_text(errors="replace")[-2000:]
        raise LoadFailed(f"jetsaga load exited {proc.returncode}:\n{tail}")
    report: dict[str, Any] = msgspec.json.decode(report_path.read_bytes())
    return report, usage.ru_utime + usage.ru_stime
