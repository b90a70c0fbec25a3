"""Membership without Kubernetes: a gateway on its own, whatever else shares its store.

Its identity is stable: ``JOBGATE_REPLICA_ID``, or a name generated once and kept in its
data dir (``replica-id``). The data dir is locked while the gateway runs, so two gateways
never run as one identity from the same directory. It sees no other gateway, so it takes
none of their work for lost: several gateways may share one bucket, each recovering only
its own invocations when it restarts. Taking over the work of a machine that died is what
the Kubernetes deployment (Lease membership) is for."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from gateway.config.settings import Settings
from gateway.errors import ConfigError
from gateway.ids import new_token
from gateway.membership.base import Membership

IDENTITY_FILE = "replica-id"


def stored_identity(data_dir: Path) -> str:
    """The identity kept in ``data_dir``, made on first use (O_EXCL: two gateways starting
    at once agree on one)."""
    path = data_dir / IDENTITY_FILE
    with contextlib.suppress(FileNotFoundError):
        if identity := path.read_text().strip():
            return identity
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = f"{os.uname().nodename}-{new_token(6)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip() or identity
    with os.fdopen(fd, "w") as f:
        f.write(identity + "\n")
    return identity


class StandaloneMembership(Membership):
    name = "standalone"

    def __init__(self, settings: Settings):
        self.data_dir = Path(settings.data_dir)
        self.identity = settings.replica_id or stored_identity(self.data_dir)
        self._lock_fd: int | None = None

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / f"{IDENTITY_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another gateway is running with the data dir {self.data_dir}: each "
                "gateway needs its own (JOBGATE_DATA_DIR)") from None
        self._lock_fd = fd

    async def stop(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock goes with it
            self._lock_fd = None

    @property
    def leads(self) -> bool:
        # Its pools are its own and it takes over nobody's work: there is nothing to lead.
        return False

    async def live_replicas(self) -> set[str]:
        return {self.identity}

    async def gone(self, replicas: set[str]) -> set[str]:
        return set()
