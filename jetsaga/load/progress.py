"""The live progress bar: sent, accepted, final and the current p99, four times a second.

It is redrawn from the event loop (no refresh thread), so it never races the tracker.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jetsaga.load.tracker import Tracker

_PERIOD_S = 0.25


class LiveProgress:
    def __init__(self, tracker: Tracker, console: Console) -> None:
        self._tracker = tracker
        self._progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
            transient=False,
        )
        self._task = self._progress.add_task("sending", total=tracker.count, status="")
        self.phase = "sending"

    def _draw(self) -> None:
        t = self._tracker
        p99 = t.recent_p99_ms(time.monotonic_ns())
        status = (
            f"accepted {t.accepted:,}  final {t.finals():,}  open {t.unresolved:,}  "
            f"in flight {t.in_flight:,}  p99 {'-' if p99 is None else f'{p99:,.0f} ms'}"
        )
        self._progress.update(self._task, completed=t.sent, description=self.phase, status=status)
        self._progress.refresh()

    async def run(self) -> None:
        """Redraw until cancelled."""
        self._progress.start()
        try:
            while True:
                self._draw()
                await asyncio.sleep(_PERIOD_S)
        finally:
            self._draw()
            self._progress.stop()
