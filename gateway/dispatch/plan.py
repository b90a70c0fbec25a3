"""From a validated request to a plan: the files to write, the command, the limits.
Every limit a client controls is checked here against the profile and the settings, and
refused with a clear 413 or 422 before anything is stored or run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from gateway.config.profiles import Profile
from gateway.config.settings import MiB, Settings
from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.models import (
    ArtifactLimits,
    ArtifactListing,
    Assignment,
    InvocationCreate,
    Reason,
    RunLimits,
)
from gateway.paths import path_problem

RESERVED_FILES = {"input.json", "result.json"}
MAX_NAME_LENGTH = 255
# Like Lambda's async invocations: the first run and two retries. Sync callers wait for
# their answer, so theirs is one attempt unless they ask for more.
DEFAULT_ASYNC_ATTEMPTS = 3


@dataclass(frozen=True)
class Plan:
    profile: Profile
    files: dict[str, str]
    entrypoint: str
    argv: list[str]
    timeout_s: float
    memory_mb: int
    cpu: float
    ttl_s: int
    sync_wait_s: float
    max_attempts: int


def check_file_name(name: str) -> str:
    """A file name must stay inside the workspace: relative, no '..', no NUL."""
    problem = path_problem(name)
    # A client's file names are also refused what would be a path on Windows, so a name
    # means the same wherever the files are written out (the CLI writes artifacts too).
    if problem is None and len(name) > 1 and name[1] == ":":
        problem = "is an absolute path"
    elif problem is None and "\\" in name:
        problem = "contains a backslash"
    elif problem is None and len(name) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    elif problem is None and name in RESERVED_FILES:
        problem = "is reserved (jobgate writes input.json; the code writes result.json)"
    if problem:
        raise InvalidInput(f"file name {name!r} {problem}", {"file": name})
    return name


def make_plan(req: InvocationCreate, profile: Profile, settings: Settings) -> Plan:
    files = _files(req, profile, settings)
    entrypoint = req.entrypoint or (next(iter(files)) if req.code is None and len(files) == 1
                                    else profile.default_entrypoint)
    check_file_name(entrypoint)
    if entrypoint not in files:
        raise InvalidInput(f"entrypoint {entrypoint!r} is not among the files",
                           {"entrypoint": entrypoint, "files": sorted(files)[:20]})
    if len(req.args) > settings.max_args:
        raise InvalidInput(f"at most {settings.max_args} arguments")
    if len(req.env) > settings.max_env:
        raise InvalidInput(f"at most {settings.max_env} environment variables")
    for name, value in req.env.items():
        if len(value.encode()) > settings.max_env_value_bytes:
            raise PayloadTooLarge(f"environment variable {name!r} is over "
                                  f"{settings.max_env_value_bytes} bytes")
    if req.stdin is not None and len(req.stdin.encode()) > settings.max_stdin_bytes:
        raise PayloadTooLarge(f"stdin is over {settings.max_stdin_bytes} bytes")
    if req.input is not None and len(orjson.dumps(req.input)) > settings.max_input_bytes:
        raise PayloadTooLarge(f"input is over {settings.max_input_bytes} bytes")

    timeout_s = req.timeout_s or profile.default_timeout_s
    if timeout_s > profile.max_timeout_s:
        raise InvalidInput(
            f"timeout_s {timeout_s:g} is above the maximum of profile {profile.name!r} "
            f"({profile.max_timeout_s:g})", {"max_timeout_s": profile.max_timeout_s})
    memory_mb, cpu = profile.default_memory_mb, profile.default_cpu
    if req.resources is not None:
        try:
            memory_mb = req.resources.memory_mb() or memory_mb
            cpu = req.resources.cpu_cores() or cpu
        except ValueError as e:
            raise InvalidInput(str(e)) from None
    if memory_mb > profile.max_memory_mb:
        raise InvalidInput(
            f"memory {memory_mb} MiB is above the maximum of profile {profile.name!r} "
            f"({profile.max_memory_mb} MiB)", {"max_memory_mb": profile.max_memory_mb})
    if cpu > profile.max_cpu:
        raise InvalidInput(
            f"cpu {cpu:g} is above the maximum of profile {profile.name!r} "
            f"({profile.max_cpu:g})", {"max_cpu": profile.max_cpu})
    ttl_s = req.ttl_s or settings.default_ttl_s
    if ttl_s > settings.max_ttl_s:
        raise InvalidInput(f"ttl_s {ttl_s} is above the maximum of {settings.max_ttl_s}")
    if req.wait_s is not None and req.mode == "async":
        raise InvalidInput("wait_s applies to sync invocations only")
    sync_wait = min(req.wait_s or settings.sync_wait_s, settings.sync_wait_s)
    if req.max_attempts is not None and req.max_attempts > settings.max_attempts:
        raise InvalidInput(f"max_attempts {req.max_attempts} is above the maximum of "
                           f"{settings.max_attempts}", {"max_attempts": settings.max_attempts})
    max_attempts = req.max_attempts or min(
        DEFAULT_ASYNC_ATTEMPTS if req.mode == "async" else 1, settings.max_attempts)
    return Plan(profile=profile, files=files, entrypoint=entrypoint,
                argv=profile.argv(entrypoint, list(req.args)), timeout_s=timeout_s,
                memory_mb=memory_mb, cpu=cpu, ttl_s=ttl_s, sync_wait_s=sync_wait,
                max_attempts=max_attempts)


def _files(req: InvocationCreate, profile: Profile, settings: Settings) -> dict[str, str]:
    if (req.code is None) == (req.files is None):
        raise InvalidInput("give exactly one of 'code' (inline source) or 'files'")
    if req.code is not None:
        name = check_file_name(req.entrypoint or profile.default_entrypoint)
        files = {name: req.code}
    else:
        files = dict(req.files or {})
        if not files:
            raise InvalidInput("'files' is empty")
        if len(files) > settings.max_files:
            raise PayloadTooLarge(f"{len(files)} files; at most {settings.max_files}",
                                  {"max_files": settings.max_files})
        for name in files:
            check_file_name(name)
    total = 0
    for name, text in files.items():
        size = len(text.encode())
        if req.files is not None and size > settings.max_file_bytes:
            raise PayloadTooLarge(f"file {name!r} is {size} bytes; at most "
                                  f"{settings.max_file_bytes}", {"file": name})
        total += size
    if total > settings.max_code_bytes:
        raise PayloadTooLarge(f"the code is {total} bytes; at most {settings.max_code_bytes}",
                              {"max_code_bytes": settings.max_code_bytes})
    return files


def make_assignment(plan: Plan, req: InvocationCreate, invocation_id: str,
                    settings: Settings, attempt: int = 1) -> Assignment:
    return Assignment(
        invocation_id=invocation_id,
        attempt=attempt,
        files=plan.files,
        argv=plan.argv,
        inprocess=plan.profile.inprocess,
        stdin=req.stdin,
        input=req.input,
        env=dict(req.env),
        timeout_s=plan.timeout_s,
        limits=RunLimits(
            memory_bytes=plan.memory_mb * MiB,
            memory_mode=plan.profile.memory_mode,
            # CPU seconds: the wall-clock timeout at the granted cores, plus a second;
            # the wall clock stops a sleeping program, this stops a spinning one early.
            cpu_seconds=math.ceil(plan.timeout_s * plan.cpu) + 1,
            cpu_millis=round(plan.cpu * 1000),
            nofile=plan.profile.max_open_files,
            nproc=plan.profile.max_processes,
            fsize_bytes=settings.output_hard_limit_bytes,
        ),
        output_cap_bytes=settings.output_cap_bytes,
        result_cap_bytes=settings.result_cap_bytes,
        artifacts=ArtifactLimits(
            max_count=settings.artifact_max_count,
            max_file_bytes=settings.artifact_max_bytes,
            max_total_bytes=settings.artifact_max_total_bytes,
        ),
    )


def describe(reason: Reason | None, exit_code: int | None, signal_num: int | None,
             plan_timeout: float) -> str | None:
    messages: dict[Reason, str] = {
        Reason.Timeout: f"the code ran past its timeout of {plan_timeout:g}s and was killed",
        Reason.MemoryLimit: "the code ran out of its memory limit",
        Reason.OutputLimit: "the code wrote more output than allowed and was stopped",
        Reason.DiskLimit: "the code failed with its workspace full (the profile's "
                          "workspace_mb)",
        Reason.Cancelled: "the invocation was cancelled",
        Reason.WorkerLost: "the worker went away before it reported",
        Reason.StartFailed: "the code could not be started",
    }
    if reason == Reason.NonZeroExit:
        if signal_num:
            return f"the code was killed by signal {signal_num}"
        return f"the code exited with code {exit_code}"
    return None if reason is None else messages.get(reason)


class ArtifactLimitExceeded(InvalidInput):
    code = "ArtifactLimit"


def check_artifact_listing(listing: ArtifactListing, settings: Settings) -> None:
    """The gateway's own check of what a worker wants to upload (a worker is not trusted
    to have applied the limits it was given)."""
    if len(listing.artifacts) > settings.artifact_max_count:
        raise ArtifactLimitExceeded(
            f"{len(listing.artifacts)} artifacts; at most {settings.artifact_max_count}")
    total = 0
    for artifact in listing.artifacts:
        name = artifact.name
        problem = path_problem(name)
        if problem:
            raise InvalidInput(f"artifact name {name!r} {problem}")
        if artifact.size > settings.artifact_max_bytes:
            raise ArtifactLimitExceeded(
                f"artifact {name!r} is {artifact.size} bytes; at most "
                f"{settings.artifact_max_bytes}")
        total += artifact.size
    if total > settings.artifact_max_total_bytes:
        raise ArtifactLimitExceeded(
            f"artifacts total {total} bytes; at most {settings.artifact_max_total_bytes}")
