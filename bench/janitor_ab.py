"""The janitor's batching, measured in alternation in one run (issue 13):

    python -m bench.janitor_ab 2000          # local storage
    python -m bench.janitor_ab 500 --s3      # S3 storage (starts SeaweedFS)

N expired invocations seeded, then swept one invocation at a time (how the janitor went
before) or in the sweep's batches (how it goes now), two rounds each, alternating;
prints invocations deleted a second."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import growth
from gateway.storage.base import ObjectStore
from gateway.storage.records import InvocationStore


async def _sweep(store: ObjectStore, batched: bool) -> float:
    records = InvocationStore(store)
    started, count = time.monotonic(), 0
    async for due in records.due(datetime.now(UTC), limit=500):
        if batched:
            await records.delete_expired(due)
        else:
            for entry in due:
                await records.delete_expired([entry], concurrency=1)
        count += len(due)
    await records.close()
    return count / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.janitor_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, nargs="?", default=2000)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jobgate-janitor-ab-"))
    weed: Any = None
    try:
        if args.s3:
            from tests.servers.seaweedfs import SeaweedFS

            weed = SeaweedFS(work / "weed").start(timeout_s=60)
        for round_ in range(2):
            for batched in (False, True):
                name = f"r{round_}-{'batched' if batched else 'single'}"
                env = weed.gateway_env("janitor-ab", name) if weed else {}
                data = work / name
                asyncio.run(growth._with_store(
                    data, env, lambda s: growth._seed(s, args.count, expired=True)))
                rate = asyncio.run(growth._with_store(
                    data, env, lambda s, b=batched: _sweep(s, b)))
                print(f"{'batched' if batched else 'one by one'}: {rate:.0f} invocations "
                      "deleted a second", flush=True)
    finally:
        if weed is not None:
            weed.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
