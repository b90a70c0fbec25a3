"""What the gateway and its idle workers hold in memory, and what it asked of its object
store: read from /proc and from the gateway's /metrics during a run.

A local worker is a runner process forked from its profile's zygote plus, sandboxed, its
init; its own memory is its USS (pages no other process maps) and its share of what it
shares is its PSS. Both are summed over the worker's processes."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

KIB = 1024


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _subtree(pid: int, tree: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def _rollup(pid: int) -> dict[str, int]:
    """smaps_rollup fields in KiB; empty when the process is gone."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            fields[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return fields


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def idle_footprint(gateway_pid: int) -> dict[str, Any]:
    """Memory of the gateway and of each idle warm worker, now (call it while the pool is
    full and nothing runs)."""
    tree = _children()
    zygotes = [p for p in tree.get(gateway_pid, []) if "runner.py zygote" in _cmdline(p)]
    uss, pss = [], []
    for zygote in zygotes:
        for worker in tree.get(zygote, []):
            parts = [_rollup(p) for p in _subtree(worker, tree)]
            parts = [p for p in parts if p]
            if not parts:
                continue
            uss.append(sum(p.get("Private_Clean", 0) + p.get("Private_Dirty", 0)
                           for p in parts) / KIB)
            pss.append(sum(p.get("Pss", 0) for p in parts) / KIB)
    zygote_pss = sum(_rollup(z).get("Pss", 0) for z in zygotes) / KIB
    rss = _status_kib(gateway_pid, "VmRSS")
    return {
        "idle_workers": len(uss),
        "worker_uss_mb": round(statistics.mean(uss), 2) if uss else None,
        "worker_pss_mb": round(statistics.mean(pss), 2) if pss else None,
        "zygotes": len(zygotes), "zygotes_pss_mb": round(zygote_pss, 1),
        "gateway_rss_mb": round(rss / KIB, 1) if rss else None,
    }


def rss_mb(gateway_pid: int) -> float | None:
    rss = _status_kib(gateway_pid, "VmRSS")
    return round(rss / KIB, 1) if rss else None


def peak_rss_mb(gateway_pid: int) -> float | None:
    hwm = _status_kib(gateway_pid, "VmHWM")
    return round(hwm / KIB, 1) if hwm else None


def storage_requests(metrics_text: str) -> dict[str, float]:
    """jobgate_storage_requests by operation (requests to S3 since the gateway started)."""
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("jobgate_storage_requests{"):
            labels, _, value = line.rpartition(" ")
            operation = labels.split('operation="', 1)[1].split('"', 1)[0]
            found[operation] = float(value)
    return found
