"""Child processes of the test harness: start, watch, stop, and never outlive it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """preexec_fn: the kernel SIGKILLs the child when the harness dies (even by SIGKILL),
    and the child starts with no blocked signals whatever the harness blocks.

    Linux ties PDEATHSIG to the *thread* that forked, so start processes from a
    long-lived thread (the main thread in pytest and in the cluster-up daemon).
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ProcessDied(RuntimeError):
    pass


class ManagedProcess:
    """One component (etcd, kube-apiserver, ...) with its own log file and process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                # Own group: Ctrl-C in a terminal reaches the harness, which stops the
                # components in order, instead of killing etcd under the API server.
                start_new_session=True,
                preexec_fn=_child_setup,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check(self) -> None:
        """Raises ProcessDied (with the log's tail) if the process has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessDied(
                f"{self.name} exited with {self.popen.returncode}; log {self.log_path}:\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds; always reaps."""
        if self.popen is None:
            return
        pgid = self.popen.pid  # leader of its own session, so pgid == pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        # Whatever is left in the group (the leader or its children) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


# Ports for the servers the tests start: below the kernel's ephemeral range (32768-60999
# here) and the Kubernetes NodePort range (30000-32767). A port bind(0) hands out is one
# the kernel also gives outgoing connections, which may take it between the choice and the
# server's own bind (seen: a gateway's "address already in use" in a CI run).
SERVER_PORTS = range(20000, 30000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port of ``host`` free right now, from SERVER_PORTS (a bounded number of tries)."""
    for port in random.sample(SERVER_PORTS, 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port of {host} in {SERVER_PORTS}")


def wait_for(
    what: str,
    ready: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    watch: Sequence[ManagedProcess] = (),
) -> None:
    """Polls `ready` until true; fails early when a watched process dies."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in watch:
            proc.check()
        if ready():
            return
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in watch)
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s{tails}")
        time.sleep(interval)


def https_ok(url: str, context: ssl.SSLContext, timeout: float = 2.0) -> bool:
    """True when GET url answers 200 (used for /readyz and /healthz)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def insecure_context() -> ssl.SSLContext:
    """For the controller manager's and scheduler's self-signed /healthz only."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
