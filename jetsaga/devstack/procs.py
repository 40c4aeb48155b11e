"""Child processes that can never outlive us: spawn, watch for readiness, stop, kill.

Every child gets PR_SET_PDEATHSIG=SIGKILL, so even a `kill -9` of our process takes its
children with it. Linux sends that signal when the *thread* that forked the child exits,
so `Child.spawn` must run on a long-lived thread (the main thread, or the event loop's),
never inside `asyncio.to_thread`. Only the waiting may happen on a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

_PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A child exited or missed its deadline before it was ready; the message has its log tail."""


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the child between fork and exec, after any user switch (a change of
        # credentials would clear the setting), so the exec'd program keeps it.
        assert _libc is not None
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Child:
    """One child process; its stdout and stderr go line by line to `log_path` (and `echo`)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        self.env, self.user, self.cwd, self.echo = env, user, cwd, echo
        self.proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=60)
        self._ready_text: str | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, ready_line: str | None = None) -> None:
        """Start the process (on this thread: see the module docstring). Returns at once."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._ready_text, self._ready = ready_line, threading.Event()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if self.env is None else dict(self.env),
            cwd=self.cwd,
            # The user's own group and no others: root's groups would give root's group
            # bits (not the o+x we grant) on directories owned by root.
            user=self.user,
            group=None if self.user is None else pwd.getpwnam(self.user).pw_gid,
            extra_groups=None if self.user is None else [],
            start_new_session=True,  # a Ctrl-C in the terminal reaches only us; we stop them
            preexec_fn=_die_with(os.getpid()) if _libc is not None else None,
        )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name=f"log-{self.name}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream, self.log_path.open("a", encoding="utf-8") as log:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                self._tail.append(line)
                if self.echo is not None:
                    self.echo(line)
                if self._ready_text is not None and self._ready_text in line:
                    self._ready.set()

    def tail(self) -> str:
        return "\n".join(self._tail)

    def _failure(self, why: str) -> ChildFailed:
        return ChildFailed(f"{self.name} {why}; log {self.log_path}, last lines:\n{self.tail()}")

    def wait_ready(self, timeout: float, probe: Callable[[], bool] | None = None) -> None:
        """Block until the ready line was printed (or `probe()` is true), the child exits, or
        the deadline passes; the last two raise `ChildFailed`."""
        deadline = time.monotonic() + timeout
        while True:
            if probe() if probe is not None else self._ready.is_set():
                return
            if not self.running:
                if self._reader is not None:
                    self._reader.join(timeout=1.0)  # let the last lines reach the tail
                code = None if self.proc is None else self.proc.returncode
                raise self._failure(f"exited with code {code} before it was ready")
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._failure(f"was not ready within {timeout:g} s")
            # An event wait, woken by the ready line; the slice only bounds exit detection.
            self._ready.wait(min(left, 0.05))

    def send(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit; None if it is still running at the deadline."""
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        return code

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask it to stop with `sig`, then SIGKILL after `grace` seconds."""
        if self.proc is None:
            return None
        self.send(sig)
        code = self.wait(grace)
        if code is None:
            self.kill()
            code = self.wait()
        return code

    def kill(self) -> None:
        """kill -9: no clean-up in the child, as in a crash."""
        self.send(signal.SIGKILL)
        self.wait()


class Server:
    """A server child with a start/stop life cycle; subclasses say how to prepare, spawn,
    and recognise readiness. `start` blocks; `astart` waits on a worker thread."""

    name = "server"
    start_timeout = 60.0
    stop_signal: int = signal.SIGTERM
    stop_grace = 15.0

    def __init__(self, child: Child) -> None:
        self.child = child

    def _prepare(self) -> None:
        """Blocking set-up before the spawn (may run on a worker thread)."""

    def _spawn(self) -> None:
        raise NotImplementedError

    def _wait(self) -> None:
        self.child.wait_ready(self.start_timeout)

    def start(self) -> Self:
        self._prepare()
        self._spawn()
        self._wait()
        return self

    async def astart(self) -> Self:
        await asyncio.to_thread(self._prepare)
        self._spawn()
        await asyncio.to_thread(self._wait)
        return self

    def stop(self) -> None:
        self.child.stop(self.stop_grace, self.stop_signal)

    def kill(self) -> None:
        self.child.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.child.running

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
