"""One container run: a shim process (shim.py) supervising the container's process tree.

The shim leads its own session, so the container's processes share its process group and
the agent signals them all with one killpg. Output goes to the container's log file, which
the kubelet port serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

SHIM = Path(__file__).with_name("shim.py")
# After SIGUSR1 the shim kills its subtree at once; this bounds waiting for it to report.
SHIM_KILL_WAIT_S = 3.0


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    status_path: Path
    memory_limit_bytes: int


@dataclass(frozen=True)
class ExitRecord:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    message: str = ""

    def as_terminated(self, container_id: str) -> dict[str, object]:
        state: dict[str, object] = {
            "exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
            "finishedAt": self.finished_at, "containerID": container_id,
        }
        if self.message:
            state["message"] = self.message
        return state


class ContainerRun:
    def __init__(self, spec: LaunchSpec, proc: asyncio.subprocess.Process, started: str) -> None:
        self.spec = spec
        self.proc = proc
        self.started_at = started
        self.pgid = proc.pid  # the shim leads its own session

    @classmethod
    async def launch(cls, spec: LaunchSpec) -> ContainerRun:
        spec_path = spec.status_path.with_suffix(".spec.json")
        spec.status_path.unlink(missing_ok=True)
        spec_path.write_text(json.dumps({
            "argv": spec.argv, "env": spec.env, "cwd": str(spec.cwd),
            "status_path": str(spec.status_path), "agent_pid": os.getpid(),
            "memory_limit_bytes": spec.memory_limit_bytes,
        }))
        spec_path.chmod(0o600)  # it holds the container's env, secrets included
        with spec.log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", str(SHIM), str(spec_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        return cls(spec, proc, now())

    async def wait(self) -> ExitRecord:
        """Waits for the container to end and returns how it ended."""
        code = await self.proc.wait()
        try:
            record = json.loads(self.spec.status_path.read_text())
        except (OSError, ValueError):
            # The shim itself was killed: its tree went with it or will at its next wake.
            exit_code = 128 - code if code < 0 else code
            return ExitRecord(exit_code, "Error", self.started_at, now(),
                              "test node agent: container shim ended without an exit record")
        return ExitRecord(
            int(record["exitCode"]), str(record["reason"]), str(record["startedAt"]),
            str(record["finishedAt"]), str(record.get("message", "")),
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    async def terminate(self, grace: float) -> None:
        """Kubelet-style stop: SIGTERM to the group, then kill everything after `grace`."""
        if self.proc.returncode is not None:
            return
        if grace > 0:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)
                return
        await self.kill()

    async def kill(self) -> None:
        """SIGUSR1 asks the shim to SIGKILL its whole subtree (sessions it cannot see by
        group included); a SIGKILL to the group is the last resort."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), SHIM_KILL_WAIT_S)
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), SHIM_KILL_WAIT_S)
