"""What both interpreters do with httpx: build its request from ours, and map its errors
to ``TransportError`` — the one place the client meets httpx's exception types."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from gateway.client.errors import TransportError
from gateway.client.protocol import Answer, Endpoint, Request


def http_args(endpoint: Endpoint, timeout: float | httpx.Timeout,
              transport: Any) -> dict[str, Any]:
    """httpx.Client's and httpx.AsyncClient's arguments (``transport``: the one of the
    matching colour, or None)."""
    return {"base_url": endpoint.url, "headers": endpoint.headers(), "timeout": timeout,
            "transport": transport}


@contextmanager
def httpx_errors(url: str) -> Iterator[None]:
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise TransportError(f"cannot reach the gateway at {url}: {e}") from e
    except httpx.HTTPError as e:
        raise TransportError(f"the connection to the gateway at {url} failed: "
                             f"{type(e).__name__}: {e}") from e


def build(http: httpx.Client | httpx.AsyncClient, request: Request) -> httpx.Request:
    return http.build_request(request.method, request.path, params=dict(request.params),
                              content=request.content, headers=dict(request.headers))


def answer_of(response: httpx.Response, *, with_body: bool = True) -> Answer:
    return Answer(response.status_code, response.headers,
                  response.content if with_body else b"")
