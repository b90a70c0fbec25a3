"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from bench.report import TARGET_RPS

COLORS = {"p50": "#4C72B0", "p95": "#DD8452", "p99": "#C44E52"}


def _plain_log_y(ax: Axes) -> None:
    """Log scale with tick labels a reader reads at a glance (20, not 2x10^1)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _label(s: dict[str, Any]) -> str:
    return f"{s['title']}\n{s['users']} user{'s' if s['users'] != 1 else ''}"


def latency(scenarios: list[dict[str, Any]], baselines: dict[str, dict[str, Any]],
            path: Path, subtitle: str) -> Path:
    """p50/p95/p99 per scenario (bars, log scale), baselines first."""
    rows = [(f"baseline:\n{b['short']}", b) for b in baselines.values() if b.get("p50_ms")]
    rows += [(_label(s), s) for s in scenarios if s.get("p50_ms") is not None]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.85 * len(rows) + 2), 5.2))
    width = 0.27
    for i, key in enumerate(("p50", "p95", "p99")):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ys = [r[f"{key}_ms"] for _, r in rows]
        bars = ax.bar(xs, ys, width, label=key, color=COLORS[key])
        if key == "p50":
            for bar, y in zip(bars, ys, strict=True):
                ax.annotate(f"{y:.3g}", (bar.get_x() + bar.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([label for label, _ in rows], fontsize=7.5, rotation=35, ha="right")
    _plain_log_y(ax)
    ax.set_ylabel("latency seen by the client (ms, log scale)")
    ax.set_title(f"Latency percentiles per scenario\n{subtitle}", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(scenarios: list[dict[str, Any]], path: Path, subtitle: str) -> Path:
    """Throughput and latency against concurrency for the print(1) sweep."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    all_users: set[int] = set()
    for gateway, style in (("pooled", "o-"), ("nopool", "s--")):
        points = sorted((s for s in scenarios if s["title"].startswith("sync print(1)")
                         and s["gateway"] == gateway and s.get("rps")),
                        key=lambda s: s["users"])
        if not points:
            continue
        label = "pooled gateway" if gateway == "pooled" else "gateway without a pool"
        users = [s["users"] for s in points]
        all_users.update(users)
        left.plot(users, [s["rps"] for s in points], style, label=label)
        for s in points:
            if s["failures"]:
                left.annotate(f"{s['failures']} failed", (s["users"], s["rps"]),
                              color="#C44E52", fontsize=8, xytext=(4, -10),
                              textcoords="offset points")
        right.plot(users, [s["p50_ms"] for s in points], style, label=f"{label} p50")
        right.plot(users, [s["p99_ms"] for s in points], style, alpha=0.5,
                   label=f"{label} p99")
    left.axhline(TARGET_RPS, color="gray", linestyle=":", label=f"target {TARGET_RPS:g}/s")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sorted(all_users) or [1]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel("concurrent users (closed loop, no think time)")
    left.set_ylabel("invocations per second")
    left.set_title("Throughput against concurrency", fontsize=10)
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    _plain_log_y(right)
    right.set_xlabel("concurrent users")
    right.set_ylabel("latency (ms, log scale)")
    right.set_title("Latency against concurrency", fontsize=10)
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8)
    fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def breakdown(scenarios: list[dict[str, Any]], path: Path, subtitle: str) -> Path:
    """Where the time of a call goes (means, so the parts add up): the gateway's own
    timings, and what only the client sees (HTTP, JSON, the answer travelling back)."""
    rows = [s for s in scenarios if s.get("server_timings", {}).get("total_ms")]
    height = 0.45 * len(rows) + 2.4
    fig, ax = plt.subplots(figsize=(9, height))
    parts = [("queued (claim a worker)", "#8172B2"), ("start (assignment, files)", "#4C72B0"),
             ("run (the code)", "#55A868"), ("gateway other (store, answer)", "#CCB974"),
             ("outside the timings (HTTP, auth, storing the request, JSON)", "#C0C0C0")]
    for y, s in enumerate(rows):
        t = {k: (v or {}).get("mean") or 0.0 for k, v in s["server_timings"].items()}
        total = t.get("total_ms", 0.0)
        known = t.get("queued_ms", 0.0) + t.get("start_ms", 0.0) + t.get("run_ms", 0.0)
        values = [t.get("queued_ms", 0.0), t.get("start_ms", 0.0), t.get("run_ms", 0.0),
                  max(0.0, total - known), max(0.0, (s.get("mean_ms") or 0.0) - total)]
        left = 0.0
        for (label, color), value in zip(parts, values, strict=True):
            ax.barh(y, value, left=left, color=color, label=label if y == 0 else None)
            left += value
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_label(s).replace("\n", ", ") for s in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean ms per call")
    ax.set_title(f"Where the time goes (server timings, means)\n{subtitle}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    # The legend goes below the axes, in a band of fixed height (0.65 in).
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.65 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pool(samples: list[dict[str, Any]], path: Path, subtitle: str) -> Path:
    """The warm pool during the steady scenario: idle never reaching 0 is the claim."""
    t0 = samples[0]["t"]
    ts = [s["t"] - t0 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.step(ts, [s["idle"] for s in samples], where="post", label="idle (warm)")
    ax.step(ts, [s["busy"] for s in samples], where="post", label="busy")
    ax.step(ts, [s["queued"] for s in samples], where="post", label="queued (waiting)")
    ax.step(ts, [s["target_idle"] for s in samples], where="post", linestyle=":",
            label="target idle")
    ax.set_xlabel("seconds into the steady scenario")
    ax.set_ylabel("workers")
    ax.set_ylim(bottom=0)
    ax.set_title(f"python3.11 pool under a steady load\n{subtitle}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
