"""Tenant B's latency under tenant A's flood (issue 15, fair share).

    python -m bench.fairness                       # 20 B calls, A floods 1,000 x 0.2 s
    python -m bench.fairness --calls 50 --flood 2000 --slots 8 --run-s 0.1

A gateway (local executor) with JOBGATE_MAX_CONCURRENCY=SLOTS; first B's sync calls alone
(the same code: a sleep of RUN_S), then A submits FLOOD async calls of it through the batch
endpoint, and B's sync calls are timed one after another while A's queue is long. Prints
p50/p99 of both, A's queue while B ran, and what first-come service would have made B
wait (A's queue ahead of it over the rate A's calls were served at)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.services import PYTHON, start_gateway
from loadtests.flood import flood, sleeper, timed_call
from loadtests.stats import percentile
from tests.support import KEY_A, KEY_B


def queued(client: httpx.Client) -> int:
    count: int = client.get("/v1/usage").json()["queued"]
    return count


def measure(calls: int, flood_calls: int, slots: int, run_s: float) -> str:
    work = Path(tempfile.mkdtemp(prefix="jobgate-fairness-"))
    gateway = start_gateway("fairness", work, {
        "JOBGATE_MAX_CONCURRENCY": str(slots),
        "JOBGATE_QUEUE_SIZE": str(2 * flood_calls),
        "JOBGATE_TENANT_LIMITS": json.dumps({"defaults": {"max_queued": flood_calls}}),
        "JOBGATE_SHUTDOWN_GRACE_S": "1"})
    code = sleeper(run_s)
    try:
        with gateway.process.client(KEY_A) as a, gateway.process.client(KEY_B) as b:
            alone = [timed_call(b, PYTHON, code)[0] for _ in range(calls)]
            items = asyncio.run(flood(gateway.url, KEY_A, calls=flood_calls,
                                      profile=PYTHON, code=code))
            refused = sum(1 for i in items if i["status_code"] != 202)
            before, started = queued(a), time.monotonic()
            flooded = []
            for _ in range(calls):
                latency, answer = timed_call(b, PYTHON, code)
                if answer.get("status") != "succeeded":
                    raise RuntimeError(f"B's call did not succeed: {answer}")
                flooded.append(latency)
            after, spent = queued(a), time.monotonic() - started
    finally:
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    served_per_s = (before - after) / spent if spent else 0.0
    first_come = before / served_per_s if served_per_s else float("inf")

    def ms(samples: list[float], p: float) -> str:
        return f"{percentile(samples, p) * 1000:.0f}"

    return "\n".join([
        f"fair share: {calls} sync calls of tenant B (python3.11, time.sleep({run_s})), "
        f"JOBGATE_MAX_CONCURRENCY={slots}",
        f"  B alone:                     p50 {ms(alone, 50)} ms, p99 {ms(alone, 99)} ms",
        f"  B under A's flood of {flood_calls}: p50 {ms(flooded, 50)} ms, "
        f"p99 {ms(flooded, 99)} ms",
        f"  A's queue while B ran: {before} -> {after} ({refused} of A's refused); "
        f"A served at {served_per_s:.1f}/s",
        f"  first come, first served, B's call would have waited ~{first_come:.0f} s",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="B's sync calls timed")
    parser.add_argument("--flood", type=int, default=1000, help="A's async calls")
    parser.add_argument("--slots", type=int, default=4, help="JOBGATE_MAX_CONCURRENCY")
    parser.add_argument("--run-s", type=float, default=0.2, help="each call's sleep")
    args = parser.parse_args()
    print(measure(args.calls, args.flood, args.slots, args.run_s))


if __name__ == "__main__":
    main()
