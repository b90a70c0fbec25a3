"""Following an invocation's logs: its output while it runs, from given offsets, then how
it ended. What a follower receives is what the stored logs hold, byte for byte (the same
caps, the same text), so a follower that reconnects with its offsets gets exactly the
rest, whether it now comes from the run or from storage.

- Run by this replica: from its ``LiveOutput`` as the runner streams it, then, once it
  ended, whatever the stored output holds past what was sent.
- Not run here (another replica runs it, or it waits there): nothing until it ends
  (storage is read every ``logs_follow_poll_s``), then its stored output.

Each follower holds a slot (``logs_follow_max_per_invocation`` on one invocation,
``logs_follow_max_total`` in all); it gives it back however its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

from gateway.dispatch.lifecycle import Lifecycle
from gateway.dispatch.live import LiveTable
from gateway.errors import StorageUnavailable, TooManyFollowers
from gateway.executors.live_output import STREAMS, StreamName, char_end, char_start
from gateway.models import InvocationRecord, LiveLogEnd

# The most text one event carries (whole characters: a little less).
CHUNK_BYTES = 16 * 1024


@dataclass(frozen=True)
class Offsets:
    """Byte offsets in the UTF-8 of each stream: what a follower has."""

    stdout: int = 0
    stderr: int = 0

    def of(self, stream: StreamName) -> int:
        value: int = getattr(self, stream)
        return value


@dataclass(frozen=True)
class Chunk:
    stream: StreamName
    offset: int  # where ``data`` starts in its stream
    data: str
    after: Offsets  # both streams' offsets once this chunk is had


@dataclass(frozen=True)
class Ping:
    """Nothing happened for a while (a keep-alive)."""


Piece = Chunk | LiveLogEnd | Ping


class FollowerSlots:
    def __init__(self, per_invocation: int, total: int):
        self.per_invocation = per_invocation
        self.total = total
        self._held: Counter[str] = Counter()

    def take(self, invocation_id: str) -> None:
        if self._held.total() >= self.total:
            raise TooManyFollowers(
                f"this gateway already streams {self.total} followers' logs; try again "
                "later", {"limit": self.total, "scope": "gateway"}, retry_after=5)
        if self._held[invocation_id] >= self.per_invocation:
            raise TooManyFollowers(
                f"invocation {invocation_id} already has {self.per_invocation} followers",
                {"limit": self.per_invocation, "scope": "invocation"}, retry_after=5)
        self._held[invocation_id] += 1

    def give_back(self, invocation_id: str) -> None:
        self._held[invocation_id] -= 1
        if self._held[invocation_id] <= 0:
            del self._held[invocation_id]

    def __len__(self) -> int:
        return self._held.total()


def slices(stream: StreamName, text: bytes | bytearray, at: Offsets, *, end: int | None = None
           ) -> Iterator[Chunk]:
    """``text`` (UTF-8) past the follower's offset in ``stream``, in chunks of whole
    characters (an offset inside a character moves on to the next one)."""
    stop = len(text) if end is None else end
    start = char_start(text, at.of(stream))
    while start < stop:
        cut = char_end(text, min(start + CHUNK_BYTES, stop))
        if cut <= start:  # one character longer than what is left of the chunk
            cut = char_start(text, start + 1)
        at = replace(at, **{stream: cut})
        yield Chunk(stream, start, bytes(text[start:cut]).decode(), at)
        start = cut


class Follow:
    """One follower's stream, holding its slot until ``close`` (idempotent)."""

    def __init__(self, followers: LogFollowers, tenant: str, invocation_id: str,
                 offsets: Offsets, streams: tuple[StreamName, ...]):
        self._followers = followers
        self.tenant = tenant
        self.invocation_id = invocation_id
        self.offsets = offsets
        self.streams = streams
        self._closed = False
        self._last_sent = time.monotonic()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._followers.slots.give_back(self.invocation_id)

    async def pieces(self) -> AsyncIterator[Piece]:
        """Output as it comes, then how it ended; or nothing more once the gateway stops (the
        follower then reconnects with its offsets, to this replica or another)."""
        f = self._followers
        live = None
        while True:
            # The one seen last, if it ended meanwhile: its final record is at hand.
            if live is None or not live.done.done():
                live = f.live.get(self.invocation_id, self.tenant)
            waiting: set[asyncio.Future[Any]] = set()
            if live is not None:
                live.output.want()
                for stream in self.streams:
                    for chunk in slices(stream, live.output.text(stream), self.offsets):
                        yield self._sent(chunk)
                if live.done.done():
                    for piece in self._ending(live.done.result()):
                        yield piece
                    return
                waiting = {live.output.changed(), live.done}
                timeout = f.ping_s
            else:
                record = await self._stored()
                if record is not None and record.status.terminal:
                    for piece in self._ending(record):
                        yield piece
                    return
                timeout = f.poll_s
            ping_in = self._last_sent + f.ping_s - time.monotonic()
            waiting.add(f.stopping)
            await asyncio.wait(waiting, timeout=max(0.0, min(timeout, ping_in)),
                               return_when=asyncio.FIRST_COMPLETED)
            if f.stopping.done():
                return
            if time.monotonic() - self._last_sent >= f.ping_s:
                yield self._sent(Ping())

    async def _stored(self) -> InvocationRecord | None:
        """As storage has it; None while storage is down (asked again at the next poll)."""
        with contextlib.suppress(StorageUnavailable):
            return await self._followers.records.load(self.tenant, self.invocation_id)
        return None

    def _ending(self, record: InvocationRecord) -> Iterator[Piece]:
        """The stored output past what was sent, then how it ended."""
        texts = {"stdout": (record.stdout or "").encode(),
                 "stderr": (record.stderr or "").encode()}
        for stream in self.streams:
            for chunk in slices(stream, texts[stream], self.offsets):
                yield self._sent(chunk)
        yield LiveLogEnd(status=record.status, exit_code=record.exit_code,
                         stdout_truncated=record.stdout_truncated,
                         stderr_truncated=record.stderr_truncated)

    def _sent(self, piece: Piece) -> Piece:
        self._last_sent = time.monotonic()
        if isinstance(piece, Chunk):
            self.offsets = piece.after
        return piece


class LogFollowers:
    """Every follower of this replica: their slots, and what their streams wait on."""

    def __init__(self, live: LiveTable, lifecycle: Lifecycle):
        settings = lifecycle.parts.settings
        self.live = live
        self.records = lifecycle.parts.records
        self._lifecycle = lifecycle
        self.ping_s = settings.logs_follow_ping_s
        self.poll_s = settings.logs_follow_poll_s
        self.slots = FollowerSlots(settings.logs_follow_max_per_invocation,
                                   settings.logs_follow_max_total)

    @property
    def stopping(self) -> asyncio.Future[None]:
        """Done when the gateway stops and its waits end (its followers' streams too)."""
        return self._lifecycle.waits_over

    def open(self, tenant: str, invocation_id: str, offsets: Offsets,
             streams: tuple[StreamName, ...] = STREAMS) -> Follow:
        """A follower's stream (TooManyFollowers past the limits). The invocation must
        be known to be the tenant's already (InvocationNotFound otherwise)."""
        self.slots.take(invocation_id)
        return Follow(self, tenant, invocation_id, offsets, streams)

