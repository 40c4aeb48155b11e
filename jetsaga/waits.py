"""Waits that a worker's stop event cuts short."""

from __future__ import annotations

import asyncio


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if the worker is told to stop: the pace of background loops
    and of paced consumers."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


async def either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Until one of two events is set."""
    if first.is_set() or second.is_set():
        return
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
