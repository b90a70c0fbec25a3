"""The test node agent's image map: which local command stands for which container image.

There is no container runtime, so an image is a name the agent looks up here. File format
(JSON, or YAML when it ends in .yaml/.yml)::

    {
      "images": {
        "jobgate/runtime-python3.11": {          # matches any tag, or none
          "entrypoint": ["/repo/.venv/bin/python", "/repo/runtimes/runner.py"],
          "cmd": ["serve"],                      # the image's default args (optional)
          "env": {"K": "v"},                     # the image's ENV (optional)
          "workingDir": "/some/dir",             # the image's WORKDIR (optional)
          "rewrite": {"/opt/runner.py": "/repo/runtimes/runner.py"}   # argv words
        },
        "example/tool:1.2": ["/usr/bin/tool"]    # shorthand for {"entrypoint": [...]}
      },
      "fail_pull": ["example/private"]           # reported as ErrImagePull, never run
    }

An image not in the map runs the container's own command as-is on the host (so
``busybox`` with ``sh -c 'echo hi'`` runs the host's sh). An image whose name contains
``unpullable`` always fails to pull. Command and args combine as Kubernetes combines them
with an image's ENTRYPOINT and CMD. The agent re-reads the file for every pod, so a test
may add entries while the cluster runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from tests.cluster.binaries import REPO_ROOT

UNPULLABLE_MARK = "unpullable"
# Runtime images the gateway names; any runtimes/<name>/Dockerfile adds one more.
KNOWN_RUNTIMES = ("python3.11", "bash", "node20")


@dataclass(frozen=True)
class ImageEntry:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    rewrite: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    argv: list[str]
    env: dict[str, str]
    working_dir: str | None


class NoCommand(ValueError):
    """Neither the container nor the image map gives a command to run."""


def image_names(image: str) -> list[str]:
    """Names to look the image up by, most specific first: as given, then without tag."""
    names = [image]
    ref = image.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    untagged = ref[:colon] if colon > slash else ref
    for name in (ref, untagged):
        for prefix in ("docker.io/library/", "docker.io/", "library/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name not in names:
            names.append(name)
    if untagged not in names:
        names.append(untagged)
    return names


class ImageMap:
    def __init__(self, images: dict[str, ImageEntry], fail_pull: set[str]) -> None:
        self.images = images
        self.fail_pull = fail_pull

    @classmethod
    def load(cls, path: Path | None) -> ImageMap:
        if path is None:
            return cls({}, set())
        raw = load_doc(path)
        images = {name: _entry(value) for name, value in (raw.get("images") or {}).items()}
        return cls(images, set(raw.get("fail_pull") or []))

    def lookup(self, image: str) -> ImageEntry | None:
        for name in image_names(image):
            if name in self.images:
                return self.images[name]
        return None

    def pull_fails(self, image: str) -> bool:
        if UNPULLABLE_MARK in image:
            return True
        return any(name in self.fail_pull for name in image_names(image))

    def resolve(
        self, image: str, command: list[str], args: list[str],
        pod_word: Callable[[str], str] = str,
    ) -> Resolved:
        """The argv, image env and working dir for a container, Kubernetes-style.

        pod_word transforms the words the pod gave ($(VAR) expansion, mount paths); the
        image map's own words are local paths already and stay as they are.
        """
        entry = self.lookup(image) or ImageEntry()
        # Kubernetes: command replaces ENTRYPOINT (and drops CMD); args replace CMD.
        if command:
            argv = [pod_word(w) for w in command + args]
        else:
            argv = list(entry.entrypoint) + ([pod_word(w) for w in args] or list(entry.cmd))
        if not argv:
            raise NoCommand(
                f"image {image!r} is not in the test image map and the container has no command"
            )
        argv = [entry.rewrite.get(word, word) for word in argv]
        return Resolved(argv, dict(entry.env), entry.working_dir)

    def image_env(self, image: str) -> dict[str, str]:
        entry = self.lookup(image)
        return dict(entry.env) if entry else {}


def _entry(value: Any) -> ImageEntry:
    if isinstance(value, list):
        return ImageEntry(entrypoint=tuple(str(v) for v in value))
    if not isinstance(value, dict):
        raise ValueError(f"image map entry must be a list or an object, not {value!r}")
    return ImageEntry(
        entrypoint=tuple(str(v) for v in value.get("entrypoint") or ()),
        cmd=tuple(str(v) for v in value.get("cmd") or ()),
        env={str(k): str(v) for k, v in (value.get("env") or {}).items()},
        working_dir=value.get("workingDir"),
        rewrite={str(k): str(v) for k, v in (value.get("rewrite") or {}).items()},
    )


def default_map() -> dict[str, Any]:
    """Every jobgate runtime image runs the repository's runner with the venv's Python."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = str(venv_python if venv_python.exists() else Path(sys.executable))
    runner = str(REPO_ROOT / "runtimes" / "runner.py")
    runtimes = set(KNOWN_RUNTIMES)
    runtimes.update(p.parent.name for p in (REPO_ROOT / "runtimes").glob("*/Dockerfile"))
    images = {
        f"jobgate/runtime-{name}": {"entrypoint": [python, runner], "cmd": ["serve"]}
        for name in sorted(runtimes)
    }
    return {"images": images, "fail_pull": []}


def write_map(path: Path, doc: dict[str, Any]) -> Path:
    """Atomic write, so the agent never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) if path.suffix == ".json" else yaml.safe_dump(doc))
    os.replace(tmp, path)
    return path


def load_doc(path: Path) -> dict[str, Any]:
    """The map file as a document (empty when absent)."""
    if not path.exists():
        return {"images": {}, "fail_pull": []}
    text = path.read_text()
    doc = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    return doc if isinstance(doc, dict) else {}


def add_image(path: Path, image: str, entry: dict[str, Any] | list[str]) -> None:
    """Adds or replaces one entry of a map file (for tests that bring their own image)."""
    doc = load_doc(path)
    doc.setdefault("images", {})[image] = entry
    write_map(path, doc)


def add_fail_pull(path: Path, image: str) -> None:
    doc = load_doc(path)
    fail_pull = doc.setdefault("fail_pull", [])
    if image not in fail_pull:
        fail_pull.append(image)
    write_map(path, doc)
