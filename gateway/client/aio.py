"""``AsyncClient``: the asyncio client. Its methods run the shared operations
(``operations.py``, ``downloads.py``, ``logstream.py``) through ``_drive``, which does the
I/O with httpx.AsyncClient and asyncio.sleep. (Downloaded chunks are written to the local
file inline, as httpx writes nothing itself: a local-disk write of one chunk.)"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar, Unpack, cast

import httpx

from gateway.client import downloads, logstream, operations
from gateway.client.errors import TransportError
from gateway.client.logstream import LogChunk, LogEnd
from gateway.client.operations import Config, InvokeOptions, Progress
from gateway.client.protocol import Emit, Endpoint, Open, Operation, Read, Send, Sleep, Stepper
from gateway.client.retries import RetryPolicy
from gateway.client.transport import answer_of, build, http_args, httpx_errors
from gateway.config.profiles import Profile
from gateway.models import (
    AcceptedInvocation,
    ArtifactLink,
    Invocation,
    InvocationLogs,
    InvocationSummary,
    Status,
    Usage,
)

T = TypeVar("T")


class AsyncClient:
    """A jobgate gateway over HTTP, for asyncio: the methods, arguments and answers of
    ``Client`` (see there), awaited; ``list`` and ``follow_logs`` are async iterators.
    Use it as an async context manager, or ``await aclose()``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = 120.0, wait_timeout_s: float = 900.0,
                 poll_s: float = 10.0, retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.config = Config(Endpoint.resolve(url, api_key), retry or RetryPolicy(),
                             wait_timeout_s, poll_s)
        self._http = httpx.AsyncClient(**http_args(self.config.endpoint, timeout, transport))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- invocations ---------------------------------------------------------------------

    async def invoke(self, profile: str, code: str | None = None, *,
                     wait: float | None = None, progress: Progress | None = None,
                     **options: Unpack[InvokeOptions]) -> Invocation:
        return await self._run(operations.invoke(self.config, profile, code, options, wait,
                                                 progress))

    async def submit(self, profile: str, code: str | None = None,
                     **options: Unpack[InvokeOptions]) -> AcceptedInvocation:
        return await self._run(operations.submit(self.config, profile, code, options))

    async def wait(self, invocation_id: str, timeout_s: float | None = None, *,
                   progress: Progress | None = None) -> Invocation:
        return await self._run(operations.wait(self.config, invocation_id, timeout_s,
                                               progress))

    async def get(self, invocation_id: str) -> Invocation:
        return await self._run(operations.get(self.config, invocation_id))

    def list(self, status: Status | str | None = None, profile: str | None = None, *,
             limit: int = 1000, page_size: int = 50) -> AsyncIterator[InvocationSummary]:
        return self._iterate(operations.list_invocations(self.config, status, profile,
                                                         limit, page_size))

    async def logs(self, invocation_id: str) -> InvocationLogs:
        return await self._run(operations.logs(self.config, invocation_id))

    def follow_logs(self, invocation_id: str, *, reconnects: int = 5
                    ) -> AsyncIterator[LogChunk | LogEnd]:
        return self._iterate(logstream.follow_logs(self.config, invocation_id, reconnects))

    async def cancel(self, invocation_id: str) -> Invocation:
        return await self._run(operations.cancel(self.config, invocation_id))

    # -- artifacts and catalogue ---------------------------------------------------------

    async def artifacts(self, invocation_id: str) -> builtins.list[ArtifactLink]:
        return await self._run(operations.artifacts(self.config, invocation_id))

    async def download_artifact(self, invocation_id: str, name: str,
                                dest: str | os.PathLike[str]) -> Path:
        return await self._run(downloads.download_one(self.config, invocation_id, name, dest))

    async def download_artifacts(self, invocation_id: str, dest_dir: str | os.PathLike[str]
                                 ) -> builtins.list[Path]:
        return await self._run(downloads.download_all(self.config, invocation_id, dest_dir))

    async def profiles(self) -> builtins.list[Profile]:
        return await self._run(operations.profiles(self.config))

    async def usage(self) -> Usage:
        """This tenant's usage in the replica that answers, and its limits."""
        return await self._run(operations.usage(self.config))

    async def all_usage(self) -> builtins.list[Usage]:
        """Every tenant's usage (an operator tenant's key: JOBGATE_OPERATOR_TENANTS)."""
        return await self._run(operations.all_usage(self.config))

    # -- the interpreter -----------------------------------------------------------------

    async def _run(self, operation: Operation[T]) -> T:
        stepper = Stepper(operation)
        async for _ in self._drive(stepper):
            pass
        return cast(T, stepper.result)

    def _iterate(self, operation: Operation[None]) -> AsyncIterator[Any]:
        return self._drive(Stepper(operation))

    async def _drive(self, stepper: Stepper[Any]) -> AsyncIterator[Any]:
        stream: httpx.Response | None = None
        chunks: AsyncIterator[bytes] | None = None
        try:
            while (instruction := stepper.next()) is not None:
                if isinstance(instruction, Emit):
                    yield instruction.item
                    continue
                try:
                    with httpx_errors(self.config.endpoint.url):
                        if isinstance(instruction, Send):
                            response = await self._http.send(
                                build(self._http, instruction.request),
                                follow_redirects=instruction.request.follow_redirects)
                            stepper.answer(answer_of(response))
                        elif isinstance(instruction, Open):
                            if stream is not None:
                                await stream.aclose()
                            stream = await self._http.send(
                                build(self._http, instruction.request), stream=True,
                                follow_redirects=instruction.request.follow_redirects)
                            failed = stream.status_code >= 400
                            if failed:
                                await stream.aread()
                            stepper.answer(answer_of(stream, with_body=failed))
                            chunks = stream.aiter_bytes()
                        elif isinstance(instruction, Read):
                            stepper.answer(b"" if chunks is None
                                           else await anext(chunks, b""))
                        elif isinstance(instruction, Sleep):
                            await asyncio.sleep(instruction.seconds)
                except TransportError as e:
                    stepper.fail(e)
        finally:
            if stream is not None:
                await stream.aclose()
            stepper.close()
