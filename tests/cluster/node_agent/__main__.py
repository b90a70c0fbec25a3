"""python -m tests.cluster.node_agent --kubeconfig K --state-dir D [--image-map M] ...

Runs the test node agent until SIGTERM/SIGINT or until its parent (the harness) dies.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

from tests.cluster import kubeconfig
from tests.cluster.kube_client import KubeClient
from tests.cluster.node_agent.agent import NodeAgent
from tests.cluster.node_agent.context import AgentContext, PodIPs

PARENT_POLL_S = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.cluster.node_agent",
                                description="jobgate's test node agent (test infrastructure)")
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True,
                   help="per-pod directories (volumes, logs) live here")
    p.add_argument("--image-map", type=Path, default=None)
    p.add_argument("--node-name", default="jobgate-test-node")
    p.add_argument("--pod-network", type=int, default=None,
                   help="second octet of the pods' 127.N.x.y addresses (default: random)")
    p.add_argument("--kubelet-version", default="v0.0.0")
    p.add_argument("--cpu", default="32")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--pods", default="250")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process is gone (default: the parent)")
    return p.parse_args(argv)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            logging.getLogger("node-agent").warning("parent %d is gone: stopping", parent)
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL_S)


async def main(args: argparse.Namespace) -> None:
    log = logging.getLogger("node-agent")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = args.parent_pid or os.getppid()
    watcher = asyncio.create_task(_watch_parent(parent, stop))

    server = urlparse(kubeconfig.server_of(args.kubeconfig))
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        # Where a real pod finds the API (the "kubernetes" Service); here, directly.
        "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(server.port or 443),
    }
    for name in ("LANG", "LC_ALL"):
        if name in os.environ:
            base_env[name] = os.environ[name]
    args.state_dir.mkdir(parents=True, exist_ok=True)
    async with await KubeClient.from_kubeconfig(args.kubeconfig) as kube:
        ctx = AgentContext(
            kube=kube,
            node_name=args.node_name,
            host_ip="127.0.0.1",
            capacity={"cpu": args.cpu, "memory": args.memory, "pods": args.pods,
                      "ephemeral-storage": "100Gi"},
            state_dir=args.state_dir,
            image_map_path=args.image_map,
            base_env=base_env,
            pod_ips=PodIPs(args.pod_network or random.randint(16, 250)),
            log=log,
        )
        await NodeAgent(ctx, args.kubelet_version).run(stop)
    watcher.cancel()


def _use_pidfd_watcher() -> None:
    """Python 3.11's default child watcher spends a thread per child; pidfds cost none
    (3.12+ uses them by default)."""
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            asyncio.set_child_watcher(watcher)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _use_pidfd_watcher()
    asyncio.run(main(parse_args()))
