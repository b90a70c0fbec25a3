"""The local executor (the embedded default): workers are runner processes on this machine.

Per profile, one *zygote* (``runtimes/runner.py zygote``) runs on the profile's own
interpreter for Python profiles (with the common standard library already imported) or on
the machine's python3 for the others. The warm pool asks it to fork workers ahead of
need; a worker serves exactly one invocation.

Each worker is a sandbox (``runtimes/sandbox.py``): a read-only root of bind mounts with
no host paths, a size-limited scratch tmpfs for /workspace, /tmp, /var/tmp and /dev/shm,
pid/mount/ipc/uts/cgroup namespaces, a cgroup per invocation (memory, pids, CPU), a
seccomp filter, a uid of its own, an empty network namespace for profiles without
network, rlimits and a scrubbed environment. Whatever of that the machine cannot give
(not root, no cgroup controllers) is named in one warning at start; docs/security.md says
what the boundary holds.

A runner that took an assignment outlives its zygote and its gateway (so a report stored
by the worker itself is not lost with them). Every runner is listed in the data dir
(``runners/{pid}``) while it lives, and a gateway that starts again on that data dir first
ends whatever its previous run left running: only then may those invocations run again.
"""

from gateway.executors.local.executor import LocalExecutor
from gateway.executors.local.processes import process_start_time

__all__ = ["LocalExecutor", "process_start_time"]
