"""Sequential latency of ``print(1)`` (or another profile's one-liner) against a running
gateway: client p50/p95/p99, the gateway's own timings, and the rate of one client.

    python -m loadtests.latency --url http://127.0.0.1:8080 --requests 500 [--profile bash]

One client, one request at a time: the latency a caller sees when the gateway is idle,
which is what the overhead targets are stated in. Every answer is checked; a wrong one
stops the run. The full benchmark (``make bench``) measures this and much more.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx

from loadtests.scenarios import Call, print_one, stdout_is
from loadtests.stats import summary

ONE_LINERS = {"bash": ("echo 1", "1\n"), "node20": ("console.log(1)", "1\n")}


def call_for(profile: str) -> Call:
    if profile in ONE_LINERS:
        code, expected = ONE_LINERS[profile]
        return Call(f"sync {profile}", {"profile": profile, "code": code}, stdout_is(expected))
    base = print_one()
    return Call(base.name, {**base.body, "profile": profile}, base.check)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("JOBGATE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--key", default=os.environ.get("JOBGATE_API_KEY"))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", default="python3.11")
    args = parser.parse_args()
    call = call_for(args.profile)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    samples: list[float] = []
    server: dict[str, list[float]] = {}
    warm = 0
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
        for i in range(args.warmup + args.requests):
            t0 = time.perf_counter()
            r = client.post("/v1/invocations", json=call.body)
            elapsed = (time.perf_counter() - t0) * 1000
            body = r.json()
            problem = call.check(r.status_code, body)
            if problem is not None:
                print(f"wrong result: {problem}", file=sys.stderr)
                return 1
            if i >= args.warmup:
                samples.append(elapsed)
                for key, value in (body.get("timings") or {}).items():
                    if value is not None:
                        server.setdefault(key, []).append(value)
                warm += bool(body.get("warm"))
    stats = summary(samples)
    print(f"{call.name}, {len(samples)} sequential requests, warm {warm}/{len(samples)}")
    print(f"client latency ms: p50 {stats['p50_ms']}  p95 {stats['p95_ms']}  "
          f"p99 {stats['p99_ms']}  mean {stats['mean_ms']}")
    for key, values in server.items():
        s = summary(values)
        print(f"server {key:<10} p50 {s['p50_ms']}  p99 {s['p99_ms']}")
    print(f"rate: {len(samples) / (sum(samples) / 1000):.0f} req/s (one client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
