"""The benchmark runs end to end (a few seconds), so `make bench` never rots. Nothing here
looks at a timing: only that every figure is there and every call was right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SCENARIO_KEYS = {"name", "executor", "storage", "users", "requests", "failures", "rps",
                 "p50_ms", "p95_ms", "p99_ms", "warm_ratio"}
TOP_KEYS = {"overhead_p50_ms", "overhead_p99_ms", "max_rps_local", "machine", "versions",
            "targets", "baselines", "scenarios"}
USER_CLASSES = {"PrintUser", "CpuUser", "CallbackUser", "ArtifactUser", "MixUser",
                "SteadyUser"}


def test_the_locustfile_offers_every_user_class() -> None:
    out = subprocess.run([sys.executable, "-m", "locust", "-f",
                          str(ROOT / "loadtests" / "locustfile.py"), "--list"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= USER_CLASSES, out.stdout


def test_smoke_benchmark_writes_a_complete_report_with_no_failures(tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "bench", "--matrix", "smoke",
                          "--out", str(out_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    report = json.loads((out_dir / "report.json").read_text())
    assert report.keys() >= TOP_KEYS
    assert report["machine"]["cores"] and report["machine"]["memory_gib"]
    assert report["overhead_p50_ms"] is not None and report["max_rps_local"] is not None
    names = {s["name"] for s in report["scenarios"]}
    assert {"print-1u", "callback-1u"} <= names
    for scenario in report["scenarios"]:
        assert scenario.keys() >= SCENARIO_KEYS, scenario.keys()
        assert scenario["failures"] == 0, scenario["errors"]
        assert scenario["requests"] > 0 and scenario["p50_ms"] is not None
    callbacks = next(s for s in report["scenarios"] if s["name"] == "callback-1u")
    assert callbacks["callbacks"]["bad_signatures"] == 0
    assert callbacks["callbacks"]["invocations"] >= callbacks["requests"]
    for baseline in report["baselines"].values():
        assert baseline["failures"] == 0 and baseline["count"] > 0
    assert {t["name"] for t in report["targets"]}  # stated, met or not
    grown = report["headline"]["growth"]
    assert [g["invocations"] for g in grown["list"]] == [300]
    assert grown["list"][0]["first_page_p50_ms"] > 0 and grown["list"][0]["deep_after"] > 0
    assert grown["janitor"]["expired"] == 300 and grown["janitor"]["left"] == 0
    assert [m["scenario"] for m in grown["memory"]] == ["print-1u", "callback-1u"]
    assert all(m["rss_mb"] for m in grown["memory"])

    text = (out_dir / "report.md").read_text()
    assert "## Targets" in text and "## How it grows" in text
    for plot in ("latency.png", "throughput.png", "breakdown.png"):
        assert (out_dir / plot).read_bytes().startswith(b"\x89PNG"), plot
