"""The API request: what a client asks to run."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

# Environment names a client may set; reserved prefixes stay jobgate's.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV_PREFIXES = ("JOBGATE_",)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|K|M|G|m)?$")


# ---------------------------------------------------------------------------------------
# API request
# ---------------------------------------------------------------------------------------


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float | str | None = Field(
        None, description='CPU cores: 0.5 or "500m". At most the profile maximum.'
    )
    memory: int | str | None = Field(
        None, description='Memory: MiB as an integer, or a quantity such as "512Mi", "1Gi".'
    )

    def cpu_cores(self) -> float | None:
        if self.cpu is None:
            return None
        if isinstance(self.cpu, float | int):
            value = float(self.cpu)
        else:
            m = _QUANTITY.match(self.cpu.strip())
            if not m or m.group(2) not in (None, "m"):
                raise ValueError(f'cpu must be a number of cores or millicores ("500m"), '
                                 f"not {self.cpu!r}")
            value = float(m.group(1)) / (1000 if m.group(2) == "m" else 1)
        if value <= 0:
            raise ValueError("cpu must be positive")
        return value

    def memory_mb(self) -> int | None:
        if self.memory is None:
            return None
        if isinstance(self.memory, int):
            value = float(self.memory)
        else:
            m = _QUANTITY.match(self.memory.strip())
            if not m or m.group(2) == "m":
                raise ValueError(f'memory must be MiB or a quantity like "512Mi", '
                                 f"not {self.memory!r}")
            scale = {None: 1 / (1024 * 1024), "Ki": 1 / 1024, "Mi": 1, "Gi": 1024,
                     "K": 1000 / 1024 / 1024, "M": 1e6 / 1024 / 1024, "G": 1e9 / 1024 / 1024}
            value = float(m.group(1)) * scale[m.group(2)]
        if value < 1:
            raise ValueError("memory must be at least 1 MiB")
        return int(value)


class CallbackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048, description="http(s) URL that receives the result")
    secret: str | None = Field(
        None, min_length=16, max_length=256,
        description="Per-call signing secret: whsec_<base64> (Standard Webhooks; the key "
                    "is the decoded bytes) or any other string (its UTF-8 bytes). The "
                    "server's secret when absent.",
    )


# Exactly one of code and files (checked in dispatch/plan.py; said here for the document).
CODE_OR_FILES: list[JsonValue] = [
    {"required": ["code"], "properties": {"code": {"type": "string"}, "files": {"type": "null"}}},
    {"required": ["files"], "properties": {"files": {"type": "object", "minProperties": 1},
                                           "code": {"type": "null"}}},
]


class InvocationCreate(BaseModel):
    """The body of ``POST /v1/invocations``."""

    model_config = ConfigDict(extra="forbid", str_max_length=16 * 1024 * 1024,
                              json_schema_extra={"oneOf": CODE_OR_FILES})
    profile: str = Field(max_length=64, description="Runtime profile name, see /v1/profiles")
    code: str | None = Field(None, description="Inline source, written to the entrypoint")
    files: dict[str, str] | None = Field(None, description="File name -> text, multi-file")
    entrypoint: str | None = Field(None, max_length=255,
                                   description="File to run; the profile default if absent")
    args: list[str] = Field(default_factory=list)
    stdin: str | None = None
    input: Any = Field(None, description="Any JSON: input.json and $JOBGATE_INPUT")
    env: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "propertyNames": {"pattern": ENV_NAME.pattern,
                          "not": {"pattern": "^[Jj][Oo][Bb][Gg][Aa][Tt][Ee]_"}}})
    timeout_s: float | None = Field(None, gt=0)
    resources: Resources | None = None
    mode: Literal["sync", "async"] = "sync"
    callback: CallbackSpec | None = None
    ttl_s: int | None = Field(None, gt=0)
    wait_s: float | None = Field(
        None, gt=0, description="Sync only: seconds to wait before answering 202"
    )
    max_attempts: int | None = Field(
        None, ge=1, le=10,
        description="How many times it may run when its worker is lost through no fault "
                    "of its code (the gateway crashed, the worker pod was deleted or "
                    "evicted, its node was lost). Default: 3 for async (1 + 2 retries), "
                    "1 for sync; at most the server's JOBGATE_MAX_ATTEMPTS. A run that "
                    "fails by itself (exit code, timeout, limits) is never retried.",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
            if name.upper().startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"environment variable {name!r} uses a reserved prefix")
            if "\x00" in value:
                raise ValueError(f"environment variable {name!r} contains a NUL byte")
        return env

    @field_validator("args")
    @classmethod
    def _args(cls, args: list[str]) -> list[str]:
        if any("\x00" in a for a in args):
            raise ValueError("arguments may not contain NUL bytes")
        return args
