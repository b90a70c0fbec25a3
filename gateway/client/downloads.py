"""Downloading artifacts to disk. An artifact's name comes from the code that ran, so it
is hostile: a name that is absolute, climbs out with ``..`` or lands outside the target
folder through a link is refused before anything is written. Bytes go to ``NAME.part``
and take the name only once their size and sha256 match what the gateway listed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from gateway.client.errors import IntegrityError, UnsafeArtifactName
from gateway.client.operations import Config, artifacts, invocation_path
from gateway.client.protocol import Operation, Read, Request
from gateway.client.retries import send
from gateway.models import Artifact


def safe_target(dest_dir: str | os.PathLike[str], name: str) -> Path:
    """Where artifact ``name`` goes below ``dest_dir``; UnsafeArtifactName if anywhere else."""
    parts = name.split("/")
    if (not name or "\x00" in name or "\\" in name or PurePosixPath(name).is_absolute()
            or any(part in ("", ".", "..") for part in parts)):
        raise UnsafeArtifactName(f"refusing artifact name {name!r}: not a plain relative path")
    root = Path(dest_dir).resolve()
    target = root.joinpath(*parts).resolve()  # follows links that already exist
    if root not in target.parents:
        raise UnsafeArtifactName(f"refusing artifact name {name!r}: outside {root}")
    return target


def download(config: Config, invocation_id: str, name: str, target: Path,
             expected: Artifact | None) -> Operation[Path]:
    """Stream one artifact to ``target``; verified against ``expected`` (the listing) or
    the gateway's X-Jobgate-Sha256 when it sends one."""
    request = Request("GET", invocation_path(invocation_id, "artifacts", quote(name)),
                      follow_redirects=True, headers={"Accept": "*/*"})
    answer = yield from send(request, config.retry, stream=True)
    sha256 = expected.sha256 if expected else answer.headers.get("x-jobgate-sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest, size = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out:
            while chunk := (yield Read()):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if expected is not None and size != expected.size:
            raise IntegrityError(f"artifact {name!r}: {size} bytes, listed {expected.size}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise IntegrityError(f"artifact {name!r}: sha256 {digest.hexdigest()}, "
                                 f"listed {sha256}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def download_one(config: Config, invocation_id: str, name: str,
                 dest: str | os.PathLike[str]) -> Operation[Path]:
    return (yield from download(config, invocation_id, name, Path(dest), None))


def download_all(config: Config, invocation_id: str, dest_dir: str | os.PathLike[str]
                 ) -> Operation[list[Path]]:
    """Every artifact into ``dest_dir`` under its name; every name is checked before the
    first byte is written."""
    listed = yield from artifacts(config, invocation_id)
    targets = [(artifact, safe_target(dest_dir, artifact.name)) for artifact in listed]
    written: list[Path] = []
    for artifact, target in targets:
        written.append((yield from download(config, invocation_id, artifact.name, target,
                                            artifact)))
    return written
