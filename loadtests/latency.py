"""Sequential latency of one call shape against a running gateway: p50/p95/p99 and rate.

    python -m loadtests.latency --url http://127.0.0.1:8080 --requests 500 [--profile bash]

One client, one request at a time: this is the latency a caller sees when the gateway is
idle, which is the figure the overhead targets are stated in.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import httpx


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=os.environ.get("JOBGATE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--key", default=os.environ.get("JOBGATE_API_KEY"))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", default="python3.11")
    parser.add_argument("--code", default=None)
    args = parser.parse_args()
    code = args.code or {"python3.11": "print(1)", "bash": "echo 1",
                         "node20": "console.log(1)"}.get(args.profile, "print(1)")
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    samples, server_total, warm = [], [], 0
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
        for i in range(args.warmup + args.requests):
            t0 = time.perf_counter()
            r = client.post("/v1/invocations", json={"profile": args.profile, "code": code})
            elapsed = (time.perf_counter() - t0) * 1000
            body = r.json()
            if r.status_code != 200 or body.get("status") != "succeeded" \
                    or body.get("stdout") != "1\n":
                print(f"wrong result: {r.status_code} {body}", file=sys.stderr)
                return 1
            if i >= args.warmup:
                samples.append(elapsed)
                server_total.append(body["timings"]["total_ms"])
                warm += bool(body.get("warm"))
    wall = sum(samples) / 1000
    print(f"{args.profile} sync, {len(samples)} sequential requests, warm {warm}/{len(samples)}")
    print(f"client latency ms: p50 {percentile(samples, 50):.2f}  p95 "
          f"{percentile(samples, 95):.2f}  p99 {percentile(samples, 99):.2f}  "
          f"mean {statistics.mean(samples):.2f}")
    print(f"server total_ms:   p50 {percentile(server_total, 50):.2f}  p99 "
          f"{percentile(server_total, 99):.2f}")
    print(f"rate: {len(samples) / wall:.0f} req/s (one client)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
