"""Live logs: ``GET /v1/invocations/{id}/logs?follow=true`` as server-sent events.

The contract: ``event: output`` with ``id: <stdout_bytes>.<stderr_bytes>`` (the offsets
after the chunk) and ``data: {"stream", "offset", "data"}``; a final ``event: end`` with
``data: {"status", "exit_code", "stdout_truncated", "stderr_truncated"}``; ``: ping``
comments keep the connection alive. A dropped connection is resumed with Last-Event-ID,
so no chunk is seen twice or lost; the reconnections in a row are bounded."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from gateway.client.errors import TransportError, UnexpectedAnswer
from gateway.client.operations import Config, invocation_path, parse
from gateway.client.protocol import Emit, Operation, Read, Request, Sleep
from gateway.client.retries import send
from gateway.models import Status

# Forward compatible: a newer gateway may say more.
LENIENT = ConfigDict(extra="ignore", frozen=True)
# What one event may hold before the stream is taken for broken (a chunk of output,
# JSON-escaped, is far below it).
MAX_EVENT_CHARS = 16 * 1024 * 1024
_LINE_END = re.compile(r"\r\n|\r|\n")


class LogChunk(BaseModel):
    """A piece of output: ``data`` starts at byte ``offset`` of its ``stream``."""

    model_config = LENIENT
    stream: Literal["stdout", "stderr"]
    offset: int
    data: str


class LogEnd(BaseModel):
    """The invocation ended: the last event of a followed log."""

    model_config = LENIENT
    status: Status
    exit_code: int | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


@dataclass
class SSEDecoder:
    """Bytes in, events out, by the WHATWG event-stream rules: a line ends at CRLF, LF or
    CR; ``field: value`` (one space after the colon dropped); ``:`` starts a comment; a
    blank line dispatches the event when it has data. Chunks may split anything, a
    UTF-8 character or a CRLF included."""

    last_event_id: str | None = None
    _utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _pending: str = ""
    _started: bool = False
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _size: int = 0

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._pending + self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        events, start = [], 0
        for end in _LINE_END.finditer(text):
            if end.group() == "\r" and end.end() == len(text):
                break  # maybe the first half of a CRLF: wait for the next chunk
            event = self._line(text[start:end.start()])
            if event is not None:
                events.append(event)
            start = end.end()
        self._pending = text[start:]
        if len(self._pending) + self._size > MAX_EVENT_CHARS:
            raise UnexpectedAnswer(f"a log event over {MAX_EVENT_CHARS} characters")
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._size += len(value)
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id is not None:
            self.last_event_id = self._id
        data, event = self._data, self._event or "message"
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return ServerSentEvent(event, "\n".join(data), self.last_event_id)


def follow_logs(config: Config, invocation_id: str, reconnects: int) -> Operation[None]:
    """Emit each LogChunk as it is written, then the LogEnd. A connection that drops (an
    error, or its end before the ``end`` event) is opened again from the last event seen,
    at most ``reconnects`` times in a row (a chunk received resets the count)."""
    last_id: str | None = None
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id}
                                                      if last_id else {})}
        request = Request("GET", invocation_path(invocation_id, "logs"),
                          params={"follow": "true"}, headers=headers)
        answer = yield from send(request, config.retry, stream=True)
        if not answer.headers.get("content-type", "").startswith("text/event-stream"):
            raise UnexpectedAnswer("the gateway does not stream logs (GET …/logs?follow=true "
                                   f"answered {answer.headers.get('content-type')!r})")
        decoder = SSEDecoder(last_event_id=last_id)
        try:
            while chunk := (yield Read()):
                for event in decoder.feed(chunk):
                    if event.event == "output":
                        yield Emit(parse(LogChunk, event.data, "an output event"))
                        last_id, failures = event.id, 0
                    elif event.event == "end":
                        yield Emit(parse(LogEnd, event.data, "the end event"))
                        return
        except TransportError:
            if failures >= reconnects:
                raise
        failures += 1
        if failures > reconnects:
            raise TransportError(f"the log stream of {invocation_id} ended {failures} times "
                                 "without its end event")
        yield Sleep(min(0.25 * 2 ** failures, 5.0))
