"""The embedded PostgreSQL 16 server: the binaries of the pgserver wheel, run directly as
our child (not pgserver's own daemon, which detaches), listening on 127.0.0.1 and on a Unix
socket in a private directory. `url` names the socket: a round trip through it costs the
client and the backend 15-20 us less CPU than one through loopback TCP (measured here:
backend 29-34 us against 44, client 55-58 us against 60-66, for `SELECT $1`).

PostgreSQL refuses to run as root, so as root initdb and postgres run as the unprivileged
user `pgserver`, who must own the data directory and be able to traverse its parents.

Measured here (2 cores): a fresh initdb + start takes 0.8-0.95 s, a start on existing data
0.04 s, a kill -9 then crash-recovery start 0.12-0.25 s.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from jetsaga.devstack.procs import Child, ChildFailed, Server, free_port

RUN_AS = "pgserver"
READY_LINE = "database system is ready to accept connections"


def postgres_bin_dir() -> Path:
    # The same path as pgserver._commands.POSTGRES_BIN_PATH, found without importing
    # pgserver, whose import sets up a lock file and warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pgserver is not installed: pip install pgserver")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def _make_traversable(path: Path) -> None:
    """Let other users pass through every parent of `path` (o+x, nothing more)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, entry: pwd.struct_passwd) -> None:
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _stat(pid: int | str) -> tuple[str, int] | None:
    """(state, parent pid) from /proc, or None if the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _live_children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(entry.name)) is not None:
            if info[1] == parent and info[0] != "Z":
                found.append(int(entry.name))
    return found


def _all_gone(pids: list[int]) -> bool:
    return all((info := _stat(pid)) is None or info[0] == "Z" for pid in pids)


# What the embedded server runs with; compose.dev.yaml passes the same to its postgres.
SETTINGS: Final = {
    "max_connections": "400",
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "256MB",
    # Prepared statements keep the plan they got while their tables were nearly empty (a
    # sequential scan) until an ANALYZE invalidates it. With the default 60 s nap, a fresh
    # database ran its first minute of load on such plans: PostgreSQL's CPU per order was
    # four times its steady cost. A short nap lets autovacuum analyze the growing tables
    # within seconds (and keeps the outbox's dead rows in check).
    "autovacuum_naptime": "5s",
    # Fewer checkpoints under sustained writes: each one makes the next write of every page
    # log a full page image (measured: a checkpoint a minute at 800 orders/s).
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    # Every 5 s nap analyzes some fast-growing table; at the default target of 100 each
    # ANALYZE samples 30,000 rows and sorts every column. At 800 orders/s autovacuum then
    # took 8-12 % of the box's busy time, and 4-5 % with a target of 10. The queries are key
    # and range lookups on indexes, which need no finer histograms.
    "default_statistics_target": "10",
}


class PostgresServer(Server):
    name = "postgres"
    start_timeout = 120.0
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, then exit
    stop_grace = 30.0

    def __init__(
        self, data_dir: Path, *, port: int | None = None, log_path: Path | None = None
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_port()
        self.user = RUN_AS if os.geteuid() == 0 else None
        # Chosen now, so that `url` is known before the first start and holds across restarts.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="jetsaga-pg-"))
        log = log_path if log_path is not None else self.data_dir.parent / "postgres.log"
        super().__init__(Child("postgres", [], log_path=log, user=self.user, cwd="/"))
        self.child.env = {**os.environ, "LC_ALL": "C"}  # English log lines: the ready line

    @property
    def url(self) -> str:
        """Through the Unix socket: for processes on this machine, as the workers are."""
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    def _prepare(self) -> None:
        owner = _ensure_user(self.user) if self.user is not None else None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            _make_traversable(self.data_dir)
            _chown_tree(self.data_dir, owner)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = subprocess.run(
                [str(postgres_bin_dir() / "initdb"), "-D", str(self.data_dir), "--auth=trust",
                 "-U", "postgres", "--encoding=utf8", "--locale=C"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                user=self.user, group=None if owner is None else owner.pw_gid,
                extra_groups=None if owner is None else [],
                cwd="/", env=self.child.env, check=False,
            )  # fmt: skip
            if initdb.returncode != 0:
                raise ChildFailed(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}")
        self._clear_stale_pid_file()
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)  # each stop removes it
        if owner is not None:
            os.chown(self.socket_dir, owner.pw_uid, owner.pw_gid)

    def _clear_stale_pid_file(self) -> None:
        # PostgreSQL itself takes over a pid file whose pid is dead (and then frees the old
        # shared memory it names); it refuses one whose pid now belongs to another process.
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if _process_name(pid) not in (None, "postgres"):
            pid_file.unlink()

    def _spawn(self) -> None:
        self.child.argv = [
            str(postgres_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-h", "127.0.0.1", "-k", str(self.socket_dir), "-c", "lc_messages=C",
            *(arg for name, value in SETTINGS.items() for arg in ("-c", f"{name}={value}")),
        ]  # fmt: skip
        self.child.spawn(ready_line=READY_LINE)

    def stop(self) -> None:
        super().stop()
        self._remove_socket_dir()

    def kill(self) -> None:
        """kill -9 of the postmaster and of its backends, as a crash of the machine would."""
        if self.child.running:
            postmaster = self.child.pid
            os.kill(postmaster, signal.SIGSTOP)  # no new backends while we look for them
            backends = _live_children_of(postmaster)
            for pid in backends:
                os.kill(pid, signal.SIGKILL)
            self.child.kill()
            # They are not ours to reap; wait until none is left holding the shared memory.
            deadline = time.monotonic() + 10.0
            while not _all_gone(backends) and time.monotonic() < deadline:
                time.sleep(0.01)
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        shutil.rmtree(self.socket_dir, ignore_errors=True)  # a restart makes it again
