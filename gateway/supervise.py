"""Background work that is never lost: loops that never die (one helper for every "do
this step, pause, again") and fire-and-forget tasks that are held, logged and stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
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
    reference to a task), each failure logged, all of them cancelled together at stop.
    A task spawned under a ``key`` is the only one of that key until it ends (``key in
    tasks`` says whether one runs)."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self._tasks: set[asyncio.Future[Any]] = set()
        self._keys: dict[Hashable, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def spawn(self, work: Awaitable[object], name: str | None = None, *,
              key: Hashable | None = None) -> asyncio.Future[Any]:
        if key is not None and key in self._keys:
            raise ValueError(f"{self.what}: a task for {key!r} runs already")
        task = asyncio.ensure_future(work)
        if name is not None and isinstance(task, asyncio.Task):
            task.set_name(name)
        self._tasks.add(task)
        if key is not None:
            self._keys[key] = task
        task.add_done_callback(lambda done: self._done(done, key))
        return task

    def _done(self, task: asyncio.Future[Any], key: Hashable | None) -> None:
        self._tasks.discard(task)
        if key is not None and self._keys.get(key) is task:
            del self._keys[key]
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
