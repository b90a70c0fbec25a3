"""`make cluster-up` / `make cluster-down`: the test control plane as a background process.

    python -m tests.cluster up   [--dir .jobgate/cluster]  # start, wait until ready
    python -m tests.cluster down [--dir .jobgate/cluster]  # stop, clean up
    python -m tests.cluster status
    python -m tests.cluster images                        # build (or reuse) every image

`up` installs the node's packages, builds the binaries and the images (in the foreground),
then starts `serve` detached (its own session, output in <dir>/cluster.log). `serve` runs
the control plane and the real node in its main thread (its children die with it), writes
<dir>/kubeconfig and <dir>/env, and stops everything on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster.binaries import REPO_ROOT, find_bin_dir
from tests.cluster.control_plane import TestControlPlane
from tests.cluster.images import build_all
from tests.cluster.packages import ensure_node_packages

DEFAULT_DIR = REPO_ROOT / ".jobgate" / "cluster"
UP_TIMEOUT_S = 240.0
DOWN_TIMEOUT_S = 45.0


class Stop(BaseException):
    """Raised in serve's main thread by SIGTERM/SIGINT (BaseException: nothing swallows it)."""


def _on_stop_signal(_signum: int, _frame: object) -> None:
    # One stop is enough: a second signal must not interrupt the orderly stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stop


def _alive(pid: int) -> bool:
    """Running and not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


class Files:
    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.pid = self.dir / "pid"
        self.ready = self.dir / "ready.json"
        self.kubeconfig = self.dir / "kubeconfig"
        self.env = self.dir / "env"
        self.log = self.dir / "cluster.log"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def clear(self) -> None:
        for path in (self.pid, self.ready, self.kubeconfig, self.env):
            path.unlink(missing_ok=True)


def serve(files: Files) -> int:
    files.dir.mkdir(parents=True, exist_ok=True)
    files.pid.write_text(str(os.getpid()))
    # A stop during start-up interrupts TestControlPlane.start, which then stops what it
    # started; afterwards it interrupts the pause below.
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    try:
        plane = TestControlPlane.start(find_bin_dir(build=True), images=build_all())
    except Stop:
        files.clear()
        return 0
    try:
        files.kubeconfig.write_bytes(plane.kubeconfig.read_bytes())
        files.kubeconfig.chmod(0o600)
        files.env.write_text(
            "# Written by `make cluster-up`: `. .jobgate/cluster/env` to use the test cluster.\n"
            f"export KUBECONFIG={shlex.quote(str(files.kubeconfig))}\n"
            f"export PATH={shlex.quote(str(plane.bin_dir))}:\"$PATH\"\n"
        )
        files.ready.write_text(json.dumps({
            "server": plane.server, "pid": os.getpid(), "work_dir": str(plane.work_dir),
            "started_in_s": round(plane.started_in_s, 2),
        }))
        print(f"test control plane ready in {plane.started_in_s:.1f}s at {plane.server}",
              flush=True)
        while True:  # bounded by the stop signal; pause() wakes only on signals
            signal.pause()
    except Stop:
        print("stopping", flush=True)
    finally:
        plane.stop()
        files.clear()
    return 0


def up(files: Files) -> int:
    pid = files.running_pid()
    if pid is not None:
        print(f"test control plane already running (pid {pid}); . {files.env}")
        return 0
    files.dir.mkdir(parents=True, exist_ok=True)
    files.clear()
    # Cold builds happen here, in the foreground, not in serve (build_all is then a no-op).
    ensure_node_packages()
    find_bin_dir(build=True)
    build_all()
    with files.log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster", "serve", "--dir", str(files.dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO_ROOT, start_new_session=True,
        )
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not files.ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            tail = "\n".join(files.log.read_text(errors="replace").splitlines()[-30:])
            print(f"test control plane did not start; {files.log}:\n{tail}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    ready = json.loads(files.ready.read_text())
    print(f"test control plane up in {ready['started_in_s']}s at {ready['server']} "
          f"(pid {proc.pid})\n  . {files.env}   # KUBECONFIG and kubectl on PATH")
    return 0


def down(files: Files) -> int:
    pid = files.running_pid()
    if pid is None:
        print("test control plane not running")
        files.clear()
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while files.running_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if files.running_pid() is not None:
        # Its components have PDEATHSIG set: they go with it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    files.clear()
    print("test control plane stopped")
    return 0


def status(files: Files) -> int:
    pid = files.running_pid()
    if pid is None or not files.ready.exists():
        print("test control plane not running")
        return 1
    print(f"test control plane running: {files.ready.read_text()}")
    return 0


def images(_files: Files) -> int:
    ensure_node_packages()
    for tag, archive in build_all().items():
        print(f"{tag}\t{archive}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster",
                                     description="jobgate's test Kubernetes control plane")
    parser.add_argument("command", choices=("up", "down", "serve", "status", "images"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    files = Files(args.dir)
    commands = {"up": up, "down": down, "serve": serve, "status": status, "images": images}
    return commands[args.command](files)
