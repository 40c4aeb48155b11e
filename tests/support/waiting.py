"""`wait_until`: wait on a condition with a deadline, never on a fixed time (STYLE §8)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 - the deadline is the point of this helper
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `check` (sync or async) until it returns a truthy value, and return that value.

    An exception of a type in `ignore` counts as a falsy result (a server still starting,
    say). At the deadline: `AssertionError` naming `message` and the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if loop.time() >= deadline:
            raise AssertionError(f"{message}: not true within {timeout:g} s (last: {last!r})")
        await asyncio.sleep(interval)
