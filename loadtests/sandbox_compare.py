"""What the local executor's sandbox costs, in one run: two local gateways, the sandbox on
(the default) and off (JOBGATE_LOCAL_SANDBOX=off), take alternate sequential sync calls
of a trivial program on each runtime.

    python -m loadtests.sandbox_compare --requests 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.compare import TRIVIAL, WrongAnswer, compare
from tests.support import GatewayProcess


def measure(work: Path, *, requests: int, warmup: int,
            profiles: list[str] | None = None, env: dict[str, str] | None = None
            ) -> dict[str, Any]:
    gateways = {
        "sandbox": GatewayProcess(work / "sandbox", env=dict(env or {})),
        "off": GatewayProcess(work / "off", env={**(env or {}),
                                                 "JOBGATE_LOCAL_SANDBOX": "off"}),
    }
    try:
        for gw in gateways.values():
            gw.start(timeout_s=60)
        return compare(gateways, "off", profiles=profiles or list(TRIVIAL),
                       requests=requests, warmup=warmup)
    finally:
        for gw in gateways.values():
            gw.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--profiles", nargs="*", default=list(TRIVIAL))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jobgate-sandbox-compare-"))
    try:
        result = measure(work, requests=args.requests, warmup=args.warmup,
                         profiles=args.profiles)
    except WrongAnswer as e:
        print(f"wrong answer: {e}", file=sys.stderr)
        return 1
    for profile, figures in result.items():
        for name, fig in figures.items():
            print(f"{profile:>10} {name:>7}: p50 {fig['p50_ms']:7.2f} ms  "
                  f"p99 {fig['p99_ms']:7.2f} ms  ({fig['count']} sequential sync calls)")
        sandbox = figures["sandbox"]
        print(f"{profile:>10} the sandbox adds: p50 {sandbox['adds_p50_ms']:.2f} ms, "
              f"p99 {sandbox['adds_p99_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
