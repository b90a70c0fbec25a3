"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol (its fastest,
and the one uvicorn picks here) with the limits it lacks, answered in the one error shape:

- a request head (request line and headers) over ``max_header_bytes``, or with more than
  ``max_headers`` header fields: 431, then the connection is closed;
- a head not complete ``header_timeout_s`` after its first byte, or a request body with
  a gap longer than ``body_timeout_s`` between two pieces: 408, then closed.

An idle connection, fresh or between two requests, is governed by the keep-alive timeout
alone: the header timer starts when a request begins (its first byte other than the
CRLFs RFC 9112 lets a client send between requests), so a client reusing a keep-alive
connection is never cut by the shorter header timeout.

After a 431 or 408 the connection lingers a moment, reading and dropping what the client
still sends, so that the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.api.responses import from_error
from gateway.config.settings import Settings
from gateway.errors import BadRequest, JobgateError, RequestHeadersTooLarge, RequestTimeout

# "GET " + " HTTP/1.1\r\n" around the URL; the method is counted apart.
REQUEST_LINE_OVERHEAD = 11
HEADER_LINE_OVERHEAD = 4  # ": " and CRLF
LINGER_S = 2.0  # after a refusal, how long what the client still sends is read and dropped


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(max_header_bytes=settings.http_max_header_bytes,
                   max_headers=settings.http_max_headers,
                   header_timeout_s=settings.http_header_timeout_s,
                   body_timeout_s=settings.http_body_timeout_s)


class LimitedHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits] = HttpLimits()

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[LimitedHttpProtocol]:
        """A subclass bound to ``limits``: uvicorn builds each connection from a class."""
        return cast("type[LimitedHttpProtocol]",
                    type(cls.__name__, (cls,), {"limits": limits}))

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.in_head = False  # a request has begun and its head is not complete
        self.in_body = False  # its head is complete and its body is not
        self.head_bytes = 0   # counted from what the parser reports, for the limit
        self.head_read = 0    # read while in the head, bounding what the parser buffers
        self.header_count = 0
        self.body_seen_at = 0.0
        self.head_timer: TimerHandle | None = None
        self.body_timer: TimerHandle | None = None
        self.lingering = False  # answered and closing: what still comes is dropped
        self.ended_in_read = False  # a request ended in the read being parsed

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Idle until the first request begins, as between requests (uvicorn arms no timer
        # here: a connection that never sends a byte was held forever).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Unlike uvicorn's, a byte does not end the keep-alive wait; a request beginning
        # does (on_message_begin): stray CRLFs do not hold a connection.
        if self.lingering:
            return
        # Bytes of this read belong to the head being read if it began in an earlier read,
        # or if no request ended in this one (then nothing before it but a few CRLFs).
        continued, self.ended_in_read = self.in_head, False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            refusal = e.__context__
            if isinstance(refusal, JobgateError):
                self.refuse(refusal)
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.in_head and (continued or not self.ended_in_read):
            # The parser keeps a header line it has not seen the end of: bound it by what
            # was read (exact sizes are judged when the head completes). A head begun after
            # a pipelined request in the same read is bounded from the next read on.
            self.head_read += len(data)
            if self.head_read > self.limits.max_header_bytes:
                self.refuse(self._head_too_large())

    def send_400_response(self, msg: str) -> None:
        self.refuse(BadRequest(msg))

    def refuse(self, error: JobgateError) -> None:
        """Answer ``error`` outside any request cycle, and close the connection."""
        client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        self.logger.info("%s%d %s: %s", client, error.status, error.code, error.message)
        body = bytes(from_error(error).body)
        content = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self._linger()

    def _linger(self) -> None:
        """Close without resetting: a socket closed with unread data sends a reset, and the
        client may lose the answer it was sent. Stop writing, drop what still comes for a
        moment, then close."""
        self.lingering = True
        self._stop_head_timer()
        self._stop_body_timer()
        self._unset_keepalive_if_required()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

    # -- parser callbacks (exceptions raised here abort the parse: see data_received) ------

    def on_message_begin(self) -> None:
        self._unset_keepalive_if_required()
        self.in_head, self.head_bytes, self.head_read, self.header_count = True, 0, 0, 0
        self.head_timer = self.loop.call_later(self.limits.header_timeout_s,
                                               self._head_timed_out)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            raise RequestHeadersTooLarge(
                f"more than {self.limits.max_headers} request headers",
                {"limit": self.limits.max_headers, "setting": "JOBGATE_HTTP_MAX_HEADERS"})
        self.head_bytes += len(name) + len(value) + HEADER_LINE_OVERHEAD
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self.in_head = False
        self.head_bytes += len(self.parser.get_method()) + REQUEST_LINE_OVERHEAD
        if self.head_bytes > self.limits.max_header_bytes:
            raise self._head_too_large()
        # A keep-alive timer armed when the previous response ended, while this head was
        # arriving, must not cut this request.
        self._unset_keepalive_if_required()
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # the connection is about to become a WebSocket's
        self.in_body = True
        self.body_seen_at = self.loop.time()
        self.body_timer = self.loop.call_later(self.limits.body_timeout_s, self._check_body)

    def on_body(self, body: bytes) -> None:
        self.body_seen_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_body, self.ended_in_read = False, True
        self._stop_body_timer()
        super().on_message_complete()

    # -- timers ----------------------------------------------------------------------------

    def _head_too_large(self) -> RequestHeadersTooLarge:
        limit = self.limits.max_header_bytes
        return RequestHeadersTooLarge(
            f"the request headers are over {limit} bytes",
            {"limit": limit, "setting": "JOBGATE_HTTP_MAX_HEADER_BYTES"})

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _stop_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.in_head or self.lingering or self.transport.is_closing():
            return
        previous = self.cycle
        if previous is not None and not previous.response_complete:
            # A pipelined head stalled behind a response still being sent: a 408 now would
            # land inside that response. Close once it is complete.
            previous.keep_alive = False
            return
        timeout = self.limits.header_timeout_s
        self.refuse(RequestTimeout(
            f"the request headers did not arrive within {timeout:g} s",
            {"limit_s": timeout, "setting": "JOBGATE_HTTP_HEADER_TIMEOUT_S"}))

    def _check_body(self) -> None:
        """Runs when the body may have stalled; re-arms itself while it has not. A body
        the app has not yet taken (reading paused), or not yet asked for (a client that
        sent ``Expect: 100-continue`` waits for it), is not the client's wait."""
        self.body_timer = None
        if not self.in_body or self.lingering or self.transport.is_closing():
            return
        now, timeout = self.loop.time(), self.limits.body_timeout_s
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            self.body_seen_at = now
        waited = now - self.body_seen_at
        if waited < timeout:
            self.body_timer = self.loop.call_later(timeout - waited, self._check_body)
            return
        cycle = self.cycle
        if cycle.response_started:  # too late for a 408: the answer is (being) sent
            self.transport.close()
            return
        # The app waiting for the body hears a disconnect; nothing it sends is written.
        cycle.disconnected = True
        cycle.message_event.set()
        self.refuse(RequestTimeout(
            f"no request body for {timeout:g} s",
            {"limit_s": timeout, "setting": "JOBGATE_HTTP_BODY_TIMEOUT_S"}))
