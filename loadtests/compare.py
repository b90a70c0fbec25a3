"""Two or more gateways side by side, in one run: they take alternate sequential sync
calls, so each sees the same machine at the same moments and the difference is theirs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from loadtests.stats import summary
from tests.support import KEY_A, GatewayProcess

# One trivial program per runtime: what a call costs beyond the code.
TRIVIAL = {
    "python3.11": "print(1)",
    "bash": "echo 1",
    "node20": "console.log(1)",
}


class WrongAnswer(RuntimeError):
    pass


def alternate(gateways: Mapping[str, GatewayProcess], body: dict[str, Any], *,
              requests: int, warmup: int) -> dict[str, list[float]]:
    """Client-side latency (ms) of ``requests`` calls to each gateway, in turn."""
    clients = {name: httpx.Client(base_url=gw.url, timeout=60,
                                  headers={"Authorization": f"Bearer {KEY_A}"})
               for name, gw in gateways.items()}
    samples: dict[str, list[float]] = {name: [] for name in gateways}
    try:
        for i in range(warmup + requests):
            for name, client in clients.items():
                r = client.post("/v1/invocations", json=body)
                answer = r.json()
                if r.status_code != 200 or answer.get("stdout") != "1\n":
                    raise WrongAnswer(f"{name}: {r.status_code} {answer}")
                if i >= warmup:
                    samples[name].append(r.elapsed.total_seconds() * 1000)
    finally:
        for client in clients.values():
            client.close()
    return samples


def compare(gateways: Mapping[str, GatewayProcess], baseline: str, *, profiles: list[str],
            requests: int, warmup: int) -> dict[str, Any]:
    """Per profile: each gateway's latency summary, and what each adds to ``baseline``."""
    out: dict[str, Any] = {}
    for profile in profiles:
        samples = alternate(gateways, {"profile": profile, "code": TRIVIAL[profile]},
                            requests=requests, warmup=warmup)
        figures = {name: summary(s) for name, s in samples.items()}
        base = figures[baseline]
        for name, fig in figures.items():
            if name != baseline:
                for p in ("p50_ms", "p99_ms"):
                    fig[f"adds_{p}"] = round(float(fig[p] or 0) - float(base[p] or 0), 2)
        out[profile] = figures
    return out
