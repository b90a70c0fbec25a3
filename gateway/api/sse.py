"""Live logs as server-sent events (docs/api.md, "Live logs"): a follower's pieces
(gateway.dispatch.follow) written as ``text/event-stream``, and the follow parameters
read from a request (offsets from ``Last-Event-ID`` or the query)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
from starlette.datastructures import Headers, QueryParams
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.dispatch.follow import Chunk, Follow, Offsets, Piece
from gateway.errors import InvalidInput
from gateway.models import LiveLogEnd, LiveLogOutput

MEDIA_TYPE = "text/event-stream"
# Offsets beyond any output a gateway keeps, yet exact as JSON numbers.
MAX_OFFSET = 2**53 - 1
EVENT_ID = re.compile(r"^([0-9]{1,16})\.([0-9]{1,16})$")


def event(piece: Piece) -> bytes:
    """One piece as an event (a comment, for a ping)."""
    if isinstance(piece, Chunk):
        data = LiveLogOutput(stream=piece.stream, offset=piece.offset, data=piece.data)
        return b"event: output\nid: %d.%d\ndata: %s\n\n" % (
            piece.after.stdout, piece.after.stderr, orjson.dumps(data.model_dump()))
    if isinstance(piece, LiveLogEnd):
        return b"event: end\ndata: %s\n\n" % orjson.dumps(piece.model_dump(mode="json"))
    return b": ping\n\n"


def wants_follow(query: QueryParams) -> bool:
    value = query.get("follow")
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise InvalidInput("follow must be true or false")


def _offset(query: QueryParams, name: str) -> int:
    value = query.get(name)
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_OFFSET:
        raise InvalidInput(f"{name} must be a byte offset (an integer from 0)")
    return int(value)


def offsets_of(query: QueryParams, headers: Headers) -> Offsets:
    """Where a follower resumes: ``Last-Event-ID`` (what an EventSource sends when it
    reconnects to the same URL, so it wins), else the query's offsets, else the start."""
    from_query = Offsets(_offset(query, "stdout_offset"), _offset(query, "stderr_offset"))
    last = headers.get("last-event-id")
    if last is None or last == "":
        return from_query
    match = EVENT_ID.match(last)
    if match is None:
        raise InvalidInput("Last-Event-ID must be an event id of this stream "
                           "(<stdout_offset>.<stderr_offset>)")
    return Offsets(int(match[1]), int(match[2]))


async def _events(follow: Follow) -> AsyncIterator[bytes]:
    async for piece in follow.pieces():
        yield event(piece)


class EventStream(StreamingResponse):
    """The follower's stream; its slot is given back however the response ends (the
    end event, the client gone, the gateway stopping), even one never iterated."""

    def __init__(self, follow: Follow):
        self.follow = follow
        # No caching, and no buffering by a proxy (nginx reads X-Accel-Buffering).
        super().__init__(_events(follow), media_type=MEDIA_TYPE, headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.follow.close()
