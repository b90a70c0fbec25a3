"""Test support: the gateway as a real uvicorn subprocess on a free loopback port, and a
callback receiver. Everything binds 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY_A = "jg_test_key_tenant_a_0123456789"
KEY_B = "jg_test_key_tenant_b_0123456789"


def key_entry(tenant: str, key: str) -> str:
    import hashlib

    return f"{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


@dataclass
class GatewayProcess:
    """``jobgate serve`` in a subprocess, configured only through JOBGATE_* variables."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> GatewayProcess:
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env.update({"JOBGATE_HOST": "127.0.0.1", "JOBGATE_PORT": str(self.port),
                    "JOBGATE_DATA_DIR": str(self.data_dir),
                    "JOBGATE_CALLBACK_ALLOW": "127.0.0.0/8",
                    "JOBGATE_CALLBACK_BACKOFF_BASE_S": "0.2",
                    "JOBGATE_API_KEYS": ",".join([key_entry("tenant-a", KEY_A),
                                                  key_entry("tenant-b", KEY_B)])})
        env.update(self.env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"gateway-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "serve"], cwd=ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-4000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not become ready:\n" + self.log_path.read_text()[-4000:])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def client(self, key: str | None = KEY_A, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


@dataclass
class ReceivedCallback:
    headers: dict[str, str]
    body: bytes
    # When it arrived (time.monotonic()): gaps between attempts are measured with it.
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver:
    """A webhook receiver on 127.0.0.1: records every delivery; ``statuses`` scripts the
    answers (e.g. [500, 200] fails the first attempt; (503, {"Retry-After": "2"}) answers
    with headers too)."""

    def __init__(self) -> None:
        self.received: list[ReceivedCallback] = []
        self.statuses: list[int | tuple[int, dict[str, str]]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server names it so
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._cond:
                    receiver.received.append(ReceivedCallback(
                        {k.lower(): v for k, v in self.headers.items()}, body))
                    answer = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver._cond.notify_all()
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> CallbackReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate: Callable[[list[ReceivedCallback]], bool],
                 timeout_s: float = 30.0) -> list[ReceivedCallback]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.received):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"callbacks not received in time: {self.received}")
                self._cond.wait(remaining)
            return list(self.received)


def wait_until(fn: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.1,
               message: str = "condition") -> Any:
    """Poll ``fn`` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout_s}s")
        time.sleep(interval_s)


def invoke(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/invocations", json=body)


@contextlib.contextmanager
def running_gateway(tmp: Path, **env: str) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp / "data", env=dict(env)).start()
    try:
        yield gw
    finally:
        gw.stop()


def code_pid(invocation_id: str) -> int | None:
    """The host pid of an invocation's code: the process whose environment carries its id
    (the runner sets JOBGATE_INVOCATION_ID for the code alone)."""
    needle = f"JOBGATE_INVOCATION_ID={invocation_id}\0".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env + b"\0":
            return int(pid)
    return None


def ancestors(pid: int) -> list[int]:
    """pid, its parent, its parent's parent, ... up to pid 1 (host view)."""
    chain = [pid]
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain

