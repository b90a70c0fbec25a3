"""Background loops that never die: one helper for every "do this step, pause, again"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def forever(what: str, step: Callable[[], Awaitable[object]],
                  pause: Callable[[], Awaitable[object]], log: logging.Logger) -> None:
    """``step``, then ``pause``, until cancelled. A failing step is logged with its
    traceback and the loop goes on: a background duty must outlive any one error."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; it runs again", what)
        await pause()


def every(seconds: float) -> Callable[[], Awaitable[None]]:
    """A pause of a fixed length."""
    return lambda: asyncio.sleep(seconds)
