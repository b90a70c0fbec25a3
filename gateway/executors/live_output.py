"""The output of one running invocation as it grows, between the runner client (which
feeds it what a watched runner streams) and the invocation's followers (who read it).

Nothing is streamed until someone wants it (``want``): only then does the runner client
ask its runner to watch, so a call nobody follows costs nothing more than this object.

What is kept is text, as the stored logs will hold it: the runner's bytes decoded as
UTF-8 (invalid bytes replaced, as the runner does for the report) and encoded again, so
an offset here is a byte offset in the UTF-8 of the stored logs, and everything kept is
a prefix of them. A character split between two frames is kept back until it is whole.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable
from typing import Literal

StreamName = Literal["stdout", "stderr"]
STREAMS: tuple[StreamName, ...] = ("stdout", "stderr")


def char_start(data: bytes | bytearray, offset: int) -> int:
    """The first character boundary at or after ``offset`` in UTF-8 ``data``."""
    while 0 < offset < len(data) and data[offset] & 0xC0 == 0x80:
        offset += 1
    return min(offset, len(data))


def char_end(data: bytes | bytearray, offset: int) -> int:
    """The last character boundary at or before ``offset`` in UTF-8 ``data``."""
    offset = min(offset, len(data))
    while 0 < offset < len(data) and data[offset] & 0xC0 == 0x80:
        offset -= 1
    return offset


class _Stream:
    def __init__(self) -> None:
        self.text = bytearray()  # UTF-8 of the decoded text so far
        self.received = 0  # the runner's bytes taken in (its offset space)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")


class LiveOutput:
    def __init__(self) -> None:
        self._streams = {name: _Stream() for name in STREAMS}
        self.cap: int | None = None
        self.wanted = False
        self._watch: Callable[[], None] | None = None
        self._changed: asyncio.Future[None] | None = None

    # -- the followers' side ---------------------------------------------------------------

    def want(self) -> None:
        """Someone follows: the runner (now, or the next one connected) streams."""
        self.wanted = True
        self._ask()

    def size(self, stream: StreamName) -> int:
        return len(self._streams[stream].text)

    def text(self, stream: StreamName) -> bytes | bytearray:
        """The stream's text so far, UTF-8, whole characters (to read, not to change)."""
        return self._streams[stream].text

    def changed(self) -> asyncio.Future[None]:
        """Done at the next piece of output (shared by every follower; never cancelled
        by one that stops waiting)."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    # -- the runner client's side ------------------------------------------------------------

    def connect(self, cap: int, watch: Callable[[], None]) -> None:
        """A runner runs the invocation; ``watch`` asks it to stream (called once, now
        if someone already follows)."""
        self.cap = cap
        self._watch = watch
        if self.wanted:
            self._ask()

    def disconnect(self) -> None:
        self._watch = None

    def feed(self, stream: StreamName, offset: int, data: bytes) -> None:
        """Bytes the runner streamed, at ``offset`` of its stream. What was taken in
        already (a later attempt starts again at 0) and what lies past the cap are
        dropped; a gap (which a runner never leaves) drops the piece."""
        s = self._streams[stream]
        if offset > s.received:
            return
        data = data[s.received - offset:]
        if self.cap is not None:
            data = data[:max(0, self.cap - s.received)]
        if not data:
            return
        s.received += len(data)
        s.text += s.decoder.decode(data).encode()
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def _ask(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch()
