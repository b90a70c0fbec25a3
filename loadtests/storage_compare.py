"""The added latency of S3 storage, in one run: two gateways (local storage, and S3 on a
SeaweedFS it starts) take alternate sequential sync print(1) calls, so both see the same
machine at the same moments.

    python -m loadtests.storage_compare --requests 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from loadtests.compare import WrongAnswer, alternate
from loadtests.stats import percentile
from tests.servers.seaweedfs import SeaweedFS
from tests.support import GatewayProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jobgate-storage-compare-"))
    s3 = SeaweedFS(work / "weed").start()
    gateways = {
        "local": GatewayProcess(work / "local"),
        "s3": GatewayProcess(work / "s3", env=s3.gateway_env("compare", "jobgate")),
    }
    try:
        for gw in gateways.values():
            gw.start(timeout_s=60)
        samples = alternate(gateways, {"profile": "python3.11", "code": "print(1)"},
                            requests=args.requests, warmup=args.warmup)
    except WrongAnswer as e:
        print(f"wrong answer: {e}", file=sys.stderr)
        return 1
    finally:
        for gw in gateways.values():
            gw.stop()
        s3.close()
    for name, s in samples.items():
        print(f"{name:>5}: p50 {percentile(s, 50):7.2f} ms  p99 {percentile(s, 99):7.2f} ms"
              f"  ({len(s)} sequential sync print(1))")
    print(f"S3 adds: p50 {percentile(samples['s3'], 50) - percentile(samples['local'], 50):.2f}"
          f" ms, p99 {percentile(samples['s3'], 99) - percentile(samples['local'], 99):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
