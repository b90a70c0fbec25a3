"""Runtime profiles: what a worker runs, its limits and its pool size, from a TOML
catalogue (``runtimes/profiles.toml`` by default, ``JOBGATE_PROFILES`` to replace it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import ProfileNotFound


class PoolSpec(BaseModel):
    # Answered by GET /v1/profiles: every field is in its JSON.
    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_serialization_defaults_required=True)
    min: int = Field(1, ge=0)
    max: int = Field(4, ge=0)
    # Kubernetes: workers idle longer than this are replaced (fresh image, fresh node).
    max_idle_age_s: int = Field(1800, gt=0)


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_serialization_defaults_required=True)
    name: str
    description: str = ""
    image: str
    language: str
    command: list[str] = Field(min_length=1)
    default_entrypoint: str
    # The gateway's own check that the runtime is installed here: not shown to clients.
    requires: str | None = Field(None, exclude=True)
    inprocess: bool = False
    memory_mode: Literal["as", "data", "none"] = "as"
    default_timeout_s: float = Field(30, gt=0)
    max_timeout_s: float = Field(900, gt=0)
    default_memory_mb: int = Field(256, gt=0)
    max_memory_mb: int = Field(2048, gt=0)
    default_cpu: float = Field(1.0, gt=0)
    max_cpu: float = Field(2.0, gt=0)
    # What a Kubernetes worker pod requests of its node (the scheduler's and the kubelet's
    # accounting); unset: default_cpu and default_memory_mb. Limits are max_cpu and
    # max_memory_mb either way.
    request_cpu: float | None = Field(None, gt=0)
    request_memory_mb: int | None = Field(None, gt=0)
    max_processes: int = Field(64, gt=0)
    max_open_files: int = Field(256, gt=0)
    workspace_mb: int = Field(512, gt=0)
    network: bool = False
    pool: PoolSpec = PoolSpec()

    def argv(self, entrypoint: str, args: list[str]) -> list[str]:
        return [part.replace("{entrypoint}", entrypoint) for part in self.command] + args


class ProfileList(BaseModel):
    """The answer of ``GET /v1/profiles``."""

    model_config = ConfigDict(extra="forbid")
    items: list[Profile]


class ProfileCatalog:
    def __init__(self, profiles: dict[str, Profile]):
        self._profiles = dict(sorted(profiles.items()))

    def get(self, name: str) -> Profile:
        try:
            return self._profiles[name]
        except KeyError:
            known = list(self._profiles)
            raise ProfileNotFound(
                f"unknown profile {name!r}; known profiles: {', '.join(known)}",
                {"profile": name, "known": known},
            ) from None

    def all(self) -> list[Profile]:
        return list(self._profiles.values())

    def names(self) -> list[str]:
        return list(self._profiles)


def interpreter_path(command: str) -> str | None:
    """Find a runtime on PATH, skipping this gateway's own virtualenv: user code must run
    on the machine's interpreter, not next to the gateway's dependencies."""
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    if sys.prefix != sys.base_prefix:
        venv_bin = str(Path(sys.prefix) / "bin")
        path = [p for p in path if os.path.abspath(p) != venv_bin]
    return shutil.which(command, path=os.pathsep.join(path))


def _runs(command: str) -> bool:
    """Installed and working: a version-manager shim for a missing version is on PATH but
    fails when run. (Called once at start, before the event loop serves.)"""
    path = interpreter_path(command)
    if path is None:
        return False
    try:
        return subprocess.run([path, "--version"], capture_output=True, timeout=10,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def load_profiles(path: Path | None, *, check_installed: bool = True) -> ProfileCatalog:
    """Load the catalogue. With ``check_installed``, profiles whose ``requires`` is not on
    this machine are left out (the local executor cannot run them)."""
    if path is None:
        text = resources.files("runtimes").joinpath("profiles.toml").read_text()
        source = "runtimes/profiles.toml"
    else:
        text = Path(path).read_text()
        source = str(path)
    try:
        raw = tomllib.loads(text).get("profiles", {})
        profiles = {name: Profile(name=name, **spec) for name, spec in raw.items()}
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as e:
        raise ValueError(f"invalid profile catalogue {source}: {e}") from e
    if check_installed:
        profiles = {name: p for name, p in profiles.items()
                    if p.requires is None or _runs(p.requires)}
    if not profiles:
        raise ValueError(f"no usable profile in {source}")
    return ProfileCatalog(profiles)
