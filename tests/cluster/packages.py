"""The Debian packages the test node needs, installed with apt-get when missing (test
infrastructure; CI starts from a machine with none of them).

runc runs the containers; containernetworking-plugins gives the bridge, host-local and
loopback CNI plugins; iptables, ipset and conntrack serve kube-proxy and kube-router;
mmdebstrap and buildah build the images.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

PACKAGES = ("runc", "containernetworking-plugins", "iptables", "ipset", "conntrack",
            "mmdebstrap", "buildah")
APT_TIMEOUT_S = 15 * 60


class PackagesError(RuntimeError):
    pass


def missing_packages() -> list[str]:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n",
                           *PACKAGES], capture_output=True, text=True, check=False)
    installed = {line.split()[0] for line in proc.stdout.splitlines()
                 if len(line.split()) > 1 and line.split()[1].startswith("ii")}
    return [p for p in PACKAGES if p not in installed]


def ensure_node_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise PackagesError(f"the test node needs {', '.join(missing)}: "
                            f"sudo apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = Path("/run/jobgate-apt.lock")
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        missing = missing_packages()
        if not missing:
            return
        install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        proc = subprocess.run(install, capture_output=True, text=True, env=env,
                              timeout=APT_TIMEOUT_S, check=False)
        if proc.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update"], capture_output=True, env=env,
                           timeout=APT_TIMEOUT_S, check=False)
            proc = subprocess.run(install, capture_output=True, text=True, env=env,
                                  timeout=APT_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise PackagesError(f"apt-get install {' '.join(missing)} failed:\n{tail}")
