"""report.md, the console summary, and the generated block of docs/performance.md."""

from __future__ import annotations

from typing import Any

PLOTS = (("latency.png", "Latency percentiles per scenario"),
         ("throughput.png", "Throughput and latency against concurrency"),
         ("breakdown.png", "Where the time of a call goes"),
         ("pool.png", "The warm pool under a steady load"))


def _f(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
    else:
        text = str(value)
    return f"{text}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _met(value: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[value]


def scenario_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for b in report["baselines"].values():
        rows.append([f"baseline: {b['short']}", "1", _f(b["requests"]), _f(b["failures"]),
                     "-", _f(b["p50_ms"]), _f(b["p95_ms"]), _f(b["p99_ms"]), "-"])
    for s in report["scenarios"]:
        rows.append([f"{s['name']} ({s['title']})", _f(s["users"]), _f(s["requests"]),
                     _f(s["failures"]), _f(s["rps"]), _f(s["p50_ms"]), _f(s["p95_ms"]),
                     _f(s["p99_ms"]), _f(s["warm_ratio"])])
    return rows


SCENARIO_HEADER = ["scenario", "users", "requests", "failures", "rps", "p50 ms", "p95 ms",
                   "p99 ms", "warm"]


def targets_table(report: dict[str, Any]) -> list[str]:
    return _table(["target", "goal", "measured", "", "note"],
                  [[t["name"], t["target"], _f(t["value"]), _met(t["met"]), t["note"]]
                   for t in report["targets"]])


def headline_lines(report: dict[str, Any]) -> list[str]:
    top, gain = report["headline"], report["headline"].get("pool_gain", {})
    raw = report["baselines"].get("raw", {})
    one = next((s for s in report["scenarios"] if s["name"] == "print-1u"), None)
    lines = []
    if one and raw:
        lines.append(
            f"- **Overhead over raw execution** (sync `print(1)`, 1 user, minus "
            f"`python3 -c 'print(1)'`): p50 {_f(top['overhead_p50_ms'], ' ms')}, p99 "
            f"{_f(top['overhead_p99_ms'], ' ms')} (gateway p50 {_f(one['p50_ms'], ' ms')} "
            f"against raw p50 {_f(raw.get('p50_ms'), ' ms')}); against the bare "
            f"interpreter start (`python3 -S`, no `site`) p50 "
            f"{_f(top.get('overhead_vs_bare_p50_ms'), ' ms')}, p99 "
            f"{_f(top.get('overhead_vs_bare_p99_ms'), ' ms')}."
            + (" Negative means the gateway answers faster than the interpreter can even "
               "start: the local executor runs Python inside a worker forked from a "
               "pre-imported zygote." if report["config"]["executor"] == "local" else
               " (Kubernetes executor: the overhead target is the local executor's.)"))
    if top.get("max_rps") is not None:
        lines.append(f"- **Highest sustained rate with 0 failures**: {_f(top['max_rps'])} "
                     f"invocations/s ({top['max_rps_scenario']}), each in a fresh worker.")
    if gain.get("pooled_p50_ms") is not None:
        parts = []
        if gain.get("gain_vs_no_pool_gateway_p50_ms") is not None:
            parts.append(f"{_f(gain['gain_vs_no_pool_gateway_p50_ms'], ' ms')} against the "
                         f"same gateway without a pool (p50 "
                         f"{_f(gain['no_pool_gateway_p50_ms'], ' ms')})")
        if gain.get("gain_vs_cold_runner_p50_ms") is not None:
            parts.append(f"{_f(gain['gain_vs_cold_runner_p50_ms'], ' ms')} against a cold "
                         f"runner process per call (p50 {_f(gain['cold_runner_p50_ms'], ' ms')})")
        if parts:
            lines.append("- **The pool's gain** at p50: " + "; ".join(parts) + ".")
    if top.get("k8s_warm_p50_ms") is not None:
        lines.append(
            f"- **Kubernetes, warm claim to result** (the gateway's `total_ms` of calls that "
            f"claimed a warm pod, in `{top.get('k8s_warm_from')}`): p50 "
            f"{_f(top['k8s_warm_p50_ms'], ' ms')}, p99 "
            f"{_f(top['k8s_warm_p99_ms'], ' ms')}; the client saw p50 "
            f"{_f(top.get('k8s_warm_client_p50_ms'), ' ms')}, p99 "
            f"{_f(top.get('k8s_warm_client_p99_ms'), ' ms')}.")
    if top.get("k8s_cold_p50_ms") is not None:
        lines.append(f"- **Kubernetes, cold** (no pool: a Job per call): p50 "
                     f"{_f(top['k8s_cold_p50_ms'], ' ms')} in the gateway, "
                     f"{_f(top.get('k8s_cold_client_p50_ms'), ' ms')} at the client.")
    if top.get("api_writes_per_invocation") is not None:
        lines.append(f"- **Kubernetes API writes per invocation** (steady load, pool refill "
                     f"and cleanup included): {_f(top['api_writes_per_invocation'])}.")
    return lines


def machine_line(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    return (f"{m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Linux "
            f"{m['kernel']}, {'root' if m['euid'] == 0 else 'non-root'}; jobgate "
            f"{v['jobgate']} ({v['git']}), runtime {v['runtime_python']}, gateway Python "
            f"{v['python']}, locust {v['locust']}; background load before the run "
            f"{m['background_cores']} cores")


def growth_lines(growth: dict[str, Any] | None, heading: str = "## How it grows"
                 ) -> list[str]:
    """Issue 13's "How it grows": the list and the janitor over what is stored, and the
    gateway's memory over the invocations it served."""
    if not growth:
        return []
    out = [heading, ""]
    if growth.get("list"):
        out += [f"`GET /v1/invocations` at 20 a page over N finished invocations on "
                f"{growth.get('storage')} storage (seeded through the store; medians of 15; "
                "`python -m bench.growth`):", "",
                *_table(["stored", "first page p50", "first page, just written, p50",
                         "a page 90 % deep p50", "seeded in"],
                        [[f"{g['invocations']:,}", _f(g["first_page_p50_ms"], " ms"),
                          _f(g.get("first_page_written_p50_ms"), " ms"),
                          _f(g["deep_page_p50_ms"], " ms"), _f(g["seeded_s"], " s")]
                         for g in growth["list"]]), ""]
    jan = growth.get("janitor")
    if jan:
        out += [f"Janitor: {jan['expired']:,} expired invocations gone in "
                f"{_f(jan['seconds'])} s from the gateway's start ({_f(jan['left'])} left): "
                f"**{_f(jan['invocations_deleted_per_s'])} invocations deleted a second**.",
                ""]
    memory = growth.get("memory") or []
    if memory:
        first, last = memory[0], memory[-1]
        peak = max((m for m in memory if m["rss_mb"] is not None),
                   key=lambda m: m["rss_mb"], default=last)
        out += ["The pooled gateway's RSS after each scenario, by the invocations it had "
                f"served: {_f(first['rss_mb'])} MB after {first['after_invocations']:,}, "
                f"{_f(last['rss_mb'])} MB after {last['after_invocations']:,} (highest "
                f"{_f(peak['rss_mb'])} MB, after {peak['scenario']}). RSS keeps allocator "
                "slack and buffers of the largest outputs seen: a table that kept something "
                "per invocation shows as a rise across the print scenarios; `python -m "
                "bench.growth --calls 100000` measures 10^5 calls alone.", "",
                *_table(["after scenario", "invocations served", "RSS"],
                        [[m["scenario"], f"{m['after_invocations']:,}",
                          _f(m["rss_mb"], " MB")] for m in memory]), ""]
    return out


def render(report: dict[str, Any], image_prefix: str = "") -> str:
    cfg = report["config"]
    out = [f"# jobgate benchmark: {cfg['matrix']} matrix, executor {cfg['executor']}, "
           f"storage {cfg['storage']}", "",
           f"{report['finished_at']} on {machine_line(report)}.", ""]
    if report["machine"]["background_cores"] > 0.2:
        out += [f"> The machine was already busy ({report['machine']['background_cores']} "
                "cores in use before the run started): every figure below is noisy.", ""]
    out += ["## Headline", "", *headline_lines(report), "", "## Targets", "",
            *targets_table(report), "", "## Scenarios", "",
            "Closed-loop users without think time; percentiles over the successful calls "
            "after each scenario's warm-up, measured by the client (exact, not locust's "
            "rounded histogram). `warm` is the share of calls that found an idle worker "
            "(the gateway's own counters). A failure is any wrong answer, not only an HTTP "
            "error.", "", *_table(SCENARIO_HEADER, scenario_rows(report)), ""]
    out += ["## Where the time goes", "",
            "The gateway's own `timings` (p50, ms): `queued` from acceptance to a claimed "
            "worker, `start` from the claim to the code running, `run` the code, `total` "
            "acceptance to recorded result; the client's p50 adds HTTP and JSON.", ""]
    rows = []
    for s in report["scenarios"]:
        t = s.get("server_timings") or {}
        if not t:
            continue
        rows.append([s["name"], *[_f((t.get(k) or {}).get("p50")) for k in
                                  ("queued_ms", "start_ms", "run_ms", "total_ms")],
                     _f(s["p50_ms"])])
    out += [*_table(["scenario", "queued", "start", "run", "total", "client p50"], rows), ""]
    prof = report.get("profile")
    if prof and prof.get("samples"):
        out += ["## Gateway profile", "",
                f"py-spy during `{prof['scenario']}`, {prof['samples']} samples taken while "
                f"the gateway held the GIL (collapsed stacks in `logs/{prof['file']}`). "
                "Charged to the gateway module whose call led there (library time counts "
                "against its caller):", ""]
        out += _table(["gateway module", "% of samples"],
                      [[k, _f(v)] for k, v in prof["charged_to_gateway_module_pct"].items()])
        out += ["", "Functions that burn it (self time):", ""]
        out += _table(["function", "%"], [[f"`{k}`", _f(v)] for k, v in
                                          list(prof["own_pct"].items())[:10]])
        out.append("")
    out += ["## CPU", "",
            "Cores busy during each scenario: the gateway process; its workers and zygotes "
            "(exact when the gateway ran in a cgroup of its own, else `-` and counted in "
            "`other`); the locust load generator; the driver (callback receiver, pool "
            "sampling); everything else on the machine. On a 2-core machine locust and the "
            "gateway compete for the same cores.", ""]
    out += [*_table(["scenario", "machine", "gateway", "workers", "locust", "driver", "other",
                     "gateway ms/call", "workers ms/call"],
                    [[s["name"], *[_f(s["cpu"].get(k)) for k in
                                   ("machine_cores", "gateway_cores", "workers_cores",
                                    "locust_cores", "driver_cores")],
                      _f(s["cpu"].get("other_cores", s["cpu"].get("rest_cores"))),
                      _f(s.get("gateway_cpu_ms_per_invocation")),
                      _f(s.get("workers_cpu_ms_per_invocation"))]
                     for s in report["scenarios"]]), ""]
    sandbox = report.get("sandbox")
    if sandbox:
        out += ["## The sandbox's cost", "",
                "Two local gateways, the sandbox on (the default) and off "
                "(`JOBGATE_LOCAL_SANDBOX=off`), take alternate sequential sync calls of a "
                "trivial program, so both see the same machine at the same moments "
                "(client-side ms; `python -m loadtests.sandbox_compare` alone).", ""]
        rows = [[profile, _f(f["sandbox"]["p50_ms"]), _f(f["sandbox"]["p99_ms"]),
                 _f(f["off"]["p50_ms"]), _f(f["off"]["p99_ms"]),
                 _f(f["sandbox"].get("adds_p50_ms")), _f(f["sandbox"].get("adds_p99_ms")),
                 str(f["sandbox"]["count"])]
                for profile, f in sandbox.items()]
        out += [*_table(["runtime", "sandbox p50", "p99", "off p50", "p99", "adds p50",
                         "adds p99", "calls"], rows), ""]
    steady = report["headline"].get("steady")
    if steady and steady.get("pool"):
        pool = steady["pool"]
        out += ["## The pool under a steady load", "",
                f"`{steady['name']}`: a steady {_f(steady.get('target_rps'))}/s of "
                f"`print(1)` (half the highest clean rate), users evenly staggered; "
                f"achieved {_f(steady.get('rps'))}/s. `/v1/pools` sampled every 100 ms: "
                f"lowest idle count {_f(pool.get('min_idle_seen'))} (pool min "
                f"{pool.get('min_idle_setting')}, max {pool.get('max_idle_setting')}), "
                f"most waiting {_f(pool.get('max_queued_seen'))}; "
                f"{_f(steady.get('cold_starts'))} cold starts, warm ratio "
                f"{_f(steady.get('warm_ratio'))}.", ""]
    out += growth_lines(report["headline"].get("growth"))
    if report.get("kubernetes"):
        k = report["kubernetes"]
        out += ["## Kubernetes", "", f"Cluster: {k.get('cluster')}.", ""]
        if k.get("api_writes_per_invocation") is not None:
            out += [f"API writes per invocation: {_f(k['api_writes_per_invocation'])} (writes "
                    f"on Jobs, pods and events during the steady scenario, {k.get('calls')} "
                    f"calls in {k.get('window_s')} s; the pool replaces each worker a call "
                    f"consumes), plus {_f(k.get('background_writes_per_s'))} writes/s "
                    "whatever the load (leases, node heartbeats). By verb and resource:", ""]
            out += _table(["write", "count"], [[w, str(n)] for w, n in
                                               sorted(k.get("writes", {}).items(),
                                                      key=lambda kv: -kv[1])])
            out.append("")
    sc = report.get("scaling") or {}
    if sc:
        out += ["## Scaling estimates", "",
                f"From `{sc['from_scenario']}` ({_f(sc['rps'])}/s): the gateway spends "
                f"{_f(sc['gateway_cpu_ms_per_invocation'])} ms of CPU per invocation, "
                f"its workers {_f(sc['worker_cpu_ms_per_invocation'])} ms"
                f"{'' if sc['worker_cpu_exact'] else ' (estimated from the machine total)'}"
                f", so one gateway core tops out near "
                f"{_f(sc['ceiling_rps_per_gateway_core'])}/s and this machine without the "
                f"load generator near {_f(sc['ceiling_rps_this_machine_without_load_generator'])}"
                f"/s. docs/performance.md works out replicas, pool sizes and API writes "
                "from these.", ""]
    out += ["## Baselines", ""]
    for b in report["baselines"].values():
        out.append(f"- **{b['name']}**: {b['description']}. p50 {_f(b['p50_ms'], ' ms')}, "
                   f"p99 {_f(b['p99_ms'], ' ms')} over {b['count']} calls, "
                   f"{b['failures']} failed.")
        for phase, st in (b.get("phases") or {}).items():
            out.append(f"  - {phase.replace('_', ' ')}: p50 {_f(st.get('p50_ms'), ' ms')}")
    spawn = report.get("spawn_rate")
    if spawn:
        out.append(f"- **{spawn['name']}**: {_f(spawn['rate_per_s'])} processes/s, "
                   f"{_f(spawn['cpu_ms_per_process'], ' ms')} of machine CPU each "
                   f"({spawn['processes']} processes, {spawn['failures']} failed): the rate a "
                   "gateway spawning a bare interpreter per call could not beat.")
    out.append("")
    failing = [s for s in report["scenarios"] if s["failures"]]
    if failing:
        out += ["## Failures", ""]
        for s in failing:
            out.append(f"- `{s['name']}`: {s['failures']} failed")
            out += [f"  - {n} x {e}" for e, n in s["errors"].items()]
        out.append("")
    out += ["## Plots", ""]
    out += [f"![{title}]({image_prefix}{name})" for name, title in PLOTS
            if name in report["plots"]]
    out += ["", "## Configuration", "",
            "Gateway settings besides the defaults: "
            + ", ".join(f"`{k}={v}`" for k, v in cfg["gateway_env"].items()) + ".",
            "Pools (min..max idle): "
            + ", ".join(f"{n} {p['min']}..{p['max']}" for n, p in cfg["pools"].items()) + ".",
            f"Command: `{cfg['command']}`.", ""]
    return "\n".join(out)


def console_summary(report: dict[str, Any]) -> str:
    header = ["scenario", "users", "reqs", "fail", "rps", "p50", "p95", "p99", "warm"]
    rows = [[r[0].split(" (")[0], *r[1:]] for r in scenario_rows(report)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              for r in rows]
    lines.append("")
    for t in report["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        lines.append(f"{mark} {t['name']}: {_f(t['value'])} (goal {t['target']})"
                     + (f" - {t['note']}" if t["note"] else ""))
    return "\n".join(lines)


def docs_block(report: dict[str, Any], image_prefix: str) -> str:
    """The generated part of docs/performance.md: the latest figures and plots."""
    cfg = report["config"]
    out = [f"Measured {report['finished_at']} (`{cfg['command']}`) on "
           f"{machine_line(report)}.", "", *headline_lines(report), "",
           *targets_table(report), "", *_table(SCENARIO_HEADER, scenario_rows(report)), "",
           *growth_lines(report["headline"].get("growth"), "**How it grows**")]
    out += [f"![{title}]({image_prefix}{name})" for name, title in PLOTS
            if name in report["plots"]]
    return "\n".join(out)
