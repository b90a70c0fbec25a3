"""Reading a request's JSON body: its media type, its size (counted as it arrives, not
taken from Content-Length alone), then the parse. Every handler that takes a body reads it
here."""

from __future__ import annotations

import orjson
from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


async def read_json(request: Request, limit: int) -> tuple[object, bytes]:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("send the body as application/json",
                                   {"content_type": ctype or None})
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes", {"limit": limit})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes", {"limit": limit})
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e}") from None
