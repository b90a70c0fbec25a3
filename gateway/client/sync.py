"""``Client``: the blocking client. Its methods run the shared operations
(``operations.py``, ``downloads.py``, ``logstream.py``) through ``_drive``, which does the
I/O with httpx.Client and time.sleep."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator
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


class Client:
    """A jobgate gateway over HTTP, blocking. ``url`` and ``api_key`` default to
    JOBGATE_URL and JOBGATE_API_KEY. Use it as a context manager, or ``close()`` it.

    ``timeout``: httpx's, per request (a sync invoke waits for the gateway's sync wait);
    ``wait_timeout_s``: the longest invoke() and wait() wait for an invocation to end;
    ``poll_s``: one long-poll's wait, at most the gateway's JOBGATE_SYNC_WAIT_S;
    ``retry``: tries and time for 429/503 answers to requests safe to repeat."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = 120.0, wait_timeout_s: float = 900.0,
                 poll_s: float = 10.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.config = Config(Endpoint.resolve(url, api_key), retry or RetryPolicy(),
                             wait_timeout_s, poll_s)
        self._http = httpx.Client(**http_args(self.config.endpoint, timeout, transport))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- invocations ---------------------------------------------------------------------

    def invoke(self, profile: str, code: str | None = None, *, wait: float | None = None,
               progress: Progress | None = None, **options: Unpack[InvokeOptions]
               ) -> Invocation:
        """Run and answer the ended invocation (following a 202 for at most ``wait``
        seconds, default ``wait_timeout_s``; then WaitTimeout)."""
        return self._run(operations.invoke(self.config, profile, code, options, wait,
                                           progress))

    def submit(self, profile: str, code: str | None = None,
               **options: Unpack[InvokeOptions]) -> AcceptedInvocation:
        """Run in async mode: answers once the gateway has stored the request."""
        return self._run(operations.submit(self.config, profile, code, options))

    def wait(self, invocation_id: str, timeout_s: float | None = None, *,
             progress: Progress | None = None) -> Invocation:
        return self._run(operations.wait(self.config, invocation_id, timeout_s, progress))

    def get(self, invocation_id: str) -> Invocation:
        return self._run(operations.get(self.config, invocation_id))

    def list(self, status: Status | str | None = None, profile: str | None = None, *,
             limit: int = 1000, page_size: int = 50) -> Iterator[InvocationSummary]:
        """This tenant's invocations, newest first, across pages, at most ``limit``."""
        return self._iterate(operations.list_invocations(self.config, status, profile,
                                                         limit, page_size))

    def logs(self, invocation_id: str) -> InvocationLogs:
        return self._run(operations.logs(self.config, invocation_id))

    def follow_logs(self, invocation_id: str, *, reconnects: int = 5
                    ) -> Iterator[LogChunk | LogEnd]:
        """Output as it is written (LogChunk), then one LogEnd when the invocation ends."""
        return self._iterate(logstream.follow_logs(self.config, invocation_id, reconnects))

    def cancel(self, invocation_id: str) -> Invocation:
        return self._run(operations.cancel(self.config, invocation_id))

    # -- artifacts and catalogue ---------------------------------------------------------

    def artifacts(self, invocation_id: str) -> builtins.list[ArtifactLink]:
        return self._run(operations.artifacts(self.config, invocation_id))

    def download_artifact(self, invocation_id: str, name: str,
                          dest: str | os.PathLike[str]) -> Path:
        """Artifact ``name`` into the file ``dest``."""
        return self._run(downloads.download_one(self.config, invocation_id, name, dest))

    def download_artifacts(self, invocation_id: str, dest_dir: str | os.PathLike[str]
                           ) -> builtins.list[Path]:
        """Every artifact below ``dest_dir``; a name that would land outside it is refused
        (UnsafeArtifactName) before anything is written."""
        return self._run(downloads.download_all(self.config, invocation_id, dest_dir))

    def profiles(self) -> builtins.list[Profile]:
        return self._run(operations.profiles(self.config))

    def usage(self) -> Usage:
        """This tenant's usage in the replica that answers, and its limits."""
        return self._run(operations.usage(self.config))

    def all_usage(self) -> builtins.list[Usage]:
        """Every tenant's usage (an operator tenant's key: JOBGATE_OPERATOR_TENANTS)."""
        return self._run(operations.all_usage(self.config))

    # -- the interpreter -----------------------------------------------------------------

    def _run(self, operation: Operation[T]) -> T:
        stepper = Stepper(operation)
        for _ in self._drive(stepper):
            pass
        return cast(T, stepper.result)

    def _iterate(self, operation: Operation[None]) -> Iterator[Any]:
        yield from self._drive(Stepper(operation))

    def _drive(self, stepper: Stepper[Any]) -> Iterator[Any]:
        stream: httpx.Response | None = None
        chunks: Iterator[bytes] = iter(())
        try:
            while (instruction := stepper.next()) is not None:
                if isinstance(instruction, Emit):
                    yield instruction.item
                    continue
                try:
                    with httpx_errors(self.config.endpoint.url):
                        if isinstance(instruction, Send):
                            response = self._http.send(
                                build(self._http, instruction.request),
                                follow_redirects=instruction.request.follow_redirects)
                            stepper.answer(answer_of(response))
                        elif isinstance(instruction, Open):
                            if stream is not None:
                                stream.close()
                            stream = self._http.send(
                                build(self._http, instruction.request), stream=True,
                                follow_redirects=instruction.request.follow_redirects)
                            failed = stream.status_code >= 400
                            if failed:
                                stream.read()
                            stepper.answer(answer_of(stream, with_body=failed))
                            chunks = stream.iter_bytes()
                        elif isinstance(instruction, Read):
                            stepper.answer(next(chunks, b""))
                        elif isinstance(instruction, Sleep):
                            time.sleep(instruction.seconds)
                except TransportError as e:
                    stepper.fail(e)
        finally:
            if stream is not None:
                stream.close()
            stepper.close()
