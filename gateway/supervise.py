"""Background work that is never lost: loops that never die (one helper for every "do
this step, pause, again") and fire-and-forget tasks that are held, logged and stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any


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


class TaskSet:
    """Fire-and-forget tasks, held until they end (the event loop keeps only a weak
    reference to a task), each failure logged, all of them cancelled together at stop."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[object], name: str | None = None) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(work)
        if name is not None and isinstance(task, asyncio.Task):
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            self.log.error("%s: a background task failed", self.what, exc_info=e)

    async def settle(self) -> None:
        """Until every task started so far (and any they started) has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
