"""The API's operations, each written once as a generator of instructions (see
``protocol.py``) that both clients run: build the request, send it (with retries), parse
the answer into the API's own models. Waiting, paging and following a 202 live here too."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeVar
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ValidationError

from gateway.client.errors import UnexpectedAnswer, WaitTimeout
from gateway.client.protocol import Answer, Emit, Endpoint, Operation, Request
from gateway.client.retries import RetryPolicy, send
from gateway.config.profiles import Profile, ProfileList
from gateway.models import (
    AcceptedInvocation,
    ArtifactLink,
    ArtifactList,
    CallbackSpec,
    Invocation,
    InvocationLogs,
    InvocationPage,
    InvocationSummary,
    Resources,
    Status,
    Usage,
    UsageList,
)

M = TypeVar("M", bound=BaseModel)
INV = "/v1/invocations"
Progress = Callable[[Invocation], None]
# A bound on one list(): pages of a filtered listing may be empty (see list_invocations).
MAX_PAGES = 10_000


@dataclass(frozen=True)
class Config:
    """A client's settings (the sync and the async client's alike)."""

    endpoint: Endpoint
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The longest invoke() and wait() wait for an invocation to end.
    wait_timeout_s: float = 900.0
    # One long-poll's ?wait=: at most the gateway's JOBGATE_SYNC_WAIT_S (30 s by default).
    poll_s: float = 10.0


class InvokeOptions(TypedDict, total=False):
    """The optional fields of ``POST /v1/invocations`` (docs/api.md), and its header."""

    files: Mapping[str, str]
    entrypoint: str
    args: Sequence[str]
    stdin: str
    input: Any
    env: Mapping[str, str]
    timeout_s: float
    resources: Resources | Mapping[str, Any]
    # A URL, or {"url", "secret"}.
    callback: CallbackSpec | Mapping[str, Any] | str
    ttl_s: int
    wait_s: float
    max_attempts: int
    # Sent as Idempotency-Key; generated when absent, so that a retry is safe.
    idempotency_key: str


def parse(model: type[M], answer: Answer | str, what: str = "the gateway's answer") -> M:
    """An answer's body (or another JSON text of the gateway's, named by ``what``) as the
    API's model; UnexpectedAnswer when it is not one. Fields this client does not know
    are dropped, not refused: a newer gateway may add fields to an answer (the API's
    models forbid extras, so the OpenAPI document says additionalProperties: false for
    the gateway's side of the contract)."""
    text = answer.body if isinstance(answer, Answer) else answer
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if not all(err["type"] == "extra_forbidden" for err in errors):
            raise UnexpectedAnswer(f"{what} is not a {model.__name__}: {errors[:3]}") \
                from None
    data = orjson.loads(text)
    for err in errors:
        _drop(data, err["loc"])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UnexpectedAnswer(f"{what} is not a {model.__name__}: "
                               f"{e.errors(include_url=False)[:3]}") from None


def _drop(data: Any, loc: tuple[int | str, ...]) -> None:
    """Remove the field at ``loc`` (a validation error's location) from parsed JSON."""
    *path, name = loc
    for step in path:
        if isinstance(data, dict):
            data = data.get(step)
        elif isinstance(data, list) and isinstance(step, int) and 0 <= step < len(data):
            data = data[step]
        else:
            return
    if isinstance(data, dict):
        data.pop(name, None)


def invocation_path(invocation_id: str, *rest: str) -> str:
    # One path segment, whatever the id holds.
    return "/".join((INV, quote(invocation_id, safe=""), *rest))


def _jsonable(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value


def creation(profile: str, code: str | None, mode: Literal["sync", "async"],
             options: InvokeOptions) -> Request:
    """The request that creates an invocation. The gateway validates the body (one judge
    of what is valid: its limits and profiles are its own); None fields are left out."""
    fields = dict(options)
    key = str(fields.pop("idempotency_key", None) or f"jgc-{uuid.uuid4().hex}")
    callback = fields.get("callback")
    if isinstance(callback, str):
        fields["callback"] = {"url": callback}
    body = {"profile": profile, "code": code, "mode": mode,
            **{name: _jsonable(value) for name, value in fields.items()}}
    content = orjson.dumps({k: v for k, v in body.items() if v is not None})
    return Request("POST", INV, content=content, retry_safe=True, headers={
        "Content-Type": "application/json", "Idempotency-Key": key})


def get(config: Config, invocation_id: str) -> Operation[Invocation]:
    return parse(Invocation, (yield from send(Request("GET", invocation_path(invocation_id)),
                                              config.retry)))


def follow(config: Config, path: str, invocation_id: str, deadline: float,
           progress: Progress | None) -> Operation[Invocation]:
    """Long-poll ``path`` (``?wait=``) until the invocation ends, or raise WaitTimeout at
    ``deadline`` (time.monotonic)."""
    started = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        wait = round(max(0.0, min(config.poll_s, remaining)), 3)
        answer = yield from send(Request("GET", path, params={"wait": wait}), config.retry)
        invocation = parse(Invocation, answer)
        if invocation.status.terminal:
            return invocation
        if remaining <= 0:
            raise WaitTimeout(invocation_id, time.monotonic() - started)
        if progress is not None:
            progress(invocation)


def wait(config: Config, invocation_id: str, timeout_s: float | None,
         progress: Progress | None) -> Operation[Invocation]:
    deadline = time.monotonic() + (config.wait_timeout_s if timeout_s is None else timeout_s)
    return (yield from follow(config, invocation_path(invocation_id), invocation_id,
                              deadline, progress))


def invoke(config: Config, profile: str, code: str | None, options: InvokeOptions,
           timeout_s: float | None, progress: Progress | None) -> Operation[Invocation]:
    """A sync invocation; when it outlives the gateway's sync wait (202), its Location is
    followed until it ends, at most ``timeout_s`` (or the client's wait) from the start."""
    deadline = time.monotonic() + (config.wait_timeout_s if timeout_s is None else timeout_s)
    answer = yield from send(creation(profile, code, "sync", options), config.retry)
    if answer.status != 202:
        return parse(Invocation, answer)
    accepted = parse(AcceptedInvocation, answer)
    location = answer.headers.get("location", "")
    # A path of this gateway only: the key is never sent anywhere else.
    path = location if location.startswith(INV + "/") else accepted.links.self
    return (yield from follow(config, path, accepted.id, deadline, progress))


def submit(config: Config, profile: str, code: str | None, options: InvokeOptions
           ) -> Operation[AcceptedInvocation]:
    answer = yield from send(creation(profile, code, "async", options), config.retry)
    return parse(AcceptedInvocation, answer)


def list_invocations(config: Config, status: Status | str | None, profile: str | None,
                     limit: int, page_size: int) -> Operation[None]:
    """Emit this tenant's invocations, newest first, page after page (next_cursor), at
    most ``limit`` of them. A filtered page may be empty and still have a next_cursor (the
    gateway scans a bounded number of records per page): it is followed, as long as the
    cursor moves, for at most MAX_PAGES pages."""
    cursor: str | None = None
    emitted = 0
    for _ in range(MAX_PAGES):
        if emitted >= limit:
            return
        params: dict[str, str | int] = {"limit": min(page_size, limit - emitted)}
        for name, value in (("status", status), ("profile", profile), ("cursor", cursor)):
            if value:
                params[name] = str(value)
        page = parse(InvocationPage, (yield from send(Request("GET", INV, params=params),
                                                      config.retry)))
        for item in page.items:
            yield Emit[InvocationSummary](item)
            emitted += 1
        if page.next_cursor is None or page.next_cursor == cursor:
            return
        cursor = page.next_cursor


def logs(config: Config, invocation_id: str) -> Operation[InvocationLogs]:
    answer = yield from send(Request("GET", invocation_path(invocation_id, "logs")),
                             config.retry)
    return parse(InvocationLogs, answer)


def cancel(config: Config, invocation_id: str) -> Operation[Invocation]:
    # Not repeated: after a lost answer a second cancel would say AlreadyFinished.
    request = Request("POST", invocation_path(invocation_id, "cancel"), retry_safe=False)
    return parse(Invocation, (yield from send(request, config.retry)))


def artifacts(config: Config, invocation_id: str) -> Operation[list[ArtifactLink]]:
    answer = yield from send(Request("GET", invocation_path(invocation_id, "artifacts")),
                             config.retry)
    return parse(ArtifactList, answer).items


def profiles(config: Config) -> Operation[list[Profile]]:
    answer = yield from send(Request("GET", "/v1/profiles"), config.retry)
    return parse(ProfileList, answer).items


def usage(config: Config) -> Operation[Usage]:
    return parse(Usage, (yield from send(Request("GET", "/v1/usage"), config.retry)))


def all_usage(config: Config) -> Operation[list[Usage]]:
    answer = yield from send(Request("GET", "/v1/admin/usage"), config.retry)
    return parse(UsageList, answer).items
