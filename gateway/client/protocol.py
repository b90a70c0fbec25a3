"""What the sync and the async client share: every operation is written ONCE, as a
generator that yields instructions and is sent their results, and each client is a small
interpreter that only does the I/O (``sync.py`` with httpx.Client and time.sleep,
``aio.py`` with httpx.AsyncClient and asyncio.sleep).

Why this rather than writing each method twice, or generating the sync client from the
async one (unasync): request building, answer parsing, retries with Retry-After, following
a 202, paging and reconnecting a log stream are all logic, and here that logic exists once
and is tested through both clients; the interpreters are about forty lines each and have
no knowledge of jobgate's API. A generated copy would still be a second body to review and
to keep in step with its generator.

The instructions:

- ``Send(request)``        -> ``Answer`` (status, headers, the whole body)
- ``Open(request)``        -> ``Answer`` without the body (with it when status >= 400),
                              then ``Read()`` -> the next chunk, ``b""`` at its end;
                              ``Close()`` ends it. One stream at a time per operation.
- ``Sleep(seconds)``       -> None
- ``Emit(item)``           -> None: hands ``item`` to the caller of an iterating operation.

A transport failure is thrown into the generator as ``TransportError`` at the instruction
that failed, so an operation may handle it (the log stream reconnects).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: Mapping[str, str | int | float] = field(default_factory=dict)
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Safe to send again after a 429/503 (a GET, or a POST carrying an Idempotency-Key).
    retry_safe: bool = True
    # Artifacts may be a redirect to a presigned URL (S3 storage).
    follow_redirects: bool = False


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Send:
    request: Request


@dataclass(frozen=True)
class Open:
    request: Request


@dataclass(frozen=True)
class Read:
    pass


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Emit(Generic[T]):
    item: T


Instruction = Send | Open | Read | Close | Sleep | Emit[Any]
# An operation: yields instructions, is sent their results, returns its value.
Operation = Generator[Instruction, Any, T]


class Stepper(Generic[T]):
    """Runs an operation one instruction at a time, for an interpreter: ``next()`` gives
    the next instruction (None once it returned: ``result``), after ``answer(value)`` or
    ``fail(error)`` said how the last one went."""

    def __init__(self, operation: Operation[T]):
        self._operation = operation
        self._value: Any = None
        self._error: BaseException | None = None
        self.result: T | None = None

    def next(self) -> Instruction | None:
        value, error = self._value, self._error
        self._value = self._error = None
        try:
            if error is not None:
                return self._operation.throw(error)
            return self._operation.send(value)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def answer(self, value: Any) -> None:
        self._value = value

    def fail(self, error: BaseException) -> None:
        self._error = error

    def close(self) -> None:
        self._operation.close()


@dataclass(frozen=True)
class Endpoint:
    """Where the gateway is and the key to it: the arguments, else JOBGATE_URL and
    JOBGATE_API_KEY, else the local default and no key."""

    url: str
    api_key: str | None

    @classmethod
    def resolve(cls, url: str | None = None, api_key: str | None = None) -> Endpoint:
        url = url or os.environ.get("JOBGATE_URL") or DEFAULT_URL
        return cls(url.rstrip("/"), api_key or os.environ.get("JOBGATE_API_KEY") or None)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "jobgate-client", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers
